"""A user's work is never lost or poisoned (jseg/engine/workdir.py and the trainer around it):
no run deletes or overwrites checkpoints it did not write, one training per work dir, a
failed start writes nothing, checkpoints hold finite weights only, writes that fail (a full
disk, kill -9 at several moments of a checkpoint write) leave loadable checkpoints that
--resume auto continues exactly."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jseg.checkpoint import read_checkpoint

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES as TINY

RUN_NET = os.path.join(ROOT, "tools", "run_net.py")


def run_net(*args, expect=0, env=None):
    out = subprocess.run([sys.executable, RUN_NET, "--no-progress", *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=900, env=env)
    assert out.returncode == expect, (out.returncode, out.stderr[-3000:])
    return out


def error_line(out):
    """The one `error:` line of a failed run (and no traceback)."""
    lines = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
    return lines[0]


def train_args(demo_root, work_dir, iters, *extra):
    return ["--config-file", DEMO_CONFIG, "--task", "train", "--work-dir", str(work_dir),
            "--seed", "7", f"data.data_root={demo_root}", *TINY, f"train.max_iters={iters}",
            "train.checkpoint_interval=1", "train.keep_checkpoints=3", *extra]


def names(work_dir):
    """The training checkpoints' names (not temporary files)."""
    return sorted(n for n in os.listdir(os.path.join(work_dir, "checkpoints"))
                  if n.startswith("iter_") and n.endswith(".pkl"))


def digests(work_dir):
    d = os.path.join(work_dir, "checkpoints")
    return {n: hashlib.sha256(open(os.path.join(d, n), "rb").read()).hexdigest()
            for n in os.listdir(d)}


def losses(work_dir):
    with open(os.path.join(work_dir, "metrics.jsonl")) as f:
        return {r["iter"]: r["loss"] for r in map(json.loads, f) if r["mode"] == "train"}


def assert_every_checkpoint_loads(work_dir):
    """Every kept checkpoint reads back (checksum), is resumable and holds finite values."""
    for n in names(work_dir):
        state, ckpt = read_checkpoint(os.path.join(work_dir, "checkpoints", n), full=True)
        assert ckpt["meta"]["iter"] == int(n[5:13]), (n, ckpt["meta"]["iter"])
        bad = [k for k, v in state.items() if not np.isfinite(v).all()]
        assert not bad, (n, bad[:5])


@pytest.fixture(scope="module")
def six_iterations(demo_root, tmp_path_factory):
    """A straight run of 6 iterations, the reference for the interrupted ones."""
    work = tmp_path_factory.mktemp("six")
    run_net(*train_args(demo_root, work, 6))
    return work


def test_a_new_run_never_deletes_or_overwrites_another_runs_checkpoints(demo_root, six_iterations,
                                                                       tmp_path):
    """The reported case: 16 iterations with keep 3, then 3 iterations into the same work dir
    pruned every new checkpoint at once and left iter_14..16 (here 6 and 3)."""
    import shutil
    work = tmp_path / "w"
    shutil.copytree(six_iterations, work)
    before = digests(work)
    assert sorted(before) == ["iter_00000004.pkl", "iter_00000005.pkl", "iter_00000006.pkl"]
    out = run_net(*train_args(demo_root, work, 3), expect=1)
    line = error_line(out)
    assert "already holds 3 checkpoint(s)" in line and "resume=auto" in line, line
    assert digests(work) == before
    # continuing the run is what --resume auto is for; it prunes only its own lineage
    run_net(*train_args(demo_root, work, 8), "--resume", "auto")
    assert names(work) == ["iter_00000006.pkl", "iter_00000007.pkl", "iter_00000008.pkl"]


def test_resuming_elsewhere_keeps_the_other_runs_files(demo_root, six_iterations, tmp_path):
    """A run resumed into a folder with an unrelated older checkpoint never prunes it, and a
    resume from an older point refuses to overwrite the later checkpoints."""
    other = tmp_path / "other"
    run_net(*train_args(demo_root, other, 2, "train.keep_checkpoints=1"))
    assert names(other) == ["iter_00000002.pkl"]
    kept = digests(other)
    run_net(*train_args(demo_root, other, 9, "train.keep_checkpoints=2"), "--resume",
            os.path.join(six_iterations, "checkpoints", "iter_00000006.pkl"))
    assert names(other) == ["iter_00000002.pkl", "iter_00000008.pkl", "iter_00000009.pkl"]
    assert digests(other)["iter_00000002.pkl"] == kept["iter_00000002.pkl"]

    before = digests(six_iterations)
    out = run_net(*train_args(demo_root, six_iterations, 8), "--resume",
                  os.path.join(six_iterations, "checkpoints", "iter_00000004.pkl"), expect=1)
    line = error_line(out)
    assert "after iteration 4" in line and "iter_00000005.pkl" in line, line
    assert digests(six_iterations) == before


