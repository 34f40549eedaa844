"""tools/gpu_check.py's flow, run small on CPU (no GPU in CI): the "GPU" side is the CPU
with jseg's kernels off, AMP is reported as CUDA only; every other check must pass."""
import os
import subprocess
import sys

from conftest import ROOT, TINY_OVERRIDES as TINY

TOOL = os.path.join(ROOT, "tools", "gpu_check.py")


def test_quick_gpu_check_passes_on_cpu(demo_root):
    from jseg.diagnostics.gpu_check import format_table, run_gpu_check

    rows = run_gpu_check(quick=True, data_root=demo_root, with_mmseg=False,
                         train_overrides=[o for o in TINY if not o.startswith("train.")],
                         out=lambda *a, **k: None)
    table = format_table(rows)
    print(table)
    by_check = {(r[0], r[1]): r for r in rows}
    assert not [r for r in rows if r[3] == "FAIL"], table
    assert by_check[("environment", "CUDA toolkit")][2].startswith("none"), table
    logits = [r for r in rows if r[0] == "logits" and r[1] != "time"]
    assert len(logits) == 1 and logits[0][3] == "ok" and "kernels off" in logits[0][1], table
    training = [r for r in rows if r[0] == "training" and r[1] != "time"]
    assert [r[3] for r in training] == ["ok", "info"], table
    assert "CUDA only" in training[1][2], table
    assert [r[3] for r in rows if r[0] == "resume" and r[1] != "time"] == ["ok"], table
    speed = [r[1] for r in rows if r[0] == "speed" and r[1] != "time"]
    assert speed == ["jseg T infer fp32", "jseg T train fp32"], table


def test_bad_arguments_are_one_error_line():
    out = subprocess.run([sys.executable, TOOL, "--variants", "tx"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and "'tsbl'" in lines[-1], out.stderr
