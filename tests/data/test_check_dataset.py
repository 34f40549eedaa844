"""jseg.data.check and tools/check_dataset.py: a clean tiny tree passes; each defect of a prepared
dataset is caught with its diagnosis, in the printed report and the exit code."""
import io
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from jseg.config import load_config
from jseg.data.check import check_dataset
from jseg.data.datasets import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "check_dataset.py")
BASE = os.path.join(ROOT, "configs", "_base_", "datasets")
H, W = 8, 8


def write_img(path, h=H, w=W, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)


def write_label(path, seg, mode="L"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(seg, np.uint8), mode="L")
    if mode == "P":  # VOC style: an indexed PNG whose indices are the ids
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in (i * 40 % 256, i * 90 % 256, i)])
    im.save(str(path))


def label(values, h=H, w=W):
    """An (h, w) label cycling through `values`."""
    return np.resize(np.asarray(values, np.uint8), h * w).reshape(h, w)


CLASSES = ["sky", "road", "car"]


def custom_tree(root, n_train=4, n_val=2):
    """A clean 3-class tree: every label holds 0, 1, 2 and a few ignored pixels."""
    for split, n in (("training", n_train), ("validation", n_val)):
        for i in range(n):
            write_img(root / f"images/{split}/{i}.jpg", seed=i)
            write_label(root / f"annotations/{split}/{i}.png", label([0, 1, 2, 0, 255, 1, 0]))
    cfg = root / "custom.yaml"
    cfg.write_text(
        "data:\n  type: custom\n"
        f"  data_root: {root}\n  classes: {CLASSES}\n  reduce_zero_label: false\n"
        "  train: {img_dir: images/training, ann_dir: annotations/training}\n"
        "  val: {img_dir: images/validation, ann_dir: annotations/validation}\n")
    return str(cfg)


def check(config, *overrides, splits=("train", "val"), workers=1):
    return check_dataset(load_config(config, list(overrides)), splits, workers)


def cli(*args):
    return subprocess.run([sys.executable, TOOL, "--no-progress", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def findings(report, level):
    return "\n".join(f"{f.split}: {f.text}\n" + "\n".join(f.details)
                     for f in report.findings if f.level == level)


# ---------------------------------------------------------------------------
# A clean tree.

def test_clean_tree_passes_with_class_table(tmp_path):
    config = custom_tree(tmp_path)
    report = check(config)
    text = report.text()
    assert report.findings == [] and report.exit_code == 0, text
    assert text.splitlines()[-1] == "verdict: OK", text
    assert "files: 4 images, 4 labels, 4 pairs; no standard count for custom" in text, text
    assert "image sizes (HxW): 8x8 (4)" in text, text
    # 64 pixels a label, cycling 0 1 2 0 255 1 0: 28 x 0, 18 x 1, 9 x 2, 9 x 255 -> per 4 labels
    train = text.split("[val]")[0]
    rows = {line.split()[1]: line.split()[2:] for line in train.splitlines()
            if line.startswith("    ") and line.split()[0].isdigit()}
    assert rows["sky"] == ["112", "50.9%", "4"] and rows["car"] == ["36", "16.4%", "4"], rows
    assert rows["road"] == ["72", "32.7%", "4"], rows
    assert "label pixels: 256 in 4 labels; ignored (255) 36 (14.1%)" in train, train

    res = cli("--config-file", config, "--workers", "2")
    assert res.returncode == 0 and res.stderr == "", (res.returncode, res.stderr)
    assert res.stdout.splitlines()[-1] == "verdict: OK", res.stdout
    assert res.stdout.strip() == text.replace("dataset check", f"dataset check of {config}", 1), \
        res.stdout


def test_tool_does_not_import_jittor(tmp_path):
    config = custom_tree(tmp_path, 1, 1)
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(TOOL)!r}); import check_dataset; "
            f"rc = check_dataset.main(['--config-file', {config!r}, '--no-progress']); "
            f"print('jittor loaded:', 'jittor' in sys.modules, rc)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.splitlines()[-1] == "jittor loaded: False 0", res.stdout + res.stderr


# ---------------------------------------------------------------------------
# One defect each.

