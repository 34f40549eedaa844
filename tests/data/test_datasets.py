"""jseg.data.datasets: each benchmark reads a tiny tree in its real layout; bad data fails clearly."""
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from jseg.config import load_config
from jseg.data.datasets import DATASETS, DataError, SegDataset, build_dataset, dataset_settings
from jseg.data.palettes import CLASSES, PALETTES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = os.path.join(ROOT, "configs", "_base_", "datasets")
H, W = 6, 8


def image(seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def write_img(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ext = os.path.splitext(path)[1]
    params = [cv2.IMWRITE_JPEG_QUALITY, 100] if ext == ".jpg" else []
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), params)


def write_label(path, seg, palette=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    im = Image.fromarray(np.asarray(seg, np.uint8), mode="L")
    if palette:  # VOC style: an indexed PNG whose colours are not the ids
        im = im.convert("P")
        im.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, i)])
    im.save(str(path))


def label(values, h=H, w=W):
    seg = np.zeros((h, w), np.uint8)
    flat = seg.reshape(-1)
    flat[:len(values)] = values
    return seg


def data_cfg(base, root, *overrides):
    return load_config(os.path.join(BASE, base), [f"data.data_root={root}", *overrides]).data


# ---------------------------------------------------------------------------
# Tables.

def test_table_matches_mmseg_facts():
    expect = {"ade20k": (150, ".jpg", ".png", True),
              "cityscapes": (19, "_leftImg8bit.png", "_gtFine_labelTrainIds.png", False),
              "voc_aug": (21, ".jpg", ".png", False),
              "coco_stuff164k": (171, ".jpg", "_labelTrainIds.png", False),
              "pascal_context59": (59, ".jpg", ".png", True),
              "isaid": (16, ".png", "_instance_color_RGB.png", False)}
    for name, (n, img_sfx, seg_sfx, rzl) in expect.items():
        info = DATASETS[name]
        got = (len(info.classes), info.img_suffix, info.seg_map_suffix, info.reduce_zero_label)
        assert got == (n, img_sfx, seg_sfx, rzl), f"{name}: {got}"
        assert len(PALETTES[name]) == n and len(CLASSES[name]) == n
        assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in PALETTES[name])
    assert CLASSES["ade20k"][:3] == ("wall", "building", "sky") and CLASSES["ade20k"][-1] == "flag"
    assert CLASSES["cityscapes"][0] == "road" and PALETTES["cityscapes"][0] == (128, 64, 128)
    assert CLASSES["voc_aug"][0] == "background" and CLASSES["isaid"][-1] == "Harbor"
    assert CLASSES["pascal_context59"][::58] == ("aeroplane", "wood")


def test_settings_resolve_defaults_and_overrides(tmp_path):
    cfg = data_cfg("ade20k.yaml", tmp_path)
    s = dataset_settings(cfg)
    assert (s["img_suffix"], s["seg_map_suffix"], s["reduce_zero_label"]) == (".jpg", ".png", True)
    cfg2 = data_cfg("ade20k.yaml", tmp_path, "data.reduce_zero_label=false", "data.img_suffix=.png")
    s2 = dataset_settings(cfg2)
    assert (s2["img_suffix"], s2["reduce_zero_label"]) == (".png", False)
    with pytest.raises(DataError, match="only renaming"):
        dataset_settings(data_cfg("ade20k.yaml", tmp_path, "data.classes=[a, b]"))
    with pytest.raises(DataError, match="needs data.classes"):  # (load_config refuses it too)
        dataset_settings(dict(data_cfg("ade20k.yaml", tmp_path), type="custom"))


# ---------------------------------------------------------------------------
# Each benchmark in its own layout.

def test_ade20k_scan_and_reduce_zero_label(tmp_path):
    solid = np.zeros((H, W, 3), np.uint8) + np.array([200, 30, 90], np.uint8)
    for name in ["ADE_train_2", "ADE_train_1"]:
        write_img(tmp_path / "images/training" / f"{name}.jpg", solid)
        write_label(tmp_path / "annotations/training" / f"{name}.png", label([0, 1, 150, 255, 2]))
    ds = build_dataset(data_cfg("ade20k.yaml", tmp_path), "train")
    assert len(ds) == 2 and ds.num_classes == 150
    assert [os.path.basename(p) for p, _ in ds.samples] == ["ADE_train_1.jpg", "ADE_train_2.jpg"]
    s = ds[0]
    assert s["img"].shape == (H, W, 3) and s["img"].dtype == np.uint8
    assert s["seg"].reshape(-1)[:5].tolist() == [255, 0, 149, 255, 1], s["seg"].reshape(-1)[:5]
    assert s["ori_shape"] == (H, W)
    assert s["seg_path"].endswith("annotations/training/ADE_train_1.png"), s["seg_path"]
    err = abs(s["img"].astype(int) - solid).max()
    assert err <= 3, f"RGB order, JPEG quality 100: max error {err}"