def test_a_nan_stop_names_a_checkpoint_that_is_really_good(demo_root, tmp_path):
    """lr 1e10 without warm-up blows the weights up in the first steps; before the fix the
    step that did it was still saved and recommended (476 of 519 tensors non-finite)."""
    out = run_net(*train_args(demo_root, tmp_path, 6, "optimizer.lr=1e10",
                              "scheduler.warmup_iters=0"), expect=1)
    line = error_line(out)
    assert ("the loss is" in line or "NaN or infinite" in line) and "iteration" in line, line
    assert_every_checkpoint_loads(tmp_path)
    kept = names(tmp_path)
    if kept:
        assert f"the last good checkpoint is {tmp_path / 'checkpoints' / kept[-1]}" in line, line
    else:
        assert "no checkpoint of this run was written yet" in line, line


def test_a_second_training_into_a_busy_work_dir_is_refused(demo_root, tmp_path):
    cmd = [sys.executable, RUN_NET, "--no-progress",
           *train_args(demo_root, tmp_path, 100000, "train.checkpoint_interval=100000")]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and first.poll() is None:
            if any(n.startswith("train_") for n in os.listdir(tmp_path)):
                break  # the first run has started (it opens its log only after the checks)
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-2000:]
        logs = sorted(n for n in os.listdir(tmp_path) if n.endswith(".log"))
        out = run_net(*train_args(demo_root, tmp_path, 3), expect=1)
        line = error_line(out)
        assert f"in use by another training (pid {first.pid} on" in line, line
        assert sorted(n for n in os.listdir(tmp_path) if n.endswith(".log")) == logs
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
    # a killed run leaves no lock behind: a new start in the folder goes ahead
    run_net(*train_args(demo_root, tmp_path, 2), expect=0)


def test_a_failed_start_writes_nothing(demo_root, six_iterations, tmp_path):
    """config.yaml was written before the resume weights and the data were checked, and an
    empty log was left behind."""
    import shutil
    work = tmp_path / "w"
    shutil.copytree(six_iterations, work)
    config_before = (work / "config.yaml").read_bytes()
    files_before = sorted(os.listdir(work))
    out = run_net(*train_args(tmp_path / "no_data", work, 8), "--resume", "auto", expect=1)
    assert "no_data" in error_line(out)
    assert (work / "config.yaml").read_bytes() == config_before
    assert sorted(os.listdir(work)) == files_before
    fresh = tmp_path / "fresh"
    out = run_net(*train_args(demo_root, fresh, 2), "--load-from", str(tmp_path / "nope.pkl"),
                  expect=1)
    assert "nope.pkl" in error_line(out)
    assert sorted(os.listdir(fresh)) == [".train.lock"], os.listdir(fresh)


@pytest.mark.parametrize("point", ["mid-write", "before-rename", "after-rename"])
def test_kill_during_a_checkpoint_write_leaves_a_resumable_run(point, demo_root, six_iterations,
                                                               tmp_path):
    """SIGKILL at three moments of writing iter_00000004.pkl: every kept checkpoint loads,
    --resume auto removes the temporary file, goes on, and gives the straight run's losses."""
    env = dict(os.environ, JSEG_FAILPOINT=f"{point}:iter_00000004.pkl")
    run_net(*train_args(demo_root, tmp_path, 6), env=env, expect=-signal.SIGKILL)
    kept = names(tmp_path)
    temps = [n for n in os.listdir(tmp_path / "checkpoints") if n.endswith(".tmp")]
    expected = {"mid-write": ["iter_00000001.pkl", "iter_00000002.pkl", "iter_00000003.pkl"],
                "before-rename": ["iter_00000001.pkl", "iter_00000002.pkl", "iter_00000003.pkl"],
                "after-rename": ["iter_00000001.pkl", "iter_00000002.pkl", "iter_00000003.pkl",
                                 "iter_00000004.pkl"]}[point]
    assert kept == expected, kept
    assert len(temps) == (0 if point == "after-rename" else 1), temps
    assert_every_checkpoint_loads(tmp_path)

    out = run_net(*train_args(demo_root, tmp_path, 6), "--resume", "auto")
    assert not [n for n in os.listdir(tmp_path / "checkpoints") if n.endswith(".tmp")]
    if temps:
        assert "left by an interrupted run" in out.stderr, out.stderr[-2000:]
    assert names(tmp_path) == ["iter_00000004.pkl", "iter_00000005.pkl", "iter_00000006.pkl"]
    assert_every_checkpoint_loads(tmp_path)
    straight, resumed = losses(six_iterations), losses(tmp_path)
    for it in (5, 6):
        assert abs(straight[it] - resumed[it]) <= 1e-6 * abs(straight[it]), \
            (it, straight[it], resumed[it])


