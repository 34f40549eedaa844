"""jseg.apis and tools/demo.py: input types, outputs at the original size, bad inputs.

Also jseg.utils.atomic.write_image, through which both write their images.
"""
import errno
import importlib.util
import os
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES
from jseg.apis import inference_model, init_model, load_rgb, show_result
from jseg.config import load_config
from jseg.data.datasets import DataError
from jseg.utils.atomic import write_image




@pytest.fixture(scope="module")
def model(tiny_weights):
    return init_model(load_config(DEMO_CONFIG, TINY_OVERRIDES), tiny_weights, device="cpu")


def test_init_model_is_in_eval_mode_and_loads_strictly(model, tiny_weights):
    assert not model.is_training()
    from jseg.checkpoint import WeightsMismatchError
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


def test_one_row_image_segments(model):
    # keep-ratio into test_scale (64, 48) scales 1 row by 64/5000: mmcv's rounding gives 0 rows
    row = np.random.default_rng(0).integers(0, 255, (1, 5000, 3), dtype=np.uint8)
    pred = inference_model(model, row)["pred"]
    assert pred.shape == (1, 5000), pred.shape


def png_without_pixels():
    """A PNG declaring 0x0 pixels, made by hand: Pillow and OpenCV refuse to write one."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_image_file_without_pixels_is_a_data_error(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(png_without_pixels())
    with pytest.raises(DataError, match=r"empty.png has no pixels"):
        load_rgb(str(path))


def run_demo(folder, weights, out_dir):
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), str(folder),
                           "--config-file", DEMO_CONFIG, "--checkpoint", weights,
                           "--out-dir", str(out_dir), "--device", "cpu", *TINY_OVERRIDES_ARGS()],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_demo_tool_reports_an_image_without_pixels_and_segments_a_one_row_image(
        demo_root, tiny_weights, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a_empty.png").write_bytes(png_without_pixels())  # sorted first: must not stop
    row = np.random.default_rng(0).integers(0, 255, (1, 300, 3), dtype=np.uint8)
    assert cv2.imwrite(str(folder / "b_row.png"), row)
    src = os.path.join(demo_root, "images", "validation", "demo_00000.jpg")
    (folder / "c_normal.jpg").write_bytes(open(src, "rb").read())
    out = run_demo(folder, tiny_weights, tmp_path / "out")
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    about_empty = [line for line in out.stderr.splitlines() if "a_empty.png" in line]
    assert len(about_empty) == 1 and "has no pixels" in about_empty[0], out.stderr[-2000:]
    written = sorted(os.listdir(tmp_path / "out"))
    assert written == ["b_row.png", "b_row_overlay.jpg", "c_normal.png",
                       "c_normal_overlay.jpg"], written
    labels = cv2.imread(str(tmp_path / "out" / "b_row.png"), cv2.IMREAD_UNCHANGED)
    assert labels.shape == (1, 300), labels.shape
    assert "2 of 3 images written" in out.stdout, out.stdout


# ---------------------------------------------------------------------------
# Writing images: jseg.utils.atomic.write_image, and what the demo does when it fails.

class FullDisk:
    """Wraps a file from os.fdopen: writes half of the data, then fails as a full disk does."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(bytes(data)[:len(data) // 2])
        self.f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


@pytest.fixture
def full_disk(monkeypatch):
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))


def test_write_image_round_trip(tmp_path):
    bgr = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    write_image(tmp_path / "c.png", bgr)
    write_image(str(tmp_path / "g.png"), bgr[..., 0])
    write_image(tmp_path / "c.jpg", bgr)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "c.png")), bgr)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED),
                                  bgr[..., 0])
    assert cv2.imread(str(tmp_path / "c.jpg")).shape == (5, 7, 3)
    assert sorted(os.listdir(tmp_path)) == ["c.jpg", "c.png", "g.png"], os.listdir(tmp_path)


@pytest.mark.parametrize("name, image, why", [
    ("x.xyz", np.zeros((4, 4, 3), np.uint8), "no writer for the suffix '.xyz'"),
    ("x", np.zeros((4, 4, 3), np.uint8), "no writer for the suffix ''"),
    ("x.png", np.zeros((0, 0, 3), np.uint8), "has no pixels"),
    ("x.jpg", np.zeros((4, 4, 5), np.uint8), "cannot encode"),  # 5 channels
])
def test_write_image_refuses_what_it_cannot_encode(tmp_path, name, image, why):
    with pytest.raises(OSError, match=rf"{tmp_path / name}.*{why}"):
        write_image(tmp_path / name, image)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


def test_write_image_on_a_full_disk_keeps_the_old_file(tmp_path, full_disk):
    old = tmp_path / "old.png"
    old.write_bytes(b"the previous image")
    image = np.full((64, 64, 3), 7, np.uint8)
    for path in (old, tmp_path / "new.png"):
        with pytest.raises(OSError, match=str(path)) as info:
            write_image(path, image)
        assert info.value.errno == errno.ENOSPC, info.value
    assert old.read_bytes() == b"the previous image"
    assert os.listdir(tmp_path) == ["old.png"], os.listdir(tmp_path)  # no new, no temp file


def test_show_result_writes_through_write_image(tmp_path, full_disk):
    out = tmp_path / "o.jpg"
    out.write_bytes(b"previous overlay")
    with pytest.raises(OSError, match=str(out)):
        show_result(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64),
                    palette=[[0, 0, 0]], out_file=str(out))
    assert out.read_bytes() == b"previous overlay" and os.listdir(tmp_path) == ["o.jpg"]


def test_demo_tool_stops_with_one_line_when_outputs_cannot_be_written(
        demo_root, tiny_weights, tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("demo_tool", os.path.join(ROOT, "tools",
                                                                           "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "demo_00000_overlay.jpg").write_bytes(b"from an earlier run")
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    code = demo.main([os.path.join(demo_root, "images", "validation"), "--config-file",
                      DEMO_CONFIG, "--checkpoint", tiny_weights, "--out-dir", str(out_dir),
                      "--device", "cpu", *TINY_OVERRIDES_ARGS()])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1, err
    assert len(errors) == 1 and str(out_dir / "demo_00000_overlay.jpg") in errors[0] \
        and "No space left on device" in errors[0], err
    assert "demo_00001" not in err, "the run stops at the first write that fails"
    assert os.listdir(out_dir) == ["demo_00000_overlay.jpg"], os.listdir(out_dir)
    assert (out_dir / "demo_00000_overlay.jpg").read_bytes() == b"from an earlier run"


def TINY_OVERRIDES_ARGS():
    return ["--cfg-options", *TINY_OVERRIDES]
