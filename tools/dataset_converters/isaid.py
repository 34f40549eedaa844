"""Cut iSAID into 896x896 patches with class-id labels (mmseg 1.x recipe).

    python tools/dataset_converters/isaid.py data/iSAID_raw [--out-dir data/iSAID] [--nproc 8]

Input: RAW_ROOT laid out as the downloads come (DOTA-v1.0 images, iSAID semantic masks);
the zip files may be left packed or be unpacked in place:
    RAW_ROOT/{train,val}/images/part*.zip             holding images/P0000.png, ...
    RAW_ROOT/{train,val}/Semantic_masks/images.zip    holding images/P0000_instance_color_RGB.png
    RAW_ROOT/test/images/part*.zip                    optional, no masks
Output (OUT_DIR, default data/iSAID; the layout of configs/_base_/datasets/isaid.yaml):
    OUT_DIR/img_dir/{train,val}/P0000_<y0>_<y1>_<x0>_<x1>.png                     RGB patch
    OUT_DIR/ann_dir/{train,val}/P0000_<y0>_<y1>_<x0>_<x1>_instance_color_RGB.png  8-bit grey
        class ids 0..15 (despite the name, kept from mmseg so that file names match)
    OUT_DIR/img_dir/test/P0000.png   test images copied whole, as mmseg does

Patches (mmseg's rule): an image with a side shorter than the patch is first padded at the
bottom / right to the patch size (image 0, label 255). Along each side, windows start at
0, stride, 2*stride, ... (stride = patch - overlap = 512) while the start is inside the
image; a window that would run past the end is moved back to end there, and repeated
windows are written once. Colours are mapped by the iSAID palette (background (0,0,0) = 0,
ship (0,0,63) = 1, ...); a colour outside the palette becomes 255 (ignored) and is counted
in the summary (mmseg makes it 0, background).
Restartable: an image whose patches all exist is skipped (--overwrite makes them again).
"""
import os
import struct
import zipfile
from collections import Counter


import numpy as np

from jseg.utils.cli import run_main
from jseg.data.converters import (ConvertError, converter_parser, colours_to_ids,
                                  decode_image, find_files, is_complete, require_dir,
                                  run_cli, run_tasks, write_bytes, write_png)
from jseg.data.palettes import PALETTES

SPLITS = ("train", "val")
MASK_SUFFIX = "_instance_color_RGB.png"
PALETTE = PALETTES["isaid"]  # iSAID colour of class id i, i = 0..15
IGNORE = 255


# ---------------------------------------------------------------------------
# Raw files, packed in zips or unpacked.

_open_zips = {}  # (pid, path) -> ZipFile; per process, since forked workers must not share one


def _zip(path):
    key = (os.getpid(), path)
    if key not in _open_zips:
        _open_zips[key] = zipfile.ZipFile(path)
    return _open_zips[key]


def read_raw(source, size=None):
    """Bytes of a raw file: `source` is (zip path, member) or (None, file path)."""
    archive, name = source
    try:
        if archive is None:
            with open(name, "rb") as f:
                return f.read(size) if size else f.read()
        with _zip(archive).open(name) as f:
            return f.read(size) if size else f.read()
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        where = f"{name} in {archive}" if archive else name
        raise ConvertError(f"cannot read {where}: {e}") from None


def describe(source):
    archive, name = source
    return f"{name} in {archive}" if archive else name


def list_pngs(folder):
    """{file name: source} for the PNGs in `folder`'s zip files and in the folder itself."""
    found = {}
    for zname in sorted(n for n in os.listdir(folder) if n.endswith(".zip")):
        path = os.path.join(folder, zname)
        try:
            with zipfile.ZipFile(path) as z:
                members = [m for m in z.namelist() if m.lower().endswith(".png")]
        except (OSError, zipfile.BadZipFile) as e:
            raise ConvertError(f"cannot open {path} as a zip file: {e}; re-download it") from None
        for m in sorted(members):
            found.setdefault(os.path.basename(m), (path, m))
    for rel in find_files(folder, ".png"):
        found.setdefault(os.path.basename(rel), (None, os.path.join(folder, rel)))
    return found


