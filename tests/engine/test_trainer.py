"""tools/run_net.py and the training loop on a tiny SegNeXt and tiny demo data:
exact resume, checkpoints, evaluation output, NaN stop, bad input, and 2 MPI ranks."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jseg.config import load_config
from jseg.checkpoint import read_checkpoint

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES as TINY

RUN_NET = os.path.join(ROOT, "tools", "run_net.py")

def run_net(*args, expect=0, env=None):
    out = subprocess.run([sys.executable, RUN_NET, "--no-progress", *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=900,
                         env=None if env is None else dict(os.environ, **env))
    errors = [l for l in out.stderr.splitlines() if l.startswith(("error:", "Traceback"))]
    assert out.returncode == expect, (out.returncode, errors, out.stderr[-3000:])
    return out


def train_args(demo_root, work_dir, iters, *extra):
    return ["--config-file", DEMO_CONFIG,
            "--task", "train", "--work-dir", str(work_dir), "--seed", "7",
            f"data.data_root={demo_root}", *TINY, f"train.max_iters={iters}",
            "train.checkpoint_interval=2", *extra]


def train_records(work_dir):
    with open(os.path.join(work_dir, "metrics.jsonl")) as f:
        return [r for r in map(json.loads, f) if r["mode"] == "train"]


@pytest.fixture(scope="module")
def straight_run(demo_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("straight")
    run_net(*train_args(demo_root, work, 4))
    return work


def test_resume_continues_exactly(demo_root, straight_run, tmp_path):
    """4 iterations in one run == 2 iterations, stop, --resume auto, 2 more."""
    run_net(*train_args(demo_root, tmp_path, 2))
    run_net(*train_args(demo_root, tmp_path, 4), "--resume", "auto")
    one = {r["iter"]: r["loss"] for r in train_records(straight_run)}
    two = {r["iter"]: r["loss"] for r in train_records(tmp_path)}
    assert sorted(one) == [1, 2, 3, 4] and sorted(two) == [1, 2, 3, 4], (one, two)
    for it in one:
        assert abs(one[it] - two[it]) <= 1e-6 * abs(one[it]), (it, one[it], two[it])
    a, ca = read_checkpoint(os.path.join(straight_run, "checkpoints", "iter_00000004.pkl"), full=True)
    b, cb = read_checkpoint(os.path.join(tmp_path, "checkpoints", "iter_00000004.pkl"), full=True)
    assert a.keys() == b.keys()
    worst = max(float(np.abs(a[k] - b[k]).max()) for k in a)
    assert worst <= 1e-6, f"final weights differ by {worst}"
    for k in ca["optimizer"]["m"]:
        np.testing.assert_allclose(ca["optimizer"]["m"][k], cb["optimizer"]["m"][k], atol=1e-9)
    assert ca["optimizer"]["n_step"] == cb["optimizer"]["n_step"] == 4


def test_checkpoint_contents_and_work_dir(straight_run):
    state, ckpt = read_checkpoint(os.path.join(straight_run, "checkpoints", "iter_00000004.pkl"),
                                  full=True)
    assert ckpt["meta"]["iter"] == 4 and ckpt["meta"]["seed"] == 7
    assert "model:" in ckpt["meta"]["config"] and ckpt["meta"]["jseg_version"]
    assert set(ckpt["optimizer"]["m"]) <= set(state) and len(ckpt["optimizer"]["m"]) > 10
    assert os.path.exists(os.path.join(straight_run, "config.yaml"))
    assert any(n.startswith("train_") and n.endswith(".log") for n in os.listdir(straight_run))
    cfg = load_config(os.path.join(straight_run, "config.yaml"))
    assert cfg.model.backbone.embed_dims == [8, 16, 32, 64]
    records = train_records(straight_run)
    assert {"iter", "lr", "loss", "loss_ce", "acc_seg", "time", "data_time", "memory_mb"} <= set(records[0])
    with open(os.path.join(straight_run, "metrics.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if r["mode"] == "val"]
    assert evals and 0.0 <= evals[-1]["mIoU"] <= 100.0, evals
    assert evals[-1]["confusion_matrix"] == "confusion_matrix_iter_00000004.npy", evals[-1]
    assert "mDice" not in evals[-1] and set(evals[-1]["Acc"]) == set(cfg.data.classes)
    counts = np.load(os.path.join(straight_run, "confusion_matrix_iter_00000004.npy"))
    assert counts.shape == (6, 6) and counts.dtype == np.int64, (counts.shape, counts.dtype)
    assert os.path.getsize(os.path.join(straight_run, "confusion_matrix_iter_00000004.png")) > 0


def test_val_is_repeatable_and_test_writes_predictions(demo_root, straight_run, tmp_path):
    weights = os.path.join(straight_run, "checkpoints", "iter_00000004.pkl")
    work = tmp_path / "work"
    common = ["--config-file", DEMO_CONFIG, "--work-dir", str(work),
              "--load-from", weights, "--seed", "3", f"data.data_root={demo_root}", *TINY]
    first = run_net("--task", "val", *common).stdout.strip().splitlines()[-1]
    counts = np.load(work / "confusion_matrix.npy")
    second = run_net("--task", "val", *common).stdout.strip().splitlines()[-1]
    assert first == second and first.startswith("aAcc"), (first, second)
    np.testing.assert_array_equal(np.load(work / "confusion_matrix.npy"), counts)
    # the training's evaluation saw the same pixels (its weights and NMF bases differ)
    during = np.load(os.path.join(straight_run, "confusion_matrix_iter_00000004.npy"))
    assert counts.sum() == during.sum() > 0, (counts.sum(), during.sum())
    run_net("--task", "test", "--save-dir", str(tmp_path), *common)
    pngs = sorted(n for n in os.listdir(tmp_path) if n.endswith(".png"))
    overlays = sorted(os.listdir(tmp_path / "overlay"))
    assert len(pngs) == 2 and len(overlays) == 2, (pngs, overlays)
    import cv2
    pred = cv2.imread(str(tmp_path / pngs[0]), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (48, 64) and pred.max() < 6, (pred.shape, pred.max())


def test_training_and_val_with_the_cpu_kernels_off(demo_root, straight_run, tmp_path):
    """JSEG_CPU_KERNELS=0 trains and evaluates on Jittor's own ops, the maths that runs on
    CUDA: the same losses and validation metrics as with jseg's CPU kernels, to float32
    rounding."""
    run_net(*train_args(demo_root, tmp_path, 4), env={"JSEG_CPU_KERNELS": "0"})
    on = {r["iter"]: r["loss"] for r in train_records(straight_run)}
    off = {r["iter"]: r["loss"] for r in train_records(tmp_path)}
    assert sorted(off) == [1, 2, 3, 4], off
    for it in on:
        assert abs(on[it] - off[it]) <= 1e-4 * abs(on[it]), (it, on[it], off[it])

    def val_metrics(work_dir):
        with open(os.path.join(work_dir, "metrics.jsonl")) as f:
            return [r for r in map(json.loads, f) if r["mode"] == "val"][-1]
    a, b = val_metrics(straight_run), val_metrics(tmp_path)
    assert abs(a["mIoU"] - b["mIoU"]) <= 0.1 and abs(a["aAcc"] - b["aAcc"]) <= 0.1, (a, b)


def test_resume_refuses_a_changed_config_unless_accepted(demo_root, tmp_path):
    """--resume with another lr / weight decay / batch / crop / drop path: one error line
    listing each key old -> new, nothing written. Accepted with --resume-changed: the new
    lr is used from the next iteration, the change is logged, and the earlier config.yaml
    is kept as config.iter_00000002.yaml. (On 5688dd8 every change was taken silently.)"""
    run_net(*train_args(demo_root, tmp_path, 2))
    config_before = (tmp_path / "config.yaml").read_text()
    changed = ["optimizer.lr=5e-3", "optimizer.weight_decay=0.5", "data.batch_size=4",
               "data.crop_size=[32,32]", "model.backbone.drop_path_rate=0.3"]
    out = run_net(*train_args(demo_root, tmp_path, 4, *changed), "--resume", "auto", expect=1)
    lines = out.stderr.strip().splitlines()
    assert len([l for l in lines if l.startswith("error:")]) == 1, out.stderr[-2000:]
    last = lines[-1]
    assert last.startswith("error: ") and "trained with another config" in last, last
    for needle in ("optimizer.lr: 0.001 -> 0.005", "optimizer.weight_decay: 0.01 -> 0.5",
                   "data.batch_size: 2 -> 4", "data.crop_size: [48, 48] -> [32, 32]",
                   "model.backbone.drop_path_rate: 0.1 -> 0.3",
                   "--resume-changed model.backbone.drop_path_rate,data.batch_size,"
                   "data.crop_size,optimizer.lr,optimizer.weight_decay"):
        assert needle in last, (needle, last)
    assert (tmp_path / "config.yaml").read_text() == config_before
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iter_00000002.pkl"]

    # free keys (run length, intervals) pass; an accepted change is logged and kept apart
    out = run_net(*train_args(demo_root, tmp_path, 3, "optimizer.lr=5e-3",
                              "train.log_interval=3"), "--resume", "auto",
                  "--resume-changed", "optimizer.lr")
    assert "resume: optimizer.lr changed 0.001 -> 0.005" in out.stderr, out.stderr[-2000:]
    assert "resume: train.max_iters changed 2 -> 3" in out.stderr
    assert (tmp_path / "config.iter_00000002.yaml").read_text() == config_before
    assert load_config(tmp_path / "config.yaml").optimizer.lr == 5e-3
    assert load_config(tmp_path / "config.iter_00000002.yaml").optimizer.lr == 1e-3
    third = [r for r in train_records(tmp_path) if r["iter"] == 3][-1]
    assert third["lr"] > 1e-3, third  # 5e-3 * (1 - 2/3) after warm-up (1e-3: 3.3e-4)


def test_resume_config_check_keys_and_seed():
    """check_resume_config in-process: free keys, sections named in `allowed`, and a seed
    other than the run's own."""
    from jseg.config import config_to_yaml
    from jseg.engine.resume import ResumeConfigError, check_resume_config

    old = load_config(DEMO_CONFIG, TINY)
    ckpt = {"meta": {"config": config_to_yaml(old), "seed": 7}}
    free = load_config(DEMO_CONFIG, TINY + ["train.max_iters=9", "train.eval_interval=3",
                                            "model.test_cfg.tta_flip=false", "work_dir=/elsewhere",
                                            "data.val.img_dir=x"])
    assert {k for k, _, _ in check_resume_config(ckpt, free, "c.pkl")} == {
        "train.max_iters", "train.eval_interval", "model.test_cfg.tta_flip", "work_dir",
        "data.val.img_dir"}
    assert check_resume_config(ckpt, old, "c.pkl", seed=7) == []
    with pytest.raises(ResumeConfigError, match=r"\(seed: 7 -> 8\).*--resume-changed seed$"):
        check_resume_config(ckpt, old, "c.pkl", seed=8)
    loss = load_config(DEMO_CONFIG, TINY + ["optimizer.betas=[0.8,0.9]", "scheduler.power=2.0"])
    with pytest.raises(ResumeConfigError, match="optimizer.betas: .0.9, 0.999. -> .0.8, 0.9."):
        check_resume_config(ckpt, loss, "c.pkl")
    assert len(check_resume_config(ckpt, loss, "c.pkl", allowed=["optimizer", "scheduler"])) == 2


