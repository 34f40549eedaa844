"""tools/dataset_converters and jseg.data.converters: each converter turns a tiny raw sample, laid
out as the real download, into the layout our configs read; reruns skip finished outputs; a wrong
layout fails with one clear line."""
import importlib.util
import io
import json
import os
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest
from PIL import Image

from jseg.config import load_config
from jseg.data.converters import colours_to_ids, decode_coco_rle, id_lut, is_complete, write_png
from jseg.data.datasets import build_dataset
from jseg.data.palettes import PALETTES

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools", "dataset_converters")
BASE = os.path.join(ROOT, "configs", "_base_", "datasets")
CONVERTERS = ("cityscapes", "voc_aug", "coco_stuff164k", "pascal_context", "isaid")


def load(name):
    """Import tools/dataset_converters/<name>.py as a module (registered, so workers can pickle)."""
    modname = f"_converter_{name}"
    if modname not in sys.modules:
        spec = importlib.util.spec_from_file_location(modname, os.path.join(TOOLS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        spec.loader.exec_module(module)
    return sys.modules[modname]


def run(name, *args):
    return load(name).main([str(a) for a in args])


def read(path):
    """A label PNG as Pillow reads it (as our dataset does)."""
    return np.array(Image.open(path))


def write_image(path, rgb):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), path
    return path


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_bytes(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def snapshot(root):
    """{relative path: (bytes, mtime_ns)} of every file under root."""
    out = {}
    for folder, _, files in os.walk(root):
        for f in files:
            p = os.path.join(folder, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = (fh.read(), os.stat(p).st_mtime_ns)
    return out


def data_cfg(base, root):
    return load_config(os.path.join(BASE, base), [f"data.data_root={root}"]).data


def check_error(capsys, code, *words):
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, f"exit code {code}, stderr {err}"
    assert err and err[-1].startswith("error: "), err
    for w in words:
        assert w in err[-1], f"{w!r} not in {err[-1]!r}"


# ---------------------------------------------------------------------------
# Shared helpers.

def test_id_lut_and_colours_to_ids():
    lut = id_lut({0: 0, 12: 11, 255: 255})
    got = lut[np.array([0, 11, 12, 200, 255], np.uint8)].tolist()
    assert got == [0, 255, 11, 255, 255], got
    rgb = np.array([[[0, 0, 0], [0, 0, 63], [0, 100, 155]], [[1, 2, 3], [0, 127, 255], [0, 0, 63]]],
                   np.uint8)
    ids, unknown = colours_to_ids(rgb, PALETTES["isaid"])
    assert ids.tolist() == [[0, 1, 15], [255, 14, 1]] and unknown == 1, (ids.tolist(), unknown)


# Masks and their COCO RLE strings as pycocotools 2.0.11 encodes them (mask.encode).
RLE_VECTORS = [
    ((6, 5), "7330:N", [(slice(1, 4), slice(1, 3)), (slice(5, 6), slice(4, 5))]),
    ((40, 90), "c2R16" + "0" * 93 + "MPONP12" + "PONP12" * 37 + "POS100",
     [(slice(3, 37), slice(2, 88)), (slice(0, 2), slice(50, 90))]),
]


@pytest.mark.parametrize("size,counts,boxes", RLE_VECTORS)
def test_decode_coco_rle_matches_pycocotools(size, counts, boxes):
    expect = np.zeros(size, bool)
    for box in boxes:
        expect[box] = True
    got = decode_coco_rle({"size": list(size), "counts": counts})
    assert (got == expect).all(), np.argwhere(got != expect)[:5]
    assert (rle_string(expect) == counts), (rle_string(expect), counts)  # the test's encoder too


def test_decode_coco_rle_rejects_wrong_length():
    with pytest.raises(ValueError, match="cover"):
        decode_coco_rle({"size": [3, 3], "counts": [2, 3]})


def test_is_complete_and_atomic_write(tmp_path):
    out = tmp_path / "a" / "x.png"
    write_png(str(out), np.zeros((3, 4), np.uint8))
    assert is_complete(str(out)) and os.listdir(out.parent) == ["x.png"], os.listdir(out.parent)
    data = out.read_bytes()
    out.write_bytes(data[:-5])  # cut short, as a killed non-atomic writer leaves it
    assert not is_complete(str(out)) and not is_complete(str(tmp_path / "missing.png"))


def rle_string(mask):
    """COCO compressed RLE of a bool mask (column-major runs, starting with 0s)."""
    flat = mask.T.reshape(-1)
    counts, value, run = [], False, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    chars = []
    for i, c in enumerate(counts):
        x = c - counts[i - 2] if i > 2 else c
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = x != -1 if ch & 0x10 else x != 0
            chars.append(chr((ch | 0x20 if more else ch) + 48))
    return "".join(chars)


# ---------------------------------------------------------------------------
# --help and errors of every script.

@pytest.mark.parametrize("name", CONVERTERS)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as e:
        run(name, "--help")
    out = capsys.readouterr().out
    assert e.value.code == 0 and "usage:" in out and "Output" in out, out[:300]


@pytest.mark.parametrize("name,args,words", [
    ("cityscapes", ["{t}"], ["gtFine", "does not exist"]),
    ("voc_aug", ["{t}", "{t}/VOCaug"], ["VOC2012", "VOCdevkit"]),
    ("coco_stuff164k", ["{t}"], ["annotations", "stuffthingmaps_trainval2017.zip"]),
    ("pascal_context", ["{t}", "{t}/x.json"], ["VOC2010"]),
    ("isaid", ["{t}", "-o", "{t}/out"], ["train", "does not exist"]),
])
def test_wrong_layout_is_one_line(name, args, words, tmp_path, capsys):
    code = run(name, *[a.format(t=tmp_path) for a in args])
    check_error(capsys, code, *words)


def test_scripts_run_standalone_without_jittor(tmp_path):
    """As a user runs it: a clear line and exit code 1; the converters never import Jittor."""
    proc = subprocess.run([sys.executable, os.path.join(TOOLS, "coco_stuff164k.py"),
                           str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: COCO-Stuff root"), proc.stderr
    code = ("import importlib.util, sys\n"
            f"for n in {CONVERTERS!r}:\n"
            f"    s = importlib.util.spec_from_file_location(n, {TOOLS!r} + '/' + n + '.py')\n"
            "    s.loader.exec_module(importlib.util.module_from_spec(s))\n"
            "print('jittor' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.strip() == "False", (proc.stdout, proc.stderr)


# ---------------------------------------------------------------------------
# Cityscapes.

CITY_H, CITY_W = 8, 16
CITY_SAMPLES = {"train": ["aachen/aachen_000000_000019", "aachen/aachen_000001_000019",
                          "bremen/bremen_000000_000019"],
                "val": ["frankfurt/frankfurt_000000_000294"],
                "test": ["berlin/berlin_000000_000019"]}


def rect(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def make_cityscapes(root):
    objects = [  # drawn in order, later on top
        {"label": "road", "polygon": rect(0, 4, 15, 7)},
        {"label": "sky", "polygon": rect(0, 0, 15, 1)},
        {"label": "car", "polygon": rect(2, 4, 6, 6)},
        {"label": "license plate", "polygon": rect(3, 5, 4, 5)},  # id -1: not drawn
        {"label": "cargroup", "polygon": rect(10, 4, 12, 6)},     # drawn as car
        {"label": "person", "polygon": rect(8, 0, 9, 7), "deleted": 1},
        {"label": "parking", "polygon": rect(14, 6, 15, 7)},      # train id 255
    ]
    for split, names in CITY_SAMPLES.items():
        for i, name in enumerate(names):
            stem = os.path.join(root, "gtFine", split, name)
            os.makedirs(os.path.dirname(stem), exist_ok=True)
            with open(stem + "_gtFine_polygons.json", "w") as f:
                json.dump({"imgHeight": CITY_H, "imgWidth": CITY_W, "objects": objects}, f)
            write_image(stem + "_gtFine_color.png", noise(CITY_H, CITY_W, i))  # other gtFine files
            ids = np.full((CITY_H, CITY_W), 7, np.uint8)
            Image.fromarray(ids).save(stem + "_gtFine_labelIds.png")
            write_image(os.path.join(root, "leftImg8bit", split, name + "_leftImg8bit.png"),
                        noise(CITY_H, CITY_W, i))


def test_cityscapes(tmp_path, capsys):
    pytest.importorskip("cityscapesscripts")
    root = tmp_path / "cityscapes"
    make_cityscapes(root)
    assert run("cityscapes", root, "--nproc", 2) == 0
    assert "5 label maps written, 0 kept" in capsys.readouterr().out
    seg = read(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    assert seg.shape == (CITY_H, CITY_W) and seg.dtype == np.uint8
    # road 0, sky 10, car 13 (also under the undrawn licence plate and for 'cargroup'),
    # parking 255, unlabelled 255, the deleted person not drawn.
    got = [seg[7, 8], seg[0, 3], seg[5, 4], seg[5, 3], seg[5, 11], seg[7, 15], seg[3, 3], seg[3, 8]]
    assert got == [0, 10, 13, 13, 13, 255, 255, 255], got
    assert (root / "train.txt").read_text().split() == CITY_SAMPLES["train"]
    assert (root / "val.txt").read_text().split() == CITY_SAMPLES["val"]
    assert (root / "test.txt").read_text().split() == CITY_SAMPLES["test"]
    ds = build_dataset(data_cfg("cityscapes_1024x1024.yaml", str(root)), "train")
    assert len(ds) == 3 and ds[0]["seg"][0, 3] == 10, ds

    # Restart: a half-written temp file and a cut-short label are redone, the rest kept.
    target = root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png"
    before = snapshot(root)
    (target.parent / f".{target.name}.tmp").write_bytes(b"\x89PNG half")
    target.write_bytes(before[str(target.relative_to(root))][0][:30])
    assert run("cityscapes", root) == 0
    assert "1 label maps written, 4 kept" in capsys.readouterr().out
    after = snapshot(root)
    assert sorted(after) == sorted(before), set(after) ^ set(before)  # the temp file is gone
    for rel, (data, mtime) in before.items():
        assert after[rel][0] == data, rel
        if rel != str(target.relative_to(root)) and not rel.endswith(".txt"):
            assert after[rel][1] == mtime, f"{rel} was rewritten"


def test_cityscapes_errors(tmp_path, capsys, monkeypatch):
    (tmp_path / "gtFine" / "train").mkdir(parents=True)
    check_error(capsys, run("cityscapes", tmp_path), "no *_gtFine_polygons.json")
    make_cityscapes(tmp_path)
    with monkeypatch.context() as m:  # as if not installed
        for name in [n for n in sys.modules if n.startswith("cityscapesscripts.")]:
            m.setitem(sys.modules, name, None)
        m.setitem(sys.modules, "cityscapesscripts", None)
        check_error(capsys, run("cityscapes", tmp_path), "pip install cityscapesscripts")
    pytest.importorskip("cityscapesscripts")
    bad = tmp_path / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_polygons.json"
    bad.write_text(json.dumps({"imgHeight": 2, "imgWidth": 2,
                               "objects": [{"label": "dragon", "polygon": rect(0, 0, 1, 1)}]}))
    check_error(capsys, run("cityscapes", tmp_path), "unknown label 'dragon'", bad.name)


# ---------------------------------------------------------------------------
# Pascal VOC 2012 + SBD.

VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2007_000033"]
SBD_TRAIN, SBD_VAL = ["2007_000032", "2008_000002", "2008_000003"], ["2007_000033", "2008_000007"]


def make_voc(tmp_path):
    savemat = pytest.importorskip("scipy.io").savemat
    devkit, aug = tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOCaug"
    voc = devkit / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (sets / "trainval.txt").write_text("\n".join(VOC_TRAIN + VOC_VAL) + "\n")
    for i, name in enumerate(sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))):
        write_image(voc / "JPEGImages" / f"{name}.jpg", noise(5, 7, i))
    for i, name in enumerate(VOC_TRAIN + VOC_VAL):  # VOC's own palette PNGs, with 255 borders
        seg = np.full((5, 7), 255, np.uint8)
        seg[1:4, 1:6] = 15
        im = Image.fromarray(seg, "L").convert("P")
        im.putpalette([v for k in range(256) for v in (k, 0, 0)])
        os.makedirs(voc / "SegmentationClass", exist_ok=True)
        im.save(voc / "SegmentationClass" / f"{name}.png")
    ds = aug / "dataset"
    (ds / "cls").mkdir(parents=True)
    (ds / "inst").mkdir()
    (ds / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (ds / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        seg = np.zeros((5, 7), np.uint8)
        seg[2, :] = i + 1
        seg[4, 6] = 20
        savemat(ds / "cls" / f"{name}.mat",
                {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros((1, 1), object),
                           "CategoriesPresent": np.array([[i + 1], [20]], np.uint8)}})
        write_image(ds / "img" / f"{name}.jpg", noise(5, 7, i))
    return devkit, aug


def test_voc_aug(tmp_path, capsys):
    devkit, aug = make_voc(tmp_path)
    assert run("voc_aug", devkit, aug) == 0
    out = capsys.readouterr().out
    assert "5 PNGs written, 0 kept" in out and "note: the full" in out, out
    voc = devkit / "VOC2012"
    for i, name in enumerate(SBD_TRAIN + SBD_VAL):
        seg = read(voc / "SegmentationClassAug" / f"{name}.png")
        assert seg.shape == (5, 7) and [seg[2, 3], seg[0, 0], seg[4, 6]] == [i + 1, 0, 20], name
    sets = voc / "ImageSets" / "Segmentation"
    # aug = SBD train + val minus VOC train and val; trainaug = VOC train + SBD minus VOC val.
    assert (sets / "aug.txt").read_text().split() == ["2008_000002", "2008_000003", "2008_000007"]
    assert (sets / "trainaug.txt").read_text().split() == \
        ["2007_000032", "2007_000039", "2008_000002", "2008_000003", "2008_000007"]
    ds = build_dataset(data_cfg("voc_aug.yaml", str(voc)), "train")
    assert len(ds) == 5 and ds[0]["seg"][2, 3] == 15 and ds[2]["seg"][2, 3] == 2, ds.samples

    before = snapshot(devkit)
    assert run("voc_aug", devkit, aug) == 0
    assert "0 PNGs written, 5 kept" in capsys.readouterr().out
    assert snapshot(devkit) == before


def test_voc_aug_errors(tmp_path, capsys, monkeypatch):
    devkit, aug = make_voc(tmp_path)
    check_error(capsys, run("voc_aug", devkit, devkit), "dataset", "benchmark_RELEASE")
    os.remove(aug / "dataset" / "cls" / "2008_000007.mat")
    check_error(capsys, run("voc_aug", devkit, aug), "1 name(s)", "2008_000007")
    (aug / "dataset" / "cls" / "2008_000007.mat").write_bytes(b"not a mat file")
    check_error(capsys, run("voc_aug", devkit, aug), "GTcls.Segmentation", "2008_000007.mat")
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # as if scipy were not installed
    check_error(capsys, run("voc_aug", devkit, aug), "pip install scipy")


# ---------------------------------------------------------------------------
# COCO-Stuff 164k.

def test_coco_stuff164k(tmp_path, capsys):
    root = tmp_path / "coco_stuff164k"
    raw = {"train2017": ["000000000009", "000000000025"], "val2017": ["000000000139"]}
    values = np.array([[0, 10, 11, 12, 90, 91], [181, 182, 254, 255, 44, 100]], np.uint8)
    for split, names in raw.items():
        (root / "annotations" / split).mkdir(parents=True)
        for i, name in enumerate(names):
            write_image(root / "images" / split / f"{name}.jpg", noise(2, 6, i))
            Image.fromarray(values).save(root / "annotations" / split / f"{name}.png")
    assert run("coco_stuff164k", root, "--nproc", 2) == 0
    assert "3 maps written, 0 kept (train2017 2, val2017 1)" in capsys.readouterr().out
    seg = read(root / "annotations/val2017/000000000139_labelTrainIds.png")
    # 0..10 stay, 11 (unused) -> 255, 12 -> 11, 90 (unused) -> 255, 91 -> 80, 181 -> 170,
    # 182 and 254 (outside the table) -> 255, 255 stays, 44 (unused) -> 255, 100 -> 89.
    expect = [[0, 10, 255, 11, 255, 80], [170, 255, 255, 255, 255, 89]]
    assert seg.tolist() == expect, seg.tolist()
    ds = build_dataset(data_cfg("coco_stuff164k.yaml", str(root)), "val")
    assert len(ds) == 1 and ds[0]["seg"].tolist() == expect

    # Restart; a half-written temp file of one output does not count as that output.
    out = root / "annotations/train2017/000000000025_labelTrainIds.png"
    before = snapshot(root)
    os.remove(out)
    (out.parent / f".{out.name}.tmp").write_bytes(b"\x89PNG\r\n")
    assert run("coco_stuff164k", root) == 0
    assert "1 maps written, 2 kept" in capsys.readouterr().out
    after = snapshot(root)
    assert sorted(after) == sorted(before)
    assert all(after[k][0] == before[k][0] for k in before)
    assert after[str(out.relative_to(root).parent / "000000000009_labelTrainIds.png")][1] == \
        before[str(out.relative_to(root).parent / "000000000009_labelTrainIds.png")][1]


# ---------------------------------------------------------------------------
# Pascal Context.

PC_IMAGES = [  # file_name, image_id, phase, (h, w)
    ("2008_000002.jpg", 2008000002, "train", (5, 6)),
    ("2008_000003.jpg", 2008000003, "val", (4, 3)),
    ("2008_000007.jpg", 2008000007, "train", (3, 3)),
]


def make_context(tmp_path, extra_category=None):
    devkit = tmp_path / "VOCdevkit"
    img_dir = devkit / "VOC2010" / "JPEGImages"
    for i, (fname, _, _, (h, w)) in enumerate(PC_IMAGES):
        write_image(img_dir / fname, noise(h, w, i))
    def seg(image_id, h, w, box, category, ann_id):
        m = np.zeros((h, w), bool)
        m[box] = True
        return {"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0,
                "area": int(m.sum()), "segmentation": {"size": [h, w], "counts": rle_string(m)}}
    anns = [
        seg(2008000002, 5, 6, (slice(0, 2), slice(None)), 59, 1),    # -> 14
        seg(2008000002, 5, 6, (slice(1, 4), slice(1, 3)), 2, 2),     # aeroplane -> 1, on top
        seg(2008000002, 5, 6, (slice(4, 5), slice(5, 6)), 458, 3),   # last id -> 59
        seg(2008000003, 4, 3, (slice(None), slice(0, 1)), 415, 4),   # -> 51
    ]
    if extra_category is not None:
        anns.append(seg(2008000007, 3, 3, (slice(0, 1), slice(0, 1)), extra_category, 5))
    data = {"info": {}, "categories": [], "parts": [], "annos_occlusion": [],
            "annos_boundary": [], "annos_segmentation": anns,
            "images": [{"file_name": f, "image_id": i, "phase": p, "height": h, "width": w,
                        "date_captured": ""} for f, i, p, (h, w) in PC_IMAGES]}
    json_path = devkit / "VOC2010" / "trainval_merged.json"
    json_path.write_text(json.dumps(data))
    return devkit, json_path


def test_pascal_context(tmp_path, capsys):
    devkit, json_path = make_context(tmp_path)
    assert run("pascal_context", devkit, json_path) == 0
    assert "3 PNGs written, 0 kept" in capsys.readouterr().out
    voc = devkit / "VOC2010"
    seg = read(voc / "SegmentationClassContext" / "2008_000002.png")
    expect = [[14, 14, 14, 14, 14, 14], [14, 1, 1, 14, 14, 14], [0, 1, 1, 0, 0, 0],
              [0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 59]]
    assert seg.tolist() == expect, seg.tolist()
    assert read(voc / "SegmentationClassContext" / "2008_000003.png").tolist() == [[51, 0, 0]] * 4
    assert read(voc / "SegmentationClassContext" / "2008_000007.png").tolist() == [[0] * 3] * 3
    lists = voc / "ImageSets" / "SegmentationContext"
    assert (lists / "train.txt").read_text().split() == ["2008_000002", "2008_000007"]
    assert (lists / "val.txt").read_text().split() == ["2008_000003"]
    ds = build_dataset(data_cfg("pascal_context59.yaml", str(voc)), "train")
    assert len(ds) == 2 and ds[0]["seg"][1, 1] == 0 and ds[0]["seg"][0, 0] == 13  # after -1

    before = snapshot(devkit)
    assert run("pascal_context", devkit, json_path) == 0
    assert "0 PNGs written, 3 kept" in capsys.readouterr().out
    assert snapshot(devkit) == before


def test_pascal_context_errors(tmp_path, capsys):
    devkit, json_path = make_context(tmp_path, extra_category=1)  # 1 is not a PC-59 id
    check_error(capsys, run("pascal_context", devkit, json_path), "category id 1",
                "2008_000007.jpg")
    check_error(capsys, run("pascal_context", devkit, devkit / "none.json"), "none.json")
    json_path.write_text('{"annotations": []}')
    check_error(capsys, run("pascal_context", devkit, json_path), "annos_segmentation")


# ---------------------------------------------------------------------------
# iSAID.

ISAID = PALETTES["isaid"]


def isaid_mask(h, w, seed):
    """Colour mask with ship (1) and plane (14) blocks and one colour outside the palette."""
    ids = np.zeros((h, w), np.uint8)
    ids[1:3, 1:4] = 1
    ids[h - 2:, w - 3:] = 14
    rgb = np.array(ISAID, np.uint8)[ids]
    rgb[0, w - 1] = (1, 2, 3)
    return rgb, ids


def make_isaid(raw):
    """train packed as downloaded (zips), val unpacked in place, test packed."""
    sizes = {"train": {"P0000": (11, 13), "P0001": (6, 20)}, "val": {"P0002": (8, 9)},
             "test": {"P0003": (5, 5)}}
    truth = {}
    for split, items in sizes.items():
        for i, (stem, (h, w)) in enumerate(items.items()):
            img = noise(h, w, i)
            rgb, ids = isaid_mask(h, w, i)
            truth[stem] = (img, ids)
            if split == "val":
                write_image(raw / split / "images" / "images" / f"{stem}.png", img)
                write_image(raw / split / "Semantic_masks" / "images" /
                            f"{stem}_instance_color_RGB.png", rgb)
                continue
            (raw / split / "images").mkdir(parents=True, exist_ok=True)
            with zipfile.ZipFile(raw / split / "images" / "part1.zip", "a") as z:
                z.writestr(f"images/{stem}.png", png_bytes(img))
            if split != "test":
                (raw / split / "Semantic_masks").mkdir(parents=True, exist_ok=True)
                with zipfile.ZipFile(raw / split / "Semantic_masks" / "images.zip", "a") as z:
                    z.writestr(f"images/{stem}_instance_color_RGB.png", png_bytes(rgb))
                    z.writestr(f"images/{stem}_instance_id_RGB.png", png_bytes(rgb))
    return truth


def test_isaid_patch_rule():
    isaid = load("isaid")
    # stride 512: starts 0, 512, ... inside the side, moved back to end at the side's end
    assert isaid.patch_starts(1000, 896, 512) == [0, 104]
    assert isaid.patch_starts(1500, 896, 512) == [0, 512, 604]
    assert isaid.patch_starts(2000, 896, 512) == [0, 512, 1024, 1104]
    assert isaid.patch_starts(896, 896, 512) == [0]
    assert isaid.windows(300, 900, 896, 384) == [(0, 896, 0, 896), (0, 896, 4, 900)]


def test_isaid(tmp_path, capsys):
    raw, out = tmp_path / "iSAID_raw", tmp_path / "iSAID"
    truth = make_isaid(raw)
    assert run("isaid", raw, "-o", out, "--patch-size", 8, "--overlap", 3, "--nproc", 2) == 0
    msg = capsys.readouterr().out
    assert "3 images cut, 0 kept; patches train 8, val 2" in msg, msg
    assert "1 test images copied" in msg and "3 mask pixels had colours outside" in msg, msg
    names = sorted(os.listdir(out / "img_dir" / "train"))
    # P0000 11x13: y in {0, 3}, x in {0, 5}; P0001 6x20 padded to 8 rows: x in {0, 5, 10, 12}
    assert names == sorted(f"P0000_{y}_{y + 8}_{x}_{x + 8}.png" for y in (0, 3) for x in (0, 5)) + \
        sorted(f"P0001_0_8_{x}_{x + 8}.png" for x in (0, 5, 10, 12)), names
    img, ids = truth["P0000"]
    patch = cv2.cvtColor(cv2.imread(str(out / "img_dir/train/P0000_3_11_5_13.png")),
                         cv2.COLOR_BGR2RGB)
    label = read(out / "ann_dir/train/P0000_3_11_5_13_instance_color_RGB.png")
    assert (patch == img[3:11, 5:13]).all() and label.shape == (8, 8), (patch, label.shape)
    # global (9, 10) plane -> 14; global (3, 5) background -> 0; unknown colour at (0, 12) -> 255
    assert [label[6, 5], label[0, 0]] == [14, 0], label
    label0 = read(out / "ann_dir/train/P0000_0_8_5_13_instance_color_RGB.png")
    assert [label0[0, 7], label0[1, 0], label0[2, 2]] == [255, 0, 0] and label0[1, 0] == ids[1, 5]
    first = read(out / "ann_dir/train/P0000_0_8_0_8_instance_color_RGB.png")
    assert (first[1:3, 1:4] == 1).all(), first
    # padding: image rows 6-7 are 0, label rows 6-7 are 255
    pad_img = cv2.imread(str(out / "img_dir/train/P0001_0_8_12_20.png"))
    pad_lab = read(out / "ann_dir/train/P0001_0_8_12_20_instance_color_RGB.png")
    assert (pad_img[6:] == 0).all() and (pad_lab[6:] == 255).all() and pad_lab[5, 7] == 14, \
        (pad_img[6:].max(), pad_lab[6:].min(), pad_lab[5, 7])
    assert sorted(os.listdir(out / "img_dir" / "val")) == ["P0002_0_8_0_8.png", "P0002_0_8_1_9.png"]
    test_img = cv2.imread(str(out / "img_dir/test/P0003.png"))
    assert (cv2.cvtColor(test_img, cv2.COLOR_BGR2RGB) == truth["P0003"][0]).all(), test_img.shape
    ds = build_dataset(data_cfg("isaid.yaml", str(out)), "train")
    assert len(ds) == 8 and ds[0]["seg"].shape == (8, 8), ds

    # Restart: every image is kept; a missing label patch makes only its image cut again.
    before = snapshot(out)
    assert run("isaid", raw, "-o", out, "--patch-size", 8, "--overlap", 3) == 0
    assert "0 images cut, 3 kept" in capsys.readouterr().out
    assert snapshot(out) == before
    gone = "ann_dir/train/P0001_0_8_5_13_instance_color_RGB.png"
    os.remove(out / gone)
    assert run("isaid", raw, "-o", out, "--patch-size", 8, "--overlap", 3) == 0
    assert "1 images cut, 2 kept" in capsys.readouterr().out
    after = snapshot(out)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}
    assert all(after[k][1] == before[k][1] for k in before if k != gone), "kept files rewritten"


def test_isaid_default_patch_pads_small_images(tmp_path, capsys):
    raw, out = tmp_path / "raw", tmp_path / "out"
    for split, stem in (("train", "P0001"), ("val", "P0002")):
        img = np.full((300, 900, 3), 40, np.uint8)
        rgb = np.zeros((300, 900, 3), np.uint8)
        rgb[:, 450:] = ISAID[5]
        write_image(raw / split / "images" / f"{stem}.png", img)
        write_image(raw / split / "Semantic_masks" / f"{stem}_instance_color_RGB.png", rgb)
    assert run("isaid", raw, "-o", out) == 0
    assert "patches train 2, val 2" in capsys.readouterr().out
    lab = read(out / "ann_dir/train/P0001_0_896_4_900_instance_color_RGB.png")
    assert lab.shape == (896, 896) and [lab[0, 0], lab[0, 895], lab[299, 500], lab[300, 500]] == \
        [0, 5, 5, 255], lab[[0, 0, 299, 300], [0, 895, 500, 500]]


def test_isaid_errors(tmp_path, capsys):
    raw = tmp_path / "raw"
    make_isaid(raw)
    os.remove(raw / "val/Semantic_masks/images/P0002_instance_color_RGB.png")
    check_error(capsys, run("isaid", raw, "-o", tmp_path / "o"), "unpaired iSAID val", "P0002")
    check_error(capsys, run("isaid", raw, "-o", tmp_path / "o", "--overlap", 896), "overlap")