def png_size(header):
    """(height, width) from the first 24 bytes of a PNG, or None if it is not a PNG."""
    if len(header) < 24 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return height, width


# ---------------------------------------------------------------------------
# Patches.

def patch_starts(length, patch, stride):
    """Window starts along one side of `length` (>= patch) pixels, as mmseg's loop gives them."""
    return sorted({min(start, length - patch) for start in range(0, length, stride)})


def windows(height, width, patch, overlap):
    """[(y0, y1, x0, x1)] of the patches of an image, after padding it to at least patch."""
    stride = patch - overlap
    ys = patch_starts(max(height, patch), patch, stride)
    xs = patch_starts(max(width, patch), patch, stride)
    return [(y, y + patch, x, x + patch) for x in xs for y in ys]


def patch_names(stem, box):
    base = f"{stem}_{box[0]}_{box[1]}_{box[2]}_{box[3]}"
    return base + ".png", base + MASK_SUFFIX


def _pad(array, height, width, value):
    pad_h, pad_w = height - array.shape[0], width - array.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return array
    spec = ((0, max(pad_h, 0)), (0, max(pad_w, 0))) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, spec, constant_values=value)


def convert_one(job):
    """Cut one image and its mask; returns (status, patches, unknown-colour pixels)."""
    stem, img_src, mask_src, img_out, ann_out, patch, overlap, overwrite = job
    size = png_size(read_raw(img_src, 24))
    img = None
    if size is None:  # not a PNG: decode to learn the size
        img = decode_image(read_raw(img_src), describe(img_src), bgr=True)
        size = img.shape[:2]
    boxes = windows(size[0], size[1], patch, overlap)
    outs = [(os.path.join(img_out, a), os.path.join(ann_out, b))
            for a, b in (patch_names(stem, box) for box in boxes)]
    if not overwrite and all(is_complete(a) and is_complete(b) for a, b in outs):
        return "kept", len(boxes), 0
    if img is None:
        img = decode_image(read_raw(img_src), describe(img_src), bgr=True)
    colours = decode_image(read_raw(mask_src), describe(mask_src))
    if colours.shape != img.shape:
        raise ConvertError(f"mask {describe(mask_src)} is {colours.shape[0]}x{colours.shape[1]} "
                           f"but its image {describe(img_src)} is {img.shape[0]}x{img.shape[1]}")
    label, unknown = colours_to_ids(colours, PALETTE, IGNORE)
    height, width = max(img.shape[0], patch), max(img.shape[1], patch)
    img, label = _pad(img, height, width, 0), _pad(label, height, width, IGNORE)
    for (y0, y1, x0, x1), (img_path, ann_path) in zip(boxes, outs):
        if overwrite or not is_complete(img_path):
            write_png(img_path, img[y0:y1, x0:x1], bgr=True)
        if overwrite or not is_complete(ann_path):
            write_png(ann_path, label[y0:y1, x0:x1])
    return "written", len(boxes), unknown


def copy_one(job):
    src, out, overwrite = job
    if not overwrite and is_complete(out):
        return "kept"
    data = read_raw(src)
    if png_size(data[:24]) is None:  # keep the .png name honest
        write_png(out, decode_image(data, describe(src), bgr=True), bgr=True)
    else:
        write_bytes(out, data)
    return "written"


# ---------------------------------------------------------------------------