def test_a_run_shorter_than_its_warmup_trains_with_a_warning(demo_root, tmp_path):
    """1 iteration with a 2-iteration warm-up: trained, one warning saying the run only warms
    up (refused on 5688dd8); the lr is the warm-up's first value."""
    out = run_net(*train_args(demo_root, tmp_path, 1))
    assert "scheduler.warmup_iters 2 is longer than train.max_iters 1: the run only warms up" \
        in out.stderr, out.stderr[-2000:]
    assert [r["lr"] for r in train_records(tmp_path)] == [pytest.approx(1e-3 * 1e-6)]


def test_metrics_continue_cleanly_after_a_resume(demo_root, tmp_path):
    """A run that logged iteration 3 (and its evaluation) but died before checkpoint 3, then
    --resume auto from 2: metrics.jsonl holds every iteration once (on 5688dd8 the records
    of 3 appeared twice)."""
    run_net(*train_args(demo_root, tmp_path, 3))
    os.remove(tmp_path / "checkpoints" / "iter_00000003.pkl")  # as if killed before it
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"mode": "train", "iter": 3, "lo')  # and a line cut by the kill
    out = run_net(*train_args(demo_root, tmp_path, 3), "--resume", "auto")
    assert "dropped 2 records of iterations after 2" in out.stderr, out.stderr[-2000:]
    with open(tmp_path / "metrics.jsonl") as f:
        lines = f.read().splitlines()
    records = [json.loads(l) for l in lines if l.endswith("}")]
    assert [(r["mode"], r["iter"]) for r in records] == [
        ("train", 1), ("train", 2), ("train", 3), ("val", 3)], records
    assert len(lines) == len(records) + 1  # the cut line stays (analyze_logs skips it)


