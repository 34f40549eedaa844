"""tools/gpu_check.py on CPU (no GPU in CI): the quick flow (the "GPU" side is the CPU with
jseg's kernels off, AMP is reported as CUDA only), the streaming of rows, the deadline,
rows done earlier, the GPU gate and the one-line "no GPU"."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT, TINY_OVERRIDES as TINY

TOOL = os.path.join(ROOT, "tools", "gpu_check.py")


def _lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_quick_gpu_check_passes_on_cpu(demo_root, tmp_path):
    from jseg.diagnostics.gpu_check import format_table, run_gpu_check

    jsonl = str(tmp_path / "rows.jsonl")
    rows = run_gpu_check(quick=True, data_root=demo_root, with_mmseg=False, jsonl=jsonl,
                         train_overrides=[o for o in TINY if not o.startswith("train.")],
                         out=lambda *a, **k: None)
    table = format_table(rows)
    print(table)
    by_check = {(r[0], r[1]): r for r in rows}
    assert not [r for r in rows if r[3] == "FAIL"], table
    assert by_check[("environment", "CUDA toolkit")][2].startswith("none"), table
    assert by_check[("environment", "GPU usable")][2] == "no GPU: quick CPU run", table
    logits = [r for r in rows if r[0] == "logits"]
    assert len(logits) == 1 and logits[0][3] == "ok" and "kernels off" in logits[0][1], table
    assert [r[3] for r in rows if r[0] == "training"] == ["ok", "info"], table
    assert "CUDA only" in [r for r in rows if r[0] == "training"][1][2], table
    assert [r[3] for r in rows if r[0] == "resume"] == ["ok"], table
    speed = [r[1] for r in rows if r[0] == "speed"]
    # priority order: T inference (jseg, mmseg) before the training rows, T training after
    assert speed == ["jseg T infer fp32", "mmseg T infer fp32", "jseg T train fp32",
                     "mmseg T train fp32"], table
    assert [r[2] for r in rows if r[1].startswith("mmseg")] == ["not run: switched off "
                                                                "(--no-mmseg)"] * 2, table
    sections = [r[0] for r in rows]
    assert sections.index("logits") < sections.index("speed") < sections.index("training") \
        < sections.index("resume"), table
    # every row is in the JSON lines, in the same order, with its task's id
    records = _lines(jsonl)
    assert [(r["section"], r["check"], r["result"], r["verdict"]) for r in records] == \
        [tuple(r) for r in rows], records
    assert records[-1]["id"] == "resume" and all(r["at_s"] >= 0 for r in records), records


def test_the_gpu_plan_is_in_the_order_of_what_matters_most():
    from jseg.diagnostics.gpu_check import plan_tasks

    ids = [t.id for t in plan_tasks(None, True, ("t", "s", "b", "l"), (512, 512), 20, 5, "data",
                                    [], "tmp", None)]
    assert ids[:10] == ["logits:t", "speed:jseg:t:infer:fp32", "speed:mmseg:t:infer",
                        "training:fp32", "speed:jseg:t:train:fp32", "speed:mmseg:t:train",
                        "training:amp", "speed:jseg:t:infer:amp", "speed:jseg:t:train:amp",
                        "resume"], ids
    assert ids[10] == "logits:s" and len(ids) == 11 + 3 * 6, ids
    for v in "sbl":  # each of S, B, L: inference and training, fp32, AMP, mmseg
        assert [i for i in ids if f":{v}:" in i and i.startswith("speed")] == [
            f"speed:jseg:{v}:infer:fp32", f"speed:jseg:{v}:infer:amp", f"speed:mmseg:{v}:infer",
            f"speed:jseg:{v}:train:fp32", f"speed:jseg:{v}:train:amp", f"speed:mmseg:{v}:train"]
    assert len(set(ids)) == len(ids), ids


def _task(id, rows, effect=None):
    from jseg.diagnostics.gpu_check import Row, Task

    def run():
        if effect:
            effect()
        return [Row("s", f"{id} check", r, "ok") for r in rows]
    return Task(id, "s", f"{id} check", run)


def test_each_row_is_in_the_file_before_the_next_task_runs(tmp_path):
    from jseg.diagnostics.gpu_check import Runner

    jsonl = str(tmp_path / "rows.jsonl")
    printed, seen = [], []
    runner = Runner(jsonl, out=lambda *a, **k: printed.append(a[0]))
    runner.run([_task("a", ["first"]),
                _task("b", ["second"], effect=lambda: seen.append((list(printed),
                                                                   _lines(jsonl))))])
    runner.finish()
    before_b_printed, before_b_file = seen[0]
    assert len(before_b_printed) == 1 and "first" in before_b_printed[0], before_b_printed
    assert [r["result"] for r in before_b_file] == ["first"], before_b_file
    assert [r["id"] for r in _lines(jsonl)] == ["a", "b"]


def test_deadline_skips_the_tasks_not_started_in_time(tmp_path):
    from jseg.diagnostics.gpu_check import Runner

    jsonl = str(tmp_path / "rows.jsonl")
    exits = []
    runner = Runner(jsonl, deadline=0.3, out=lambda *a, **k: None, exit=exits.append)
    runner.run([_task("a", ["done"])])
    time.sleep(0.5)  # the deadline passes between two tasks: nothing to interrupt
    rows = runner.run([_task("b", ["never"]), _task("c", ["never"])])
    runner.finish()
    assert exits == [], exits
    assert [r[3] for r in rows] == ["ok", "skip", "skip"], rows
    assert all("deadline" in r[2] for r in rows[1:]), rows
    assert [(r["id"], r["verdict"]) for r in _lines(jsonl)] == [("a", "ok"), ("b", "skip"),
                                                                ("c", "skip")]


def test_a_task_running_at_the_deadline_is_interrupted_with_the_table(tmp_path, capfd):
    from jseg.diagnostics.gpu_check import EXIT_DEADLINE, Runner

    jsonl = str(tmp_path / "rows.jsonl")
    printed, exits = [], []
    runner = Runner(jsonl, deadline=1.2, out=lambda *a, **k: printed.append(a[0]),
                    exit=exits.append)
    runner.run([_task("a", ["quick"]), _task("slow", ["late"], effect=lambda: time.sleep(2.5))])
    runner.finish()
    assert exits == [EXIT_DEADLINE], printed
    text = "\n".join(printed)
    assert "deadline 1.2 s reached while running slow" in text, text
    assert "interrupted: still running at the deadline" in text and "verdict" in text, text
    records = _lines(jsonl)
    assert [r["verdict"] for r in records if r["id"] == "slow"][0] == "skip", records
    # every thread's stack was dumped (on stderr)
    assert "most recent call first" in capfd.readouterr().err


def test_rows_done_earlier_are_not_run_again(tmp_path):
    from jseg.diagnostics.gpu_check import Runner, read_done

    earlier = tmp_path / "rows.jsonl"
    records = [dict(id="environment", section="environment", check="python", result="3",
                    verdict="info"),
               dict(id="a", section="s", check="a check", result="x", verdict="ok"),
               dict(id="b", section="s", check="b check", result="y", verdict="FAIL"),
               dict(id="c", section="s", check="c check", result="skipped", verdict="skip")]
    earlier.write_text("".join(json.dumps(r) + "\n" for r in records))
    done, rows = read_done(str(earlier))
    assert done == {"a", "b"}, done  # measured ones; the environment always runs again
    assert [r[1] for r in rows] == ["a check", "b check"], rows
    ran = []
    runner = Runner(str(earlier), done=done, out=lambda *a, **k: None)
    runner.run([_task(i, ["new"], effect=lambda i=i: ran.append(i)) for i in "abcd"])
    runner.finish()
    assert ran == ["c", "d"], ran
    assert [r["id"] for r in _lines(str(earlier))] == ["environment", "a", "b", "c", "c", "d"]


def test_gate_stops_on_a_gpu_without_cuda_or_libraries():
    from jseg.diagnostics.gpu_check import GateError, cuda_gate
    from jseg.platform.toolkit import Toolkit

    cuda13 = Toolkit("/usr/local/cuda/bin/nvcc", (13, 0), "system", "CUDA 13.0, the only one")
    good = {"cuBLAS": "yes", "cuDNN": "yes"}
    cuda_gate(good, True, cuda13)  # usable: no error
    cases = [
        (good, False, Toolkit("", None, "cpu", "Jittor cannot build with this toolkit "
                              "unpatched", "fix: python tools/jittor_cuda13.py apply"),
         "no CUDA toolkit for Jittor: fix: python tools/jittor_cuda13.py apply"),
        (good, False, cuda13, "Jittor did not start CUDA with /usr/local/cuda/bin/nvcc"),
        ({"cuBLAS": "yes", "cuDNN": "no (Jittor runs its own CUDA kernels instead)"}, True,
         cuda13, "without cuDNN (no (Jittor runs its own CUDA kernels instead))"),
        ({"cuDNN": "yes"}, True, cuda13, "without cuBLAS (not reported)"),
    ]
    for report, has_cuda, toolkit, expected in cases:
        with pytest.raises(GateError) as e:
            cuda_gate(report, has_cuda, toolkit)
        assert expected in str(e.value), str(e.value)


def test_no_gpu_is_one_line_and_exit_2_within_seconds():
    start = time.monotonic()
    out = subprocess.run([sys.executable, TOOL, "--deadline", "600"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    seconds = time.monotonic() - start
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: no GPU: no /dev/nvidia*"), out.stderr
    assert out.stdout == "", out.stdout
    assert seconds < 30, f"took {seconds:.1f} s"


def test_quick_with_a_deadline_stops_in_time_with_table_and_json_lines(demo_root, tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    start = time.monotonic()
    out = subprocess.run([sys.executable, TOOL, "--quick", "--deadline", "60", "--no-mmseg",
                          "--jsonl", str(jsonl), "--data-root", demo_root],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    seconds = time.monotonic() - start
    # a warm kernel cache finishes (0), a cold one meets the deadline (4): at it, or, as
    # Jittor holds the GIL while it compiles a graph's kernels, right after that compile
    assert out.returncode in (0, 4), (out.returncode, out.stdout[-3000:], out.stderr[-3000:])
    assert seconds < 60 + 60, f"took {seconds:.1f} s"
    assert "section" in out.stdout and "verdict" in out.stdout, out.stdout
    records = _lines(jsonl)
    assert records[0]["id"] == "environment" and len(records) >= 3, records
    # every row of the file was printed as it came
    for r in records:
        assert f"{r['section']} | {r['check']} | {r['result']} | {r['verdict']}" in out.stdout


def test_a_deadline_inside_the_first_task_still_prints_the_table(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    out = subprocess.run([sys.executable, TOOL, "--quick", "--deadline", "0.3", "--no-mmseg",
                          "--jsonl", str(jsonl)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 4, (out.returncode, out.stdout[-3000:], out.stderr[-3000:])
    # starting Jittor takes longer than 0.3 s: the environment task is interrupted
    assert "deadline 0.3 s reached while running environment" in out.stdout, out.stdout
    assert "verdict" in out.stdout and "interrupted" in out.stdout, out.stdout
    assert "most recent call first" in out.stderr, out.stderr[-2000:]
    assert [r["verdict"] for r in _lines(jsonl)] == ["skip"]


@pytest.mark.parametrize("argv, expected", [
    (["--variants", "tx"], "'tsbl'"),
    (["--deadline", "0"], "--deadline must be a positive"),
    (["--skip-done", "/nonexistent/rows.jsonl"], "no such file"),
])
def test_bad_arguments_are_one_error_line(argv, expected):
    out = subprocess.run([sys.executable, TOOL, *argv], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], out.stderr