def _pairs(raw_root, split):
    split_dir = require_dir(os.path.join(raw_root, split), "folder",
                            f"RAW_ROOT must hold train/ and val/ as downloaded "
                            f"({split}/images/part*.zip, {split}/Semantic_masks/images.zip)")
    img_dir = require_dir(os.path.join(split_dir, "images"), "folder",
                          "put the DOTA-v1.0 image zips (part*.zip) there")
    mask_dir = require_dir(os.path.join(split_dir, "Semantic_masks"), "folder",
                           "put iSAID's semantic mask zip (images.zip) there")
    images = {n.split(".")[0]: s for n, s in list_pngs(img_dir).items()
              if not n.endswith(MASK_SUFFIX) and "_instance_" not in n}
    masks = {n[:-len(MASK_SUFFIX)]: s for n, s in list_pngs(mask_dir).items()
             if n.endswith(MASK_SUFFIX)}
    if not images:
        raise ConvertError(f"no PNG images in {img_dir} (neither in part*.zip nor unpacked)")
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    if no_mask or no_image:
        parts = []
        if no_mask:
            parts.append(f"{len(no_mask)} image(s) without a mask <name>{MASK_SUFFIX} in "
                         f"{mask_dir}: {', '.join(no_mask[:5])}")
        if no_image:
            parts.append(f"{len(no_image)} mask(s) without an image in {img_dir}: "
                         f"{', '.join(no_image[:5])}")
        raise ConvertError(f"unpaired iSAID {split} files: " + "; ".join(parts))
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def convert(raw_root, out_dir, patch=896, overlap=384, nproc=1, overwrite=False):
    if not 0 <= overlap < patch:
        raise ConvertError(f"overlap {overlap} must be >= 0 and smaller than the patch {patch}")
    require_dir(raw_root, "iSAID raw root")
    pairs = {split: _pairs(raw_root, split) for split in SPLITS}  # check both before starting
    res = {"patches": {}, "written": 0, "kept": 0, "unknown": 0, "test": 0}
    for split in SPLITS:
        img_out = os.path.join(out_dir, "img_dir", split)
        ann_out = os.path.join(out_dir, "ann_dir", split)
        jobs = [(stem, i, m, img_out, ann_out, patch, overlap, overwrite)
                for stem, i, m in pairs[split]]
        results = run_tasks(convert_one, jobs, nproc, desc=f"isaid {split}", unit="image")
        res["patches"][split] = sum(r[1] for r in results)
        res["unknown"] += sum(r[2] for r in results)
        counts = Counter(r[0] for r in results)
        res["written"] += counts["written"]
        res["kept"] += counts["kept"]
    test_dir = os.path.join(raw_root, "test", "images")
    if os.path.isdir(test_dir):
        out = os.path.join(out_dir, "img_dir", "test")
        jobs = [(src, os.path.join(out, name.split(".")[0] + ".png"), overwrite)
                for name, src in sorted(list_pngs(test_dir).items())]
        run_tasks(copy_one, jobs, nproc, desc="isaid test (copied whole)", unit="image")
        res["test"] = len(jobs)
    return res


def main(argv=None):
    p = converter_parser(__doc__, "cut every image again, even those whose patches exist")
    p.add_argument("raw_root", metavar="RAW_ROOT", help="iSAID download folder (train/, val/)")
    p.add_argument("-o", "--out-dir", default=os.path.join("data", "iSAID"),
                   help="output folder (default: data/iSAID)")
    p.add_argument("--patch-size", type=int, default=896, help="patch side (default: 896)")
    p.add_argument("--overlap", type=int, default=384,
                   help="overlap of neighbouring patches (default: 384, stride 512)")
    args = p.parse_args(argv)

    def job():
        res = convert(args.raw_root, args.out_dir, args.patch_size, args.overlap, args.nproc,
                      args.overwrite)
        patches = ", ".join(f"{s} {n}" for s, n in res["patches"].items())
        test = f"; {res['test']} test images copied" if res["test"] else ""
        unknown = (f"; note: {res['unknown']} mask pixels had colours outside the iSAID "
                   f"palette and were set to 255") if res["unknown"] else ""
        return (f"isaid: {res['written']} images cut, {res['kept']} kept; patches {patches} "
                f"in {args.out_dir}{test}{unknown}")
    return run_cli(job)


if __name__ == "__main__":
    run_main(main)