def test_missing_and_extra_labels_are_unpaired(tmp_path):
    config = custom_tree(tmp_path)
    os.remove(tmp_path / "annotations/training/1.png")
    write_label(tmp_path / "annotations/training/extra.png", label([0, 1, 2]))
    report = check(config)
    errors = findings(report, "error")
    assert report.exit_code == 2 and report.text().endswith("verdict: ERRORS (2)"), report.text()
    assert "train: 1 image(s) without a label '<name>.png'" in errors, errors
    assert "images/training/1.jpg" in errors, errors
    assert "train: 1 label(s) without an image '<name>.jpg'" in errors, errors
    assert "annotations/training/extra.png" in errors, errors
    assert "files: 4 images, 4 labels, 3 pairs" in report.text(), report.text()


def test_cityscapes_raw_label_ids(tmp_path):
    # raw gtFine *_labelIds.png (0..33) read as if they were the 19 train ids
    for i in range(3):
        stem = f"aachen/aachen_000000_00001{i}"
        write_img(tmp_path / f"leftImg8bit/train/{stem}_leftImg8bit.png", seed=i)
        write_label(tmp_path / f"gtFine/train/{stem}_gtFine_labelIds.png", label([7, 8, 24, 26, 33]))
    res = cli("--config-file", os.path.join(BASE, "cityscapes_1024x1024.yaml"), "--split", "train",
              f"data.data_root={tmp_path}", "data.seg_map_suffix=_gtFine_labelIds.png")
    out = res.stdout
    assert res.returncode == 2 and out.splitlines()[-1] == "verdict: ERRORS (1)", (res.returncode, out)
    assert "3 of 3 label(s) hold values 24, 26, 33: not a class id 0..18" in out, out
    assert "these are Cityscapes labelIds (0..33, the raw ids)" in out, out
    assert "data.seg_map_suffix is '_gtFine_labelIds.png'" in out, out
    assert f"python tools/dataset_converters/cityscapes.py {tmp_path}" in out, out
    assert os.path.isfile(os.path.join(ROOT, "tools/dataset_converters/cityscapes.py"))
    assert "3 of 2,975 images of the cityscapes train split" in out, out


def test_ade_labels_with_zero_and_reduce_zero_label_off(tmp_path):
    for i in range(3):
        write_img(tmp_path / f"images/training/{i}.jpg", seed=i)
        write_label(tmp_path / f"annotations/training/{i}.png", label([0, 1, 2, 150]))
    ade = os.path.join(BASE, "ade20k.yaml")
    report = check(ade, f"data.data_root={tmp_path}", "data.reduce_zero_label=false",
                   splits=("train",))
    errors = findings(report, "error")
    assert report.exit_code == 2, report.text()
    assert "3 of 3 label(s) hold values 150: not a class id 0..149" in errors, errors
    assert "likely cause: the values run up to 150: ADE20K-style labels (0 = other / " \
           "unlabelled, classes 1..150)" in errors, errors
    assert "fix: data.reduce_zero_label=true" in errors, errors
    # without 150 in the files the values fit, but 0 still is 'other': a warning
    for i in range(3):
        write_label(tmp_path / f"annotations/training/{i}.png", label([0, 1, 2]))
    report = check(ade, f"data.data_root={tmp_path}", "data.reduce_zero_label=false",
                   splits=("train",))
    warnings = findings(report, "warning")
    assert report.exit_code == 0 and not report.errors, report.text()
    assert "data.reduce_zero_label is false, but ade20k labels use 0 for 'other'" in warnings, \
        warnings
    assert "trained as class 0 'wall'" in warnings, warnings
    # with the default (true) the same files are fine apart from the subset warnings
    report = check(ade, f"data.data_root={tmp_path}", splits=("train",))
    assert "reduce_zero_label" not in findings(report, "warning").split("never seen")[0], \
        report.text()


def test_reduce_zero_label_on_for_zero_based_labels(tmp_path):
    for i in range(2):
        stem = f"aachen/a_{i}"
        write_img(tmp_path / f"leftImg8bit/train/{stem}_leftImg8bit.png", seed=i)
        write_label(tmp_path / f"gtFine/train/{stem}_gtFine_labelTrainIds.png",
                    label(list(range(19)) + [255]))
    report = check(os.path.join(BASE, "cityscapes_1024x1024.yaml"), f"data.data_root={tmp_path}",
                   "data.reduce_zero_label=true", splits=("train",))
    warnings = findings(report, "warning")
    assert "data.reduce_zero_label is true, but cityscapes labels use 0 as a class ('road')" \
        in warnings, warnings
    assert "likely cause: with reduce_zero_label the file value 19 is class 18" in warnings, \
        warnings


