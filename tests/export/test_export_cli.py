"""tools/export.py end to end on the tiny demo model: ONNX (verified by onnxruntime) and an
mmseg 1.x checkpoint; bad input is one error line and writes nothing."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES as TINY

EXPORT = os.path.join(ROOT, "tools", "export.py")


def export(*args, expect=0):
    out = subprocess.run([sys.executable, EXPORT, "--config-file", DEMO_CONFIG, *args, *TINY],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == expect, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    return out


@pytest.fixture
def weights(tiny_weights):
    return tiny_weights


def test_onnx_export_verifies_against_our_model(weights, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    out_file = tmp_path / "tiny.onnx"
    out = export("--checkpoint", weights, "--format", "onnx", "--shape", "64", "48",
                 str(out_file))
    assert f"wrote {out_file}: opset 17" in out.stdout and "constants from seed 0" in out.stdout
    verify = next(line for line in out.stdout.splitlines() if line.startswith("verify:"))
    rel = float(verify.split("max rel error ")[1].split(",")[0])
    assert rel <= 1e-4 and "agreement 100.000%" in verify, verify
    session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [tuple(i.shape) for i in session.get_inputs()] == [(1, 3, 64, 48)]

    out = export("--checkpoint", weights, "--format", "onnx", "--shape", "64", "48",
                 "--dynamic", "--bases", "input", str(tmp_path / "dyn.onnx"))
    assert "the graph input bases" in out.stdout and "(N, 3, H, W) free" in out.stdout
    session = ort.InferenceSession(str(tmp_path / "dyn.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["image", "bases"]
    bases = np.full([d if isinstance(d, int) else 1 for d in session.get_inputs()[1].shape], 0.1,
                    np.float32)
    logits, pred = session.run(None, {"image": np.zeros((1, 3, 40, 56), np.float32),
                                      "bases": bases})
    assert logits.shape[2:] == (40, 56) and pred.shape == (1, 40, 56)


def test_mmseg_export_is_a_torch_checkpoint(weights, tmp_path):
    torch = pytest.importorskip("torch")
    out_file = tmp_path / "tiny_mmseg.pth"
    export("--checkpoint", weights, "--format", "mmseg", str(out_file))
    ckpt = torch.load(out_file, weights_only=True)
    from jseg.checkpoint import read_checkpoint
    ours, _ = read_checkpoint(weights)
    for k, v in ours.items():
        np.testing.assert_array_equal(ckpt["state_dict"][k].numpy(), v, err_msg=k)
    assert len(ckpt["meta"]["dataset_meta"]["classes"]) == 6


def test_bad_input_is_one_line_and_writes_nothing(weights, tmp_path):
    target = tmp_path / "keep.onnx"
    target.write_bytes(b"old")
    cases = [
        (["--checkpoint", str(tmp_path / "none.pkl"), "--format", "onnx", str(target)],
         "none.pkl"),
        (["--checkpoint", weights, "--format", "onnx", "--opset", "11", str(target)], "opset"),
        (["--checkpoint", weights, "--format", "onnx", str(tmp_path / "no" / "x.onnx")],
         "not a writable directory"),
    ]
    for args, needle in cases:
        out = export(*args, expect=1)
        lines = out.stderr.strip().splitlines()
        assert lines[-1].startswith("error:") and needle in lines[-1], out.stderr[-2000:]
        assert "Traceback" not in out.stderr
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["keep.onnx"]