def _small_tmpfs(path, size):
    """Mount a tmpfs of `size` at `path` (root in a container that allows it), else skip."""
    os.makedirs(path, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {out.stderr.strip()}")


def test_a_full_disk_names_the_file_and_the_intact_checkpoint(demo_root, six_iterations, tmp_path):
    """A full disk said `[Errno 28]` alone, and `--task test` left a 0-byte PNG."""
    size = os.path.getsize(os.path.join(six_iterations, "checkpoints", "iter_00000006.pkl"))
    disk = tmp_path / "disk"
    _small_tmpfs(disk, 2 * size + 64 * 1024)  # room for two checkpoints, the log and config
    try:
        out = run_net(*train_args(demo_root, disk, 6, "train.keep_checkpoints=0"), expect=1)
        line = error_line(out)
        kept = names(disk)
        assert kept and "No space left on device" in line, (kept, line)
        failed = f"iter_{int(kept[-1][5:13]) + 1:08d}.pkl"
        assert f"could not write checkpoint {disk / 'checkpoints' / failed}" in line, line
        assert f"the last good checkpoint is {disk / 'checkpoints' / kept[-1]}" in line, line
        assert not [n for n in os.listdir(disk / "checkpoints") if n.endswith(".tmp")]
        assert_every_checkpoint_loads(disk)

        with pytest.raises(OSError), open(disk / "filler", "wb", buffering=0) as f:
            while True:  # take whatever room is left
                f.write(b"\0" * 4096)
        weights = os.path.join(six_iterations, "checkpoints", "iter_00000006.pkl")
        out = run_net("--config-file", DEMO_CONFIG, "--task", "test", "--load-from", weights,
                      "--save-dir", str(disk / "pred"), f"data.data_root={demo_root}", *TINY,
                      expect=1)
        assert "No space left on device" in error_line(out)
        written = [os.path.join(r, n) for r, _, ns in os.walk(disk / "pred") for n in ns]
        assert all(os.path.getsize(p) > 0 and not p.endswith(".tmp") for p in written), written
    finally:
        subprocess.run(["umount", str(disk)])


@pytest.mark.parametrize("case", ["weights_only", "other_model", "past_max_iters",
                                  "resume_and_load_from"])
def test_bad_resume_is_one_line(case, demo_root, six_iterations, tmp_path):
    from jseg.checkpoint import write_checkpoint
    last = os.path.join(six_iterations, "checkpoints", "iter_00000006.pkl")
    state, ckpt = read_checkpoint(last, full=True)
    extra, work = [], tmp_path / "w"
    if case == "weights_only":  # what weights_convert writes
        path, needle = str(tmp_path / "converted.pkl"), "is not a training checkpoint"
        write_checkpoint(path, {"state_dict": state})
    elif case == "other_model":  # AdamW moments of another shape
        path, needle = str(tmp_path / "other.pkl"), "written for another model"
        key = next(k for k in ckpt["optimizer"]["m"] if ckpt["optimizer"]["m"][k].ndim == 4)
        ckpt["optimizer"]["m"][key] = ckpt["optimizer"]["m"][key][:1]
        write_checkpoint(path, ckpt)
    elif case == "past_max_iters":
        path, needle, work = last, "nothing to train", six_iterations
    else:
        path, needle = last, "load_from cannot be given with it"
        extra = ["--load-from", last]
    before = digests(six_iterations)
    out = run_net(*train_args(demo_root, work, 3), "--resume", path, *extra, expect=1)
    assert needle in error_line(out)
    assert digests(six_iterations) == before


def test_training_logs_show_progress_with_time_left(six_iterations):
    logs = [n for n in os.listdir(six_iterations) if n.endswith(".log")]
    text = open(os.path.join(six_iterations, logs[0])).read()
    assert "iter 6/6" in text and " eta 0:00" in text, text[-2000:]
    assert "compile Jittor's kernels" in text


def test_log_files_never_share_a_name(tmp_path):
    from jseg.engine.runlog import RunLog
    first, second = RunLog(True), RunLog(True)
    try:
        first.open(str(tmp_path))
        second.open(str(tmp_path))
        assert first.handler.baseFilename != second.handler.baseFilename
    finally:
        first.close()
        second.close()
