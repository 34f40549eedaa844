"""jseg.deploy.OnnxSegmentor: an exported graph with our test pipeline, windows and per-image
NMF bases predicts what inference_model predicts; importing jseg.deploy imports no Jittor."""
import subprocess
import sys

import numpy as np
import pytest

import jseg  # noqa: F401  (configures Jittor before it is imported)

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import DEMO_CONFIG, TINY_OVERRIDES  # noqa: E402

SLIDE = ["model.test_cfg.mode=slide", "model.test_cfg.crop_size=[32,32]",
         "model.test_cfg.stride=[24,24]"]


def _export(tmp_path, weights, overrides, bases="input"):
    from jseg.apis import init_model
    from jseg.config import load_config
    from jseg.export.onnx import export_onnx
    cfg = load_config(DEMO_CONFIG, TINY_OVERRIDES + overrides)
    model = init_model(cfg, weights)
    path = str(tmp_path / f"tiny_{bases}.onnx")
    export_onnx(model, path, (48, 64), bases=bases, dynamic=True)
    return cfg, model, path


def _images(demo_root):
    import glob
    return sorted(glob.glob(f"{demo_root}/images/validation/*.jpg"))


@pytest.mark.parametrize("overrides", [[], SLIDE], ids=["whole", "slide"])
def test_the_predictor_equals_inference_model(tmp_path, tiny_weights, demo_root, overrides):
    from jseg.apis import inference_model
    from jseg.deploy import OnnxSegmentor
    cfg, model, path = _export(tmp_path, tiny_weights, overrides)
    seg = OnnxSegmentor(path, cfg)
    rng = np.random.default_rng(3)
    images = _images(demo_root) + [rng.integers(0, 256, (37, 71, 3), dtype=np.uint8)]
    for img in images:
        want = inference_model(model, img, return_probs=True)
        got = seg(img, return_probs=True)
        np.testing.assert_array_equal(got["pred"], want["pred"])
        np.testing.assert_allclose(got["probs"], want["probs"], atol=2e-5)
    # TTA (multi-scale + flip views): the views' bases are the image's next forwards
    want = inference_model(model, images[0], tta=True)["pred"]
    np.testing.assert_array_equal(seg(images[0], tta=True)["pred"], want)
    other = OnnxSegmentor(path, cfg, seed=5)(images[-1], return_probs=True)["probs"]
    assert not np.allclose(other, seg(images[-1], return_probs=True)["probs"], atol=1e-4)


def test_bad_graphs_and_sizes_are_one_clear_error(tmp_path, tiny_weights):
    from jseg.deploy import DeployError, OnnxSegmentor
    from jseg.export.onnx import export_onnx
    cfg, model, _ = _export(tmp_path, tiny_weights, [])
    with pytest.raises(DeployError, match="not found; export one"):
        OnnxSegmentor(str(tmp_path / "missing.onnx"), cfg)
    (tmp_path / "junk.onnx").write_bytes(b"not a graph")
    with pytest.raises(DeployError, match="onnxruntime cannot load"):
        OnnxSegmentor(str(tmp_path / "junk.onnx"), cfg)
    fixed = str(tmp_path / "fixed.onnx")
    export_onnx(model, fixed, (48, 64), bases="input")
    with pytest.raises(DeployError, match="export with --dynamic"):
        OnnxSegmentor(fixed, cfg)(np.zeros((30, 30, 3), np.uint8))


def test_importing_deploy_imports_no_jittor():
    code = ("import sys, jseg.deploy, jseg.deploy.onnx_segmentor; "
            "print(sorted(m for m in sys.modules if m == 'jittor' or m.startswith('jittor.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout


def _run_net(*args, expect=0):
    import os
    from conftest import ROOT
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "run_net.py"),
                          "--no-progress", *args], capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    assert out.returncode == expect, (out.returncode, out.stderr[-3000:])
    return out


@pytest.mark.parametrize("overrides", [[], SLIDE], ids=["whole", "slide"])
def test_run_net_onnx_backend_equals_the_jittor_one(tmp_path, tiny_weights, demo_root,
                                                    overrides):
    """--task test on the demo split: the same summary line, confusion matrix and label PNGs
    from our model and from its graph run by onnxruntime."""
    import cv2
    _, _, graph = _export(tmp_path, tiny_weights, overrides)
    common = ["--config-file", DEMO_CONFIG, "--task", "test", f"data.data_root={demo_root}",
              *TINY_OVERRIDES, *overrides]
    runs = {}
    for name, backend in (("jittor", ["--load-from", tiny_weights]),
                          ("onnx", ["--backend", "onnx", "--onnx", graph])):
        out = _run_net(*common, *backend, "--work-dir", str(tmp_path / name),
                       "--save-dir", str(tmp_path / name / "pred"))
        pngs = sorted((tmp_path / name / "pred").glob("*.png"))
        runs[name] = (out.stdout.strip().splitlines()[-1],
                      np.load(tmp_path / name / "confusion_matrix.npy"),
                      {p.name: cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in pngs})
    (line, confusion, maps), (onnx_line, onnx_confusion, onnx_maps) = runs["jittor"], runs["onnx"]
    assert line.startswith("aAcc") or "mIoU" in line, line
    assert onnx_line == line
    np.testing.assert_array_equal(onnx_confusion, confusion)
    assert sorted(maps) == sorted(onnx_maps) and len(maps) == 2
    for name in maps:
        np.testing.assert_array_equal(onnx_maps[name], maps[name], err_msg=name)


def test_run_net_onnx_backend_refuses_bad_flags(tmp_path):
    common = ["--config-file", DEMO_CONFIG, "--work-dir", str(tmp_path)]
    for extra, needle in ((["--task", "val", "--backend", "onnx"], "go together"),
                          (["--task", "train", "--backend", "onnx", "--onnx", "x.onnx"],
                           "use it with --task val"),
                          (["--task", "val", "--backend", "onnx", "--onnx",
                            str(tmp_path / "missing.onnx")], "not found; export one")):
        out = _run_net(*common, *extra, expect=1)
        last = out.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last, out.stderr[-2000:]