def test_voc_palette_labels_pass_and_rgb_labels_fail(tmp_path):
    seg_sets = tmp_path / "ImageSets/Segmentation"
    seg_sets.mkdir(parents=True)
    (seg_sets / "train.txt").write_text("a\nb\n")
    (seg_sets / "aug.txt").write_text("c\n")
    for i, name in enumerate("abc"):
        write_img(tmp_path / f"JPEGImages/{name}.jpg", seed=i)
    write_label(tmp_path / "SegmentationClass/a.png", label([0, 1, 15, 255]), mode="P")
    write_label(tmp_path / "SegmentationClass/b.png", label([0, 2, 20, 255]), mode="P")
    write_label(tmp_path / "SegmentationClassAug/c.png", label(range(21)))
    voc = os.path.join(BASE, "voc_aug.yaml")
    report = check(voc, f"data.data_root={tmp_path}", splits=("train",))
    text = report.text()
    assert not report.errors, text
    assert "label files: L (8-bit grey) 1, P (palette: indices are the ids) 2" in text, text
    assert "3 of 10,582 images of the voc_aug train split" in findings(report, "warning"), text

    # b.png re-saved as true colour (what an image editor does to a palette PNG)
    rgb = Image.open(tmp_path / "SegmentationClass/b.png").convert("RGB")
    rgb.save(tmp_path / "SegmentationClass/b.png")
    report = check(voc, f"data.data_root={tmp_path}", splits=("train",))
    errors = findings(report, "error")
    assert report.exit_code == 2, report.text()
    assert "1 label(s) are colour images (mode RGB), not single-channel class ids" in errors, errors
    assert "SegmentationClass/b.png" in errors, errors
    assert "VOC's SegmentationClass PNGs are palette images (mode P)" in errors, errors


def test_colour_masks_of_the_dataset_palette(tmp_path):
    config = custom_tree(tmp_path)
    ids = label([0, 1, 2])
    palette = np.array([[128, 0, 0], [0, 128, 0], [0, 0, 128]], np.uint8)
    Image.fromarray(palette[ids], "RGB").save(tmp_path / "annotations/training/2.png")
    Image.fromarray(np.stack([ids] * 3, -1), "RGB").save(tmp_path / "annotations/training/3.png")
    report = check(config, f"data.palette={palette.tolist()}")
    errors = findings(report, "error")
    assert "2 label(s) are colour images (mode RGB)" in errors, errors
    assert "annotations/training/2.png" in errors and "training/3.png" in errors, errors
    assert "1 of them are colour-coded with the custom palette (100% of their pixels)" in errors, \
        errors
    assert "1 of them have three equal channels: class ids saved as colour" in errors, errors
    assert "jseg.data.converters.colours_to_ids" in errors, errors


def test_size_mismatch_and_exif_orientation(tmp_path):
    config = custom_tree(tmp_path)
    write_label(tmp_path / "annotations/training/1.png", label([0, 1, 2], h=H + 1))
    # an image stored 4 high x 8 wide with EXIF orientation 6: OpenCV decodes it 8 x 4
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(tmp_path / "images/training/2.jpg",
                                                       exif=exif.tobytes())
    write_label(tmp_path / "annotations/training/2.png", label([0, 1, 2], h=4, w=8))
    assert cv2.imread(str(tmp_path / "images/training/2.jpg")).shape[:2] == (8, 4)
    report = check(config)
    errors = findings(report, "error")
    assert report.exit_code == 2 and len(report.errors) == 1, report.text()
    assert "train: 2 label(s) differ in size from their image" in errors, errors
    assert "training/1.png is 9x8 (HxW), its image" in errors and "1.jpg is 8x8" in errors, errors
    assert "training/2.png is 4x8 (HxW)" in errors and "2.jpg is 8x4" in errors, errors
    assert "EXIF orientation (e.g." in errors and "2.jpg: 6)" in errors, errors


