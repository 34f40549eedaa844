"""jseg.apis and tools/demo.py: input types, outputs at the original size, bad inputs."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES
from jseg.apis import inference_model, init_model, load_rgb, show_result
from jseg.config import load_config
from jseg.data.datasets import DataError


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny model's freshly initialised weights, saved as a checkpoint file."""
    import jittor as jt
    from jseg.engine.checkpoint import write_checkpoint
    from jseg.models import build_model
    jt.set_global_seed(0)
    model = build_model(load_config(DEMO_CONFIG, TINY_OVERRIDES).model)
    path = str(tmp_path_factory.mktemp("w") / "tiny.pkl")
    write_checkpoint(path, {"state_dict": {k: v.numpy() for k, v in model.state_dict().items()}})
    return path


@pytest.fixture(scope="module")
def model(tiny_weights):
    return init_model(load_config(DEMO_CONFIG, TINY_OVERRIDES), tiny_weights, device="cpu")


def test_init_model_is_in_eval_mode_and_loads_strictly(model, tiny_weights):
    assert not model.is_training()
    from jseg.engine.checkpoint import WeightsMismatchError
    with pytest.raises(WeightsMismatchError, match="The file has 6 classes and the config 5"):
        five = ["model.decode_head.num_classes=5", "data.classes=[a,b,c,d,e]", "data.palette=null"]
        init_model(load_config(DEMO_CONFIG, TINY_OVERRIDES + five), tiny_weights)


def test_path_array_and_list_inputs_agree(model, demo_root):
    import jittor as jt
    path = os.path.join(demo_root, "images", "validation", "demo_00000.jpg")
    rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
    jt.set_global_seed(1)
    by_path = inference_model(model, path)
    jt.set_global_seed(1)
    by_array = inference_model(model, rgb)
    jt.set_global_seed(1)
    as_list = inference_model(model, [path, rgb], return_probs=True)
    assert by_path["pred"].shape == rgb.shape[:2]
    np.testing.assert_array_equal(by_path["pred"], by_array["pred"])
    assert len(as_list) == 2 and as_list[0]["probs"].shape == (6,) + rgb.shape[:2]
    np.testing.assert_allclose(as_list[0]["probs"].sum(0), 1.0, atol=1e-5)
    assert by_path["pred"].max() < 6


def test_grey_and_rgba_are_converted_with_a_warning(caplog):
    grey = np.full((5, 7), 9, np.uint8)
    rgba = np.zeros((5, 7, 4), np.uint8)
    with caplog.at_level("WARNING"):
        assert load_rgb(grey).shape == (5, 7, 3)
        assert load_rgb(rgba).shape == (5, 7, 3)
    assert "grey image" in caplog.text and "alpha channel dropped" in caplog.text
    with pytest.raises(ValueError, match="uint8"):
        load_rgb(np.zeros((5, 7, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        load_rgb(np.zeros((5, 7, 5), np.uint8))


def test_missing_and_non_image_files(tmp_path):
    with pytest.raises(DataError, match="nope.jpg"):
        load_rgb(str(tmp_path / "nope.jpg"))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DataError, match="notes.jpg"):
        load_rgb(str(text))


def test_image_larger_than_the_test_scale_is_resized_back(model):
    big = np.random.default_rng(0).integers(0, 255, (150, 200, 3), dtype=np.uint8)
    assert inference_model(model, big)["pred"].shape == (150, 200)


def test_show_result_draws_overlay_and_legend(model, tmp_path):
    img = np.full((48, 64, 3), 100, np.uint8)
    pred = np.zeros((48, 64), np.int64)
    pred[:, 32:] = 2
    out = tmp_path / "o.jpg"
    drawn = show_result(img, {"pred": pred}, model=model, out_file=str(out))
    assert drawn.shape[0] > 48 and drawn.shape[1] == 64  # legend strip below the image
    assert os.path.exists(out)
    plain = show_result(img, pred, palette=[[255, 0, 0]] * 6, legend=False, opacity=1.0)
    assert plain.shape == (48, 64, 3) and tuple(plain[0, 0]) == (255, 0, 0)


def test_demo_tool_on_a_folder_skips_a_bad_file(demo_root, tiny_weights, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = os.path.join(demo_root, "images", "validation")
    for name in sorted(os.listdir(src)):
        (folder / name).write_bytes(open(os.path.join(src, name), "rb").read())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), str(folder),
                          "--config-file", DEMO_CONFIG, "--checkpoint", tiny_weights,
                          "--out-dir", str(tmp_path / "out"), *TINY_OVERRIDES_ARGS()],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "skipped" in out.stderr and "broken.png" in out.stderr, out.stderr[-2000:]
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["demo_00000.png", "demo_00000_overlay.jpg",
                       "demo_00001.png", "demo_00001_overlay.jpg"], written
    assert "2 of 3 images written" in out.stdout, out.stdout


def test_demo_tool_empty_folder_and_missing_input(tiny_weights, tmp_path):
    for target, needle in ((tmp_path, "no images"), (tmp_path / "x.jpg", "not found")):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), str(target),
                              "--config-file", DEMO_CONFIG, "--checkpoint", tiny_weights,
                              "--out-dir", str(tmp_path / "o")],
                             capture_output=True, text=True, cwd=ROOT, timeout=600)
        assert out.returncode == 1 and needle in out.stderr, out.stderr[-1000:]


def TINY_OVERRIDES_ARGS():
    return ["--cfg-options", *TINY_OVERRIDES]
