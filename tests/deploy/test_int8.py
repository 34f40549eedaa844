"""INT8 keeps the demo model's accuracy: the README's demo model (configs/demo, trained here
as `make demo` trains it), exported to ONNX and quantised with tools/export.py --int8, scores
within 0.5 mIoU of its float graph on the demo validation split (run_net --backend onnx).
Measured on a 2-core Xeon: fp32 47.33, INT8 47.24 (docs/deploy.md)."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import DEMO_CONFIG, ROOT  # noqa: E402

# The goal of the INT8 export: at most this many mIoU points below the float graph.
INT8_MARGIN = 0.5


def _run(name, *args):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args],
                         capture_output=True, text=True, cwd=ROOT, timeout=1800)
    assert out.returncode == 0, (name, out.returncode, out.stderr[-3000:])
    return out


def _miou(out):
    found = re.search(r"mIoU (\d+\.\d+)", out.stdout.strip().splitlines()[-1])
    assert found, out.stdout[-2000:]
    return float(found.group(1))


def test_int8_demo_model_keeps_its_miou(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    _run("make_demo_data.py", "--out", str(data))
    common = ["--config-file", DEMO_CONFIG, f"data.data_root={data}"]
    _run("run_net.py", *common, "--task", "train", "--work-dir", str(work), "--no-progress")
    weights = str(work / "checkpoints" / "iter_00000400.pkl")
    graphs = {}
    for name, extra in (("fp32", []), ("int8", ["--int8", "--calib", "32"])):
        graphs[name] = str(tmp_path / f"demo_{name}.onnx")
        out = _run("export.py", "--config-file", DEMO_CONFIG, "--checkpoint", weights,
                    "--format", "onnx", "--dynamic", "--bases", "input", *extra, graphs[name],
                    f"data.data_root={data}")
    assert "INT8 (QDQ)" in out.stdout and "argmax agreement" in out.stdout, out.stdout
    assert os.path.getsize(graphs["int8"]) < os.path.getsize(graphs["fp32"]) / 2.5
    scores = {name: _miou(_run("run_net.py", *common, "--task", "val", "--backend", "onnx",
                                "--onnx", graph, "--work-dir", str(tmp_path / name),
                                "--no-progress"))
              for name, graph in graphs.items()}
    jittor = _miou(_run("run_net.py", *common, "--task", "val", "--load-from", weights,
                         "--work-dir", str(tmp_path / "jittor"), "--no-progress"))
    assert scores["fp32"] == jittor, (scores, jittor)
    assert scores["int8"] >= scores["fp32"] - INT8_MARGIN, scores


def test_int8_export_refuses_what_it_cannot_calibrate(tmp_path, tiny_weights):
    from conftest import TINY_OVERRIDES
    for extra, needle in ((["--int8"], "add --dynamic"),
                          (["--int8", "--dynamic", "--calib", "0"], "--calib must be 1 or more")):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "export.py"),
                              "--config-file", DEMO_CONFIG, "--checkpoint", tiny_weights,
                              "--format", "onnx", *extra, str(tmp_path / "x.onnx"),
                              *TINY_OVERRIDES], capture_output=True, text=True, cwd=ROOT,
                             timeout=600)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 1 and len(lines) == 1 and needle in lines[0], out.stderr
        assert not (tmp_path / "x.onnx").exists()