def test_nan_loss_stops_with_the_iteration_and_keeps_checkpoints(demo_root, tmp_path):
    run_net(*train_args(demo_root, tmp_path, 2))
    before = open(os.path.join(tmp_path, "checkpoints", "iter_00000002.pkl"), "rb").read()
    out = run_net(*train_args(demo_root, tmp_path, 4, "optimizer.lr=1e30"), "--resume", "auto",
                  "--resume-changed", "optimizer.lr", expect=1)
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the loss is") and "at iteration" in last, last
    after = open(os.path.join(tmp_path, "checkpoints", "iter_00000002.pkl"), "rb").read()
    assert before == after
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iter_00000002.pkl"]


@pytest.mark.parametrize("case", ["missing_config", "bad_override", "missing_weights",
                                  "corrupt_weights", "class_mismatch", "resume_nothing",
                                  "readonly_work_dir", "amp_on_cpu", "label_ids_not_cityscapes",
                                  "no_weights"])
def test_bad_input_gives_one_line_and_exit_1(case, demo_root, straight_run, tmp_path):
    cfg = DEMO_CONFIG
    weights = os.path.join(straight_run, "checkpoints", "iter_00000004.pkl")
    base = ["--config-file", cfg, f"data.data_root={demo_root}", *TINY]
    if case == "missing_config":
        args, needle = ["--config-file", "nope.yaml", "--task", "val"], "config file not found"
    elif case == "bad_override":
        args, needle = base + ["--task", "val", "train.max_iter=3"], "did you mean 'max_iters'"
    elif case == "missing_weights":
        args, needle = base + ["--task", "val", "--load-from", str(tmp_path / "x.pkl")], "x.pkl"
    elif case == "corrupt_weights":
        bad = tmp_path / "bad.pkl"
        bad.write_bytes(open(weights, "rb").read()[:1000])
        args, needle = base + ["--task", "val", "--load-from", str(bad)], "bad.pkl"
    elif case == "class_mismatch":
        args = base + ["--task", "val", "--load-from", weights, "model.decode_head.num_classes=5",
                       "data.classes=[a,b,c,d,e]", "data.palette=null"]
        needle = "The file has 6 classes and the config 5"
    elif case == "resume_nothing":
        args = base + ["--task", "train", "--resume", "auto", "--work-dir", str(tmp_path)]
        needle = "no checkpoint in"
    elif case == "no_weights":
        args, needle = base + ["--task", "val"], "needs weights: pass --load-from"
    elif case == "label_ids_not_cityscapes":
        args = base + ["--task", "test", "--load-from", weights, "--label-ids",
                       "--save-dir", str(tmp_path)]
        needle = "label ids are for datasets"
    elif case == "amp_on_cpu":
        args = base + ["--task", "train", "--work-dir", str(tmp_path), "train.amp=true"]
        needle = "train.amp=true needs a CUDA GPU"
    else:  # a work dir that cannot be created (its parent is a file); root ignores modes
        blocker = tmp_path / "file"
        blocker.write_text("")
        args, needle = base + ["--task", "train", "--work-dir", str(blocker / "w")], "file"
    out = run_net(*args, expect=1)
    lines = [l for l in out.stderr.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


MPIRUN = shutil.which("mpirun")


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (Debian: apt-get install "
                                           "openmpi-bin libopenmpi-dev)")
def test_two_mpi_ranks_equal_one_process(demo_root, tmp_path):
    """Same seed and global batch: 2 ranks x 1 image == 1 process x 2 images (SyncBN,
    averaged gradients). Randomness inside the network is switched off (no dropout, no
    DropPath, fixed NMF bases), since each rank draws its own. Adam's eps is raised to 1:
    biases before a BatchNorm get gradients of pure round-off (~1e-9), which Adam with
    eps 1e-8 would turn into full +-lr steps of random sign in either run."""
    exact = ["model.backbone.drop_path_rate=0.0", "model.decode_head.dropout_ratio=0.0",
             "model.decode_head.ham.rand_init=false", "train.eval_interval=0",
             "optimizer.eps=1.0"]
    single, multi = tmp_path / "single", tmp_path / "multi"
    run_net(*train_args(demo_root, single, 2, *exact))
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    out = subprocess.run([MPIRUN, "-np", "2", "--oversubscribe", sys.executable, RUN_NET,
                          "--no-progress", *train_args(demo_root, multi, 2, *exact)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    one = {r["iter"]: r["loss"] for r in train_records(single)}
    two = {r["iter"]: r["loss"] for r in train_records(multi)}
    assert sorted(one) == sorted(two) == [1, 2], (one, two)
    for it in one:
        assert abs(one[it] - two[it]) <= 1e-5 * abs(one[it]), (it, one[it], two[it])
    # the evaluation at the end: each rank counted its share, the matrices were summed
    c1, c2 = (np.load(d / "confusion_matrix_iter_00000002.npy") for d in (single, multi))
    assert c1.sum() == c2.sum() > 0, (c1.sum(), c2.sum())
    a, _ = read_checkpoint(os.path.join(single, "checkpoints", "iter_00000002.pkl"))
    b, _ = read_checkpoint(os.path.join(multi, "checkpoints", "iter_00000002.pkl"))
    # |single - multi| <= 1e-4 * max|single| + 1e-6 per tensor (the 1e-6 covers tensors
    # that are themselves ~1e-8, e.g. running means of zero-mean features)
    excess = {k: float(np.abs(a[k] - b[k]).max() - 1e-4 * np.abs(a[k]).max() - 1e-6) for k in a}
    worst = max(excess, key=excess.get)
    assert excess[worst] <= 0, (worst, float(np.abs(a[worst] - b[worst]).max()),
                                float(np.abs(a[worst]).max()))


def test_cityscapes_label_ids_for_the_evaluation_server(demo_root, tmp_path):
    import cv2
    from jseg.data.datasets import DATASETS
    from jseg.engine.evaluator import prediction_writer
    CITYSCAPES_LABEL_IDS = DATASETS["cityscapes"].label_ids
    cfg = load_config(os.path.join(ROOT, "configs/segnext/segnext_mscan-t_cityscapes-1024x1024.yaml"))
    img_path = os.path.join(demo_root, "images", "validation", "demo_00000.jpg")
    h, w = cv2.imread(img_path).shape[:2]
    pred = (np.arange(h * w).reshape(h, w) % 19).astype(np.int64)
    prediction_writer(cfg, str(tmp_path), label_ids=True)({"img_path": img_path}, pred)
    written = cv2.imread(str(tmp_path / "demo_00000.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, np.array(CITYSCAPES_LABEL_IDS, np.uint8)[pred])
    assert written[0, 0] == 7 and written[0, 18] == 33  # road, bicycle
    assert os.path.exists(tmp_path / "overlay" / "demo_00000.jpg")


# lr independent of train.max_iters after the warm-up (poly power 0), so that a run stopped
# by a signal can be resumed with a short max_iters and equal a straight run of that length
CONSTANT_LR = ["scheduler.power=0.0", "train.checkpoint_interval=1000", "train.eval_interval=0"]


def _wait_for_iteration(proc, work_dir, iteration, timeout=600):
    import time
    deadline = time.time() + timeout
    path = os.path.join(work_dir, "metrics.jsonl")
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(path) and any(r["iter"] >= iteration for r in train_records(work_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach iteration {iteration}: "
                         f"{proc.communicate()[1][-2000:]}")


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_with_a_checkpoint_and_resume_equals_a_straight_run(
        demo_root, tmp_path, signame):
    """SIGTERM (a scheduler's preemption) or SIGINT mid-run: the step finishes, a checkpoint
    of it is written, one log line names it and how to resume, exit 143 / 130. --resume auto
    then gives the losses and weights of an uninterrupted run, bit for bit. (On 5688dd8
    SIGTERM ended the run at once, exit 143, no checkpoint.)"""
    import signal
    signum = getattr(signal, signame)
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, RUN_NET, "--no-progress",
                             *train_args(demo_root, stopped, 400, *CONSTANT_LR)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_iteration(proc, stopped, 2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, (proc.returncode, err[-2000:])
    assert "Traceback" not in err and "error:" not in err, err[-2000:]
    names = os.listdir(stopped / "checkpoints")
    assert len(names) == 1, names
    k = int(names[0][5:13])
    assert k >= 2 and max(r["iter"] for r in train_records(stopped)) == k
    line = [l for l in err.splitlines() if f"stopped by {signame} after iteration {k}" in l]
    assert len(line) == 1 and names[0] in line[0] and "--resume auto" in line[0], err[-2000:]

    run_net(*train_args(demo_root, stopped, k + 2, *CONSTANT_LR), "--resume", "auto")
    straight = tmp_path / "straight"
    run_net(*train_args(demo_root, straight, k + 2, *CONSTANT_LR))
    a = {r["iter"]: r["loss"] for r in train_records(straight)}
    b = {r["iter"]: r["loss"] for r in train_records(stopped)}
    assert a == b, (a, b)
    last = f"iter_{k + 2:08d}.pkl"
    wa, ca = read_checkpoint(os.path.join(straight, "checkpoints", last), full=True)
    wb, cb = read_checkpoint(os.path.join(stopped, "checkpoints", last), full=True)
    assert wa.keys() == wb.keys()
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key], err_msg=key)
    for key in ca["optimizer"]["v"]:
        np.testing.assert_array_equal(ca["optimizer"]["v"][key], cb["optimizer"]["v"][key])


def test_a_second_signal_stops_at_once():
    """The first SIGTERM only asks the loop to stop; a second one ends the process by the
    signal (exit -15 here, 143 in a shell), with one line saying so."""
    code = ("import os, signal\n"
            "from jseg.engine.stop import StopSignals\n"
            "with StopSignals() as stop:\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    assert stop.requested(1) == signal.SIGTERM\n"
            "    print('first signal noted', flush=True)\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    print('still running')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == -15, (out.returncode, out.stderr[-2000:])
    assert out.stdout == "first signal noted\n"
    assert "SIGTERM again: stopping now, without a checkpoint" in out.stderr


def _backbone_pair():
    """(cfg, model, a source backbone state dict of other weights) of the tiny demo model."""
    import jittor as jt
    from jseg.models import build_model

    cfg = load_config(DEMO_CONFIG, TINY)
    jt.set_global_seed(1)
    source = build_model(cfg.model)
    jt.set_global_seed(2)
    model = build_model(cfg.model)
    return cfg, model, {k: v.numpy() for k, v in source.backbone.state_dict().items()}


def test_backbone_initialisation_loads_the_backbone_only(tmp_path):
    """model.backbone.pretrained: backbone keys load (with or without the backbone. prefix),
    extra keys (a decode head, an ImageNet classifier) are ignored, the head keeps its init."""
    from jseg.checkpoint import write_checkpoint
    from jseg.checkpoint import load_backbone_init

    _, model, backbone = _backbone_pair()
    head_before = model.decode_head.conv_seg.weight.numpy().copy()
    classifier = {"head.weight": np.ones((10, 4), np.float32)}
    for name, state in (("plain.pkl", {**backbone, **classifier}),
                        ("prefixed.pkl", {f"backbone.{k}": v for k, v in backbone.items()})):
        write_checkpoint(str(tmp_path / name), {"state_dict": state})
        load_backbone_init(model, str(tmp_path / name))
        for k, v in model.backbone.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), backbone[k], err_msg=k)
        np.testing.assert_array_equal(model.decode_head.conv_seg.weight.numpy(), head_before)


def test_backbone_initialisation_refuses_partial_matches(tmp_path, caplog):
    """Fewer than all MSCAN tensors matched (a stage missing, another variant's shapes, an
    unconverted PyTorch layout): WeightsMismatchError with the per-stage report and the fix, nothing
    loaded; with strict=False (model.backbone.pretrained_strict=false) the matched tensors load
    and the rest keep their init, with a warning."""
    from jseg.checkpoint import write_checkpoint
    from jseg.checkpoint import WeightsMismatchError, load_backbone_init

    _, model, backbone = _backbone_pair()
    before = {k: v.numpy().copy() for k, v in model.backbone.state_dict().items()}
    n_all = len(backbone)
    n_stage4 = sum(k.startswith(("patch_embed4.", "block4.", "norm4.")) for k in backbone)
    no_stage4 = {k: v for k, v in backbone.items()
                 if not k.startswith(("patch_embed4.", "block4.", "norm4."))}
    misshaped = dict(backbone, **{"norm4.weight": np.ones(3, np.float32)})
    official = {k.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv."): v for k, v in backbone.items()}
    official["norm1.num_batches_tracked"] = np.zeros((), np.int64)
    cases = {
        "no_stage4.pkl": (no_stage4, rf"{n_all - n_stage4}/{n_all} MSCAN tensors matched "
                                     rf"\(stage 1 \d+/\d+, .*stage 4 0/{n_stage4}\)"),
        "misshaped.pkl": (misshaped, r"norm4.weight: file \(3,\) vs model \(64,\)\), weights "
                                     "of another MSCAN variant"),
        "official.pkl": (official, r"in a PyTorch layout: convert it first"),
    }
    for name, (state, message) in cases.items():
        write_checkpoint(str(tmp_path / name), {"state_dict": state})
        with pytest.raises(WeightsMismatchError, match=message) as err:
            load_backbone_init(model, str(tmp_path / name))
        assert "model.backbone.pretrained_strict=false" in str(err.value)
        for k, v in model.backbone.state_dict().items():  # nothing was loaded
            np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)

    with caplog.at_level("WARNING", logger="jseg"):
        load_backbone_init(model, str(tmp_path / "no_stage4.pkl"), strict=False)
    assert "pretrained_strict is false" in caplog.text
    for k, v in model.backbone.state_dict().items():
        expected = before[k] if k.startswith(("patch_embed4.", "block4.", "norm4.")) else backbone[k]
        np.testing.assert_array_equal(v.numpy(), expected, err_msg=k)


def test_training_stops_on_a_mismatched_backbone_file(demo_root, tmp_path):
    """The command line: one error line with the per-stage report, exit 1, nothing trained;
    model.backbone.pretrained_strict=false trains on."""
    from jseg.checkpoint import write_checkpoint

    _, _, backbone = _backbone_pair()
    partial = tmp_path / "partial.pkl"
    write_checkpoint(str(partial), {"state_dict": {k: v for k, v in backbone.items()
                                                    if not k.startswith("block2.")}})
    out = run_net(*train_args(demo_root, tmp_path / "run", 2),
                  f"model.backbone.pretrained={partial}", expect=1)
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error: backbone init from"), out.stderr[-2000:]
    matched, total = map(int, re.search(r"stage 2 (\d+)/(\d+)", lines[-1]).groups())
    assert matched < total and "block2.0." in lines[-1], lines[-1]
    assert not os.path.exists(tmp_path / "run" / "checkpoints") or \
        not os.listdir(tmp_path / "run" / "checkpoints")
    run_net(*train_args(demo_root, tmp_path / "run2", 2), f"model.backbone.pretrained={partial}",
            "model.backbone.pretrained_strict=false")
    assert os.listdir(tmp_path / "run2" / "checkpoints")


def test_unlabelled_split_predicts_without_metrics(demo_root, straight_run, tmp_path):
    """data.val.ann_dir null (e.g. Cityscapes' test split for the evaluation server): --task
    test writes every label map, --task val says it needs labels, training skips evaluation."""
    weights = os.path.join(straight_run, "checkpoints", "iter_00000004.pkl")
    common = ["--config-file", DEMO_CONFIG, "--load-from", weights, f"data.data_root={demo_root}",
              *TINY, "data.val.ann_dir=null"]
    out = run_net("--task", "test", "--save-dir", str(tmp_path / "pred"), *common)
    assert "2 label maps written" in out.stdout, out.stdout
    assert len([n for n in os.listdir(tmp_path / "pred") if n.endswith(".png")]) == 2
    out = run_net("--task", "val", *common, expect=1)
    errors = [l for l in out.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "needs label maps" in errors[0], out.stderr[-2000:]
    assert "confusion matrix" not in out.stderr, out.stderr[-2000:]
    run_net(*train_args(demo_root, tmp_path / "train", 2, "data.val.ann_dir=null",
                        "train.eval_interval=1"))
    with open(tmp_path / "train" / "metrics.jsonl") as f:
        modes = [json.loads(line)["mode"] for line in f]
    assert modes == ["train", "train"], modes


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed (Debian: apt-get install "
                                           "openmpi-bin libopenmpi-dev)")
def test_a_signal_to_one_mpi_rank_stops_every_rank_at_the_same_iteration(demo_root, tmp_path):
    """SIGTERM to one rank only: the ranks agree on the stop after the same step, rank 0
    writes that iteration's checkpoint, every rank exits 143."""
    import signal
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = subprocess.Popen([MPIRUN, "-np", "2", "--oversubscribe", sys.executable, RUN_NET,
                             "--no-progress", *train_args(demo_root, tmp_path, 400, *CONSTANT_LR)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _wait_for_iteration(proc, tmp_path, 2)
    ranks = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_rank_of(int(p), proc.pid)]
    assert len(ranks) == 2, ranks
    os.kill(max(ranks), signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(proc.communicate()[1][-5000:]) from None
    assert proc.returncode != 0, err[-2000:]
    names = os.listdir(tmp_path / "checkpoints")
    assert len(names) == 1, names
    k = int(names[0][5:13])
    assert max(r["iter"] for r in train_records(tmp_path)) == k
    assert f"stopped by SIGTERM after iteration {k}" in err, err[-3000:]


def _is_rank_of(pid, launcher):
    """Is process `pid` a run_net.py that process `launcher` (mpirun) started?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return False
    return parent == launcher and RUN_NET.encode() in cmdline