def test_to_rgb_false_gives_bgr(tmp_path):
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 250  # red in RGB
    write_img(tmp_path / "images/training/a.png", img)
    write_label(tmp_path / "annotations/training/a.png", label([1]))
    cfg = data_cfg("ade20k.yaml", tmp_path, "data.img_suffix=.png")
    assert build_dataset(cfg, "train")[0]["img"][0, 0].tolist() == [250, 0, 0]
    cfg = data_cfg("ade20k.yaml", tmp_path, "data.img_suffix=.png", "data.to_rgb=false")
    assert build_dataset(cfg, "train")[0]["img"][0, 0].tolist() == [0, 0, 250]


def test_cityscapes_recursive_city_folders(tmp_path):
    for city, frame in [("zurich", "000001"), ("aachen", "000002"), ("aachen", "000001")]:
        stem = f"{city}_{frame}_000019"
        write_img(tmp_path / "leftImg8bit/val" / city / f"{stem}_leftImg8bit.png", image())
        gt = tmp_path / "gtFine/val" / city
        write_label(gt / f"{stem}_gtFine_labelTrainIds.png", label([0, 18, 255]))
        write_label(gt / f"{stem}_gtFine_labelIds.png", label([33]))  # not ours: ignored
        write_img(gt / f"{stem}_gtFine_color.png", image())
    ds = build_dataset(data_cfg("cityscapes_1024x1024.yaml", tmp_path), "val")
    names = [os.path.relpath(p, ds.img_dir) for p, _ in ds.samples]
    assert names == ["aachen/aachen_000001_000019_leftImg8bit.png",
                     "aachen/aachen_000002_000019_leftImg8bit.png",
                     "zurich/zurich_000001_000019_leftImg8bit.png"], names
    assert ds[2]["seg"].reshape(-1)[:3].tolist() == [0, 18, 255]
    assert ds[2]["seg_path"].endswith("zurich/zurich_000001_000019_gtFine_labelTrainIds.png")


def test_voc_aug_pairs_ann_dirs_with_split_files(tmp_path):
    write_img(tmp_path / "JPEGImages/2007_000032.jpg", image(0))
    write_img(tmp_path / "JPEGImages/2008_000001.jpg", image(1))
    write_img(tmp_path / "JPEGImages/2009_000002.jpg", image(2))
    write_label(tmp_path / "SegmentationClass/2007_000032.png", label([0, 15, 255]), palette=True)
    write_label(tmp_path / "SegmentationClassAug/2008_000001.png", label([20, 1]))
    sets = tmp_path / "ImageSets/Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n")
    (sets / "aug.txt").write_text("2008_000001\n\n")
    (sets / "val.txt").write_text("2007_000032\n")
    ds = build_dataset(data_cfg("voc_aug.yaml", tmp_path), "train")
    assert len(ds) == 2 and ds.num_classes == 21
    assert ds[0]["seg"].reshape(-1)[:3].tolist() == [0, 15, 255], "palette PNG gives indices"
    assert ds[1]["seg"].reshape(-1)[:2].tolist() == [20, 1]
    assert "SegmentationClassAug" in ds[1]["seg_path"]
    assert len(build_dataset(data_cfg("voc_aug.yaml", tmp_path), "val")) == 1


def test_coco_stuff_label_suffix(tmp_path):
    write_img(tmp_path / "images/val2017/000000000139.jpg", image())
    write_label(tmp_path / "annotations/val2017/000000000139_labelTrainIds.png", label([170, 0]))
    write_label(tmp_path / "annotations/val2017/000000000139.png", label([181]))  # raw ids
    ds = build_dataset(data_cfg("coco_stuff164k.yaml", tmp_path), "val")
    assert len(ds) == 1 and ds[0]["seg"].reshape(-1)[:2].tolist() == [170, 0]


def test_pascal_context59_split_and_reduce_zero_label(tmp_path):
    write_img(tmp_path / "JPEGImages/2008_000002.jpg", image())
    write_label(tmp_path / "SegmentationClassContext/2008_000002.png", label([0, 1, 59]))
    sets = tmp_path / "ImageSets/SegmentationContext"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2008_000002\n")
    ds = build_dataset(data_cfg("pascal_context59.yaml", tmp_path), "train")
    assert ds[0]["seg"].reshape(-1)[:3].tolist() == [255, 0, 58]