def test_unreadable_files(tmp_path):
    config = custom_tree(tmp_path)
    (tmp_path / "images/training/0.jpg").write_bytes(b"this is not a jpeg")
    write_img(tmp_path / "images/training/1.jpg", 64, 64)
    data = (tmp_path / "images/training/1.jpg").read_bytes()
    (tmp_path / "images/training/1.jpg").write_bytes(data[:len(data) // 2])
    png = (tmp_path / "annotations/training/2.png").read_bytes()
    (tmp_path / "annotations/training/2.png").write_bytes(png[:len(png) - 20])
    (tmp_path / "images/training/3.jpg").write_bytes(b"")
    report = check(config)
    errors = findings(report, "error")
    assert report.exit_code == 2, report.text()
    assert "train: 4 unreadable file(s)" in errors, errors
    assert "cannot decode image" in errors and "training/0.jpg" in errors, errors
    assert "truncated image" in errors and "training/1.jpg" in errors, errors
    assert "truncated image" in errors and "training/2.png" in errors, errors
    assert "empty image file" in errors and "training/3.jpg" in errors, errors


def test_labels_with_ignored_pixels_only(tmp_path):
    config = custom_tree(tmp_path)
    write_label(tmp_path / "annotations/training/1.png", np.full((H, W), 255))
    report = check(config)
    assert report.exit_code == 0, report.text()
    assert "1 of 4 label(s) hold only the ignore index 255" in findings(report, "warning"), \
        report.text()
    for i in range(4):
        write_label(tmp_path / f"annotations/training/{i}.png", np.full((H, W), 255))
    report = check(config, splits=("train",))
    errors = findings(report, "error")
    assert "all 4 labels hold only the ignore index 255: nothing to learn" in errors, errors


def test_empty_root_and_bad_command_line_exit_1_with_one_line(tmp_path):
    (tmp_path / "images/training").mkdir(parents=True)
    (tmp_path / "images/training/notes.txt").write_text("x")
    ade = os.path.join(BASE, "ade20k.yaml")
    res = cli("--config-file", ade, f"data.data_root={tmp_path}")
    assert res.returncode == 1 and res.stdout == "", (res.returncode, res.stdout)
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(
        f"error: {tmp_path}/images/training holds no images (*.jpg): check data.data_root"), \
        res.stderr
    assert "notes.txt" in res.stderr, res.stderr
    res = cli("--config-file", ade, f"data.data_root={tmp_path}/missing")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert "data root" in res.stderr and "does not exist" in res.stderr, res.stderr
    res = cli("--config-file", ade, "--workers", "0")
    assert res.returncode == 1 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("error: argument --workers"), res.stderr
    with pytest.raises(DataError, match="holds no images"):
        check(ade, f"data.data_root={tmp_path}")


def test_count_against_the_benchmark(tmp_path):
    for i in range(3):
        write_img(tmp_path / f"images/training/{i}.jpg", seed=i)
        write_label(tmp_path / f"annotations/training/{i}.png", label([1, 2, 3]))
    report = check(os.path.join(BASE, "ade20k.yaml"), f"data.data_root={tmp_path}",
                   splits=("train",))
    warnings = findings(report, "warning")
    assert report.exit_code == 0 and not report.errors, report.text()
    assert "train: 3 of 20,210 images of the ade20k train split (20,207 fewer: fine if a " \
           "subset is intended)" in warnings, warnings
    assert "147 of 150 classes never seen: floor (3), tree (4)" in warnings, warnings
    assert report.text().endswith("verdict: WARNINGS (2)"), report.text()


def test_workers_1_and_2_give_the_same_report(tmp_path):
    config = custom_tree(tmp_path, n_train=12)
    os.remove(tmp_path / "annotations/training/5.png")
    write_label(tmp_path / "annotations/training/7.png", label([0, 1, 7]))
    write_label(tmp_path / "annotations/training/9.png", label([0, 1], h=H + 2))
    (tmp_path / "images/training/10.jpg").write_bytes(b"junk")
    one = check(config, workers=1).text()
    two = check(config, workers=2).text()
    assert one == two, f"workers 1:\n{one}\n\nworkers 2:\n{two}"
    assert "verdict: ERRORS (4)" in one, one


def test_image_size_reads_the_header_only(tmp_path, monkeypatch):
    from jseg.data import check as check_module
    path = tmp_path / "x.jpg"
    write_img(path, 6, 10)
    from PIL import ImageFile
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda *a: pytest.fail("image decoded"))
    assert check_module.image_size(str(path)) == ((6, 10), 1)
    buf = io.BytesIO()
    Image.new("RGB", (10, 6)).save(buf, "PNG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    assert check_module.image_size(str(tmp_path / "x.png")) == ((6, 10), 1)