def test_isaid_png_images(tmp_path):
    stem = "P0000_0_896_0_896"
    write_img(tmp_path / f"img_dir/train/{stem}.png", image())
    write_label(tmp_path / f"ann_dir/train/{stem}_instance_color_RGB.png", label([15, 0]))
    ds = build_dataset(data_cfg("isaid.yaml", tmp_path), "train")
    assert len(ds) == 1 and ds[0]["seg"].reshape(-1)[:2].tolist() == [15, 0]
    np.testing.assert_array_equal(ds[0]["img"], image(), err_msg="PNG is lossless")


def test_custom_images_and_labels_in_one_folder(tmp_path):
    for n in ("a", "b"):
        write_img(tmp_path / f"all/{n}.png", image())
        write_label(tmp_path / f"all/{n}_mask.png", label([1]))
    ds = SegDataset(str(tmp_path), "all", "all", classes=("x", "y"), img_suffix=".png",
                    seg_map_suffix="_mask.png")
    assert [os.path.basename(p) for p, _ in ds.samples] == ["a.png", "b.png"]
    assert len(ds.palette) == 2
    no_labels = SegDataset(str(tmp_path), "all", None, classes=("x",), img_suffix="_mask.png")
    assert no_labels[0]["seg"] is None and len(no_labels) == 2


# ---------------------------------------------------------------------------
# Bad input: one clear DataError each.

def ade_tree(tmp_path, n=2):
    for i in range(n):
        write_img(tmp_path / f"images/training/{i}.jpg", image(i))
        write_label(tmp_path / f"annotations/training/{i}.png", label([1, 2]))
    return data_cfg("ade20k.yaml", tmp_path)


def test_missing_root_folder_and_split(tmp_path):
    with pytest.raises(DataError, match=r"data root .*missing.* does not exist.*ADEChallenge"):
        build_dataset(data_cfg("ade20k.yaml", tmp_path / "missing"), "train")
    cfg = ade_tree(tmp_path)
    with pytest.raises(DataError, match=r"image folder \(img_dir\) .*images/validation"):
        build_dataset(cfg, "val")
    cfg = data_cfg("ade20k.yaml", tmp_path, "data.train.split=lists/train.txt")
    with pytest.raises(DataError, match=r"split file .*lists/train.txt does not exist"):
        build_dataset(cfg, "train")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/train.txt").write_text("0\nnot_there\n")
    with pytest.raises(DataError, match=r"2 file\(s\) named in split file .*not_there.jpg"):
        build_dataset(cfg, "train")


def test_unpaired_files_are_listed(tmp_path):
    cfg = ade_tree(tmp_path, 3)
    os.remove(tmp_path / "annotations/training/1.png")
    write_label(tmp_path / "annotations/training/extra.png", label([1]))
    with pytest.raises(DataError) as e:
        build_dataset(cfg, "train")
    msg = str(e.value)
    assert "1 image(s) without a label" in msg and "images/training/1.jpg" in msg, msg
    assert "1 label(s) without an image" in msg and "annotations/training/extra.png" in msg, msg


def test_size_mismatch(tmp_path):
    cfg = ade_tree(tmp_path)
    write_label(tmp_path / "annotations/training/1.png", label([1], h=H + 1))
    ds = build_dataset(cfg, "train")
    ds[0]
    with pytest.raises(DataError, match=r"label .*1.png is 7x8 .* image .*1.jpg is 6x8"):
        ds[1]


def test_unreadable_and_truncated_files(tmp_path):
    cfg = ade_tree(tmp_path, 4)
    (tmp_path / "images/training/0.jpg").write_bytes(b"this is not a jpeg")
    big = image(5, 64, 64)
    write_img(tmp_path / "images/training/1.jpg", big)
    write_label(tmp_path / "annotations/training/1.png", label([1], 64, 64))
    data = (tmp_path / "images/training/1.jpg").read_bytes()
    (tmp_path / "images/training/1.jpg").write_bytes(data[:len(data) // 2])
    png = (tmp_path / "annotations/training/2.png").read_bytes()
    (tmp_path / "annotations/training/2.png").write_bytes(png[:len(png) - 20])
    (tmp_path / "images/training/3.jpg").write_bytes(b"")
    ds = build_dataset(cfg, "train")
    with pytest.raises(DataError, match=r"cannot decode image .*0.jpg"):
        ds[0]
    with pytest.raises(DataError, match=r"truncated image .*1.jpg"):
        ds[1]
    with pytest.raises(DataError, match=r"truncated image .*2.png"):
        ds[2]
    with pytest.raises(DataError, match=r"empty image file .*3.jpg"):
        ds[3]
    assert [i for i, _ in ds.check()] == [0, 1, 2, 3]


def test_trailing_bytes_after_jpeg_end_are_fine(tmp_path):
    cfg = ade_tree(tmp_path, 1)
    path = tmp_path / "images/training/0.jpg"
    path.write_bytes(path.read_bytes() + b"\0" * 2000)
    assert build_dataset(cfg, "train")[0]["img"].shape == (H, W, 3)


def test_label_values_out_of_range(tmp_path):
    cfg = ade_tree(tmp_path)
    write_label(tmp_path / "annotations/training/1.png", label([1, 151, 200]))
    ds = build_dataset(cfg, "train")
    with pytest.raises(DataError, match=r"value\(s\) 150, 199 after reduce_zero_label .* 0\.\.149"):
        ds[1]


def test_colour_label_is_refused(tmp_path):
    cfg = ade_tree(tmp_path)
    write_img(tmp_path / "annotations/training/1.png", image())
    with pytest.raises(DataError, match=r"mode RGB .*single-channel"):
        build_dataset(cfg, "train")[1]


def test_empty_image_folder(tmp_path):
    (tmp_path / "images/training").mkdir(parents=True)
    (tmp_path / "annotations/training").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no images ending with '.jpg'"):
        build_dataset(data_cfg("ade20k.yaml", tmp_path), "train")


def test_symlinked_folders_are_followed_once(tmp_path, caplog):
    # Real data in images/training/{a,b}; "b/loop" points back at an ancestor, "again" at a
    # folder already scanned; "linked" and "a_deep" at data outside the tree (followed, as
    # datasets often are), "linked_twice" a second time at it. "a_deep" is met first, so the
    # walk of "linked" must not enter its real subfolder "deep" again.
    outside = tmp_path / "elsewhere"
    for rel, seed in [("a/0", 0), ("a/1", 1), ("b/2", 2)]:
        write_img(tmp_path / "images/training" / f"{rel}.jpg", image(seed))
    write_img(outside / "3.jpg", image(3))
    write_img(outside / "deep/4.jpg", image(4))
    img_dir = tmp_path / "images/training"
    links = {"b/loop": img_dir, "again": img_dir / "a", "a_deep": outside / "deep",
             "linked": outside, "linked_twice": outside}
    for link, target in links.items():
        (img_dir / link).symlink_to(target, target_is_directory=True)
    with caplog.at_level("WARNING", logger="jseg"):
        ds = SegDataset(str(tmp_path), "images/training", classes=("x", "y"))
    names = [os.path.relpath(p, ds.img_dir) for p, _ in ds.samples]
    assert names == ["a/0.jpg", "a/1.jpg", "a_deep/4.jpg", "b/2.jpg", "linked/3.jpg"], names
    skipped = [r.getMessage() for r in caplog.records if "already scanned" in r.getMessage()]
    assert len(skipped) == 4, skipped
    for link, target in [("b/loop", img_dir), ("again", img_dir / "a"),
                         ("linked_twice", outside), ("linked/deep", outside / "deep")]:
        assert any(f"{img_dir / link} -> {target}:" in m for m in skipped), (link, skipped)


def test_symlink_loop_in_images_and_labels_keeps_pairs(tmp_path):
    cfg = ade_tree(tmp_path, 2)
    for sub in ("images/training", "annotations/training"):
        (tmp_path / sub / "loop").symlink_to(tmp_path / sub, target_is_directory=True)
    ds = build_dataset(cfg, "train")
    assert len(ds) == 2, [p for p, _ in ds.samples][:5]


def header_only(kind, width, height):
    """An image file that declares width x height; Pillow and OpenCV refuse to write 0 pixels."""
    if kind == "png":
        def chunk(tag, data):
            return (struct.pack(">I", len(data)) + tag + data
                    + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    if kind == "bmp":
        info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
        return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info
    ok, jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    jpeg = bytearray(jpeg.tobytes())
    sof = jpeg.find(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


@pytest.mark.parametrize("kind, width, height", [("png", 0, 0), ("png", 0, 7), ("png", 7, 0),
                                                 ("bmp", 0, 0), ("jpg", 0, 0), ("jpg", 7, 0)])
def test_image_without_pixels(tmp_path, kind, width, height):
    cfg = ade_tree(tmp_path, 2)
    (tmp_path / "images/training/1.jpg").write_bytes(header_only(kind, width, height))
    why = rf"image .*1.jpg has no pixels: .* {width}x{height} \(width x height\)"
    with pytest.raises(DataError, match=why):
        build_dataset(cfg, "train")[1]


def test_one_row_image_reads(tmp_path):
    cfg = ade_tree(tmp_path, 1)
    write_img(tmp_path / "images/training/0.jpg", image(0, 1, 300))
    write_label(tmp_path / "annotations/training/0.png", label([1], 1, 300))
    assert build_dataset(cfg, "train")[0]["img"].shape == (1, 300, 3)
