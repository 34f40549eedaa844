"""Segmentation datasets: one table of the six benchmarks plus a custom kind.

A dataset lists (image, label) pairs once, when it is built: by scanning `img_dir`
recursively (`_scan`; the label is the same relative path with the label suffix, under
`ann_dir`) or from split files that name one sample per line, several (ann_dir, split)
pairs for one img_dir as VOC + SBD "aug" does. `list_samples` does the listing alone and
returns the files that do not pair up instead of raising. `dataset[i]` reads one sample:

    {"img": (H, W, 3) uint8, RGB when to_rgb else BGR as OpenCV reads it,
     "seg": (H, W) uint8 class ids after reduce_zero_label, 255 = ignore (None without ann_dir),
     "img_path": str, "seg_path": str or None, "ori_shape": (H, W), "index": i}

Images are decoded by OpenCV (as mmcv does), labels by Pillow without any conversion
(palette PNGs give their indices, as mmseg's LoadAnnotations). Anything wrong with the
files raises `DataError` naming the file and the problem.
"""
import hashlib
import io
import logging
import os
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from .palettes import CLASSES, PALETTES, default_palette

__all__ = ["DataError", "load_rgb", "DatasetInfo", "DATASETS", "SampleList", "SegDataset",
           "build_dataset", "dataset_settings", "decode_image_bytes", "image_key", "list_samples",
           "read_image", "read_label", "reduce_zero_label"]

IGNORE_INDEX = 255
_SHOW = 5  # how many offending files an error lists

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Dataset files or settings are wrong; the message names the file and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """Default settings of one dataset kind (mmsegmentation 1.x values)."""
    classes: tuple
    palette: tuple
    img_suffix: str
    seg_map_suffix: str
    reduce_zero_label: bool
    hint: str  # how to obtain the data, shown when the data root is missing
    # the id the dataset's own evaluation expects for each class (None: the class ids)
    label_ids: tuple = None
    # (train, val) samples of the standard splits, for tools/check_dataset.py (None: no fixed
    # count, e.g. iSAID patches, whose number depends on the patch settings)
    num_samples: tuple = None


DATASETS = {
    "ade20k": DatasetInfo(CLASSES["ade20k"], PALETTES["ade20k"], ".jpg", ".png", True,
                          "download ADEChallengeData2016.zip and unpack it there",
                          num_samples=(20210, 2000)),
    "cityscapes": DatasetInfo(CLASSES["cityscapes"], PALETTES["cityscapes"],
                              "_leftImg8bit.png", "_gtFine_labelTrainIds.png", False,
                              "unpack leftImg8bit and gtFine, then run "
                              "python tools/dataset_converters/cityscapes.py data/cityscapes",
                              # train id -> label id, what the official evaluation server reads
                              label_ids=(7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26,
                                         27, 28, 31, 32, 33),
                              num_samples=(2975, 500)),
    "voc_aug": DatasetInfo(CLASSES["voc_aug"], PALETTES["voc_aug"], ".jpg", ".png", False,
                           "unpack VOC2012 and SBD, then run python "
                           "tools/dataset_converters/voc_aug.py DEVKIT_PATH AUG_PATH",
                           num_samples=(10582, 1449)),  # train.txt 1,464 + aug.txt 9,118
    "coco_stuff164k": DatasetInfo(CLASSES["coco_stuff164k"], PALETTES["coco_stuff164k"],
                                  ".jpg", "_labelTrainIds.png", False,
                                  "unpack COCO 2017 images and stuffthingmaps, then run "
                                  "python tools/dataset_converters/coco_stuff164k.py COCO_PATH",
                                  num_samples=(118287, 5000)),
    "pascal_context59": DatasetInfo(CLASSES["pascal_context59"], PALETTES["pascal_context59"],
                                    ".jpg", ".png", True,
                                    "unpack VOC2010 and trainval_merged.json, then run python "
                                    "tools/dataset_converters/pascal_context.py DEVKIT JSON",
                                    num_samples=(4996, 5104)),
    "isaid": DatasetInfo(CLASSES["isaid"], PALETTES["isaid"], ".png", "_instance_color_RGB.png",
                         False, "unpack DOTA images and iSAID masks, then run python "
                                "tools/dataset_converters/isaid.py RAW_ROOT (896x896 patches)"),
}


def _fmt(items):
    items = list(items)
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return ", ".join(str(i) for i in items[:_SHOW]) + more


# ---------------------------------------------------------------------------
# Reading one file.

def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _truncated(data):
    """True when Pillow cannot decode `data` completely (it stops cleanly at the end marker)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:  # Pillow raises several types for cut-off data
        return True
    return False


def _check_complete(data, path):
    """Catch truncated JPEG/PNG files, which OpenCV decodes silently (grey bottom rows).

    A JPEG whose end marker is not near its end is confirmed with Pillow, so files
    with harmless trailing bytes after the marker still pass.
    """
    if data[:2] == b"\xff\xd8":  # JPEG ends with the EOI marker FF D9
        if data.rfind(b"\xff\xd9", max(0, len(data) - 1024)) < 0 and _truncated(data):
            raise DataError(f"truncated image {path}: the JPEG data stops before its end "
                            f"marker ({len(data)} bytes); re-download or re-create the file")
    elif data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG ends with the IEND chunk
        if data.rfind(b"IEND") < 0:
            raise DataError(f"truncated image {path}: the PNG data stops before its IEND "
                            f"chunk ({len(data)} bytes); re-download or re-create the file")


def _declared_size(data):
    """(width, height) that a PNG, BMP or JPEG header declares, or None if not found.

    (Not GIF: a 0x0 logical screen is a known encoder quirk that decoders accept.)
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        if data[14:18] == b"\x0c\0\0\0":  # OS/2 BITMAPCOREHEADER: 16-bit sizes
            return struct.unpack("<HH", data[18:22])
        w, h = struct.unpack("<ii", data[18:26])
        return w, abs(h)  # a negative height means top-down rows
    if data[:2] == b"\xff\xd8":  # walk the segments to the frame header (SOF0..SOF15)
        i = 2
        while i + 9 <= len(data) and data[i] == 0xFF:
            marker = data[i + 1]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def read_image(path, to_rgb=True):
    """Decode an image file with OpenCV into (H, W, 3) uint8, RGB if `to_rgb` else BGR."""
    return decode_image_bytes(_read_bytes(path), path, to_rgb)


def decode_image_bytes(data, path, to_rgb=True):
    """`read_image` for the bytes of an image file (an upload); `path` names it in errors.

    Grey images come back as three equal channels and an alpha channel is dropped.
    """
    if not data:
        raise DataError(f"empty image file {path}")
    _check_complete(data, path)
    # OpenCV refuses a 0-pixel image like any undecodable file (and libpng prints warnings
    # about it); its header tells them apart.
    size = _declared_size(data)
    if size is not None and min(size) <= 0:
        raise DataError(f"image {path} has no pixels: its header declares {size[0]}x{size[1]} "
                        f"(width x height); re-create the image or remove the file")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise DataError(f"cannot decode image {path}: not an image OpenCV can read "
                        f"({len(data)} bytes)")
    if to_rgb:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def load_rgb(img):
    """An image path or array -> (H, W, 3) uint8 RGB.

    Arrays are taken as RGB. Grey (H, W) or (H, W, 1) images are replicated to three
    channels and RGBA drops its alpha channel; both conversions are logged.
    Raises DataError (missing, unreadable or non-image file) or ValueError (bad array).
    """
    if isinstance(img, (str, os.PathLike)):
        return read_image(os.fspath(img), to_rgb=True)
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (H, W, 3) RGB, got dtype {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        logger.warning("grey image %s converted to RGB", arr.shape)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim == 3 and arr.shape[2] == 4:
        logger.warning("RGBA image %s: alpha channel dropped", arr.shape[:2])
        return np.ascontiguousarray(arr[:, :, :3])
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image arrays must be (H, W, 3) RGB, got shape {arr.shape}")
    return arr


def image_key(img):
    """The NMF-bases key of a decoded image: 4 ints from a SHA-256 of its shape and pixels.

    img: (H, W, 3) uint8 as the test pipeline receives it (RGB for `data.to_rgb`). The same
    pixels give the same key wherever they come from (a split, a file, an array), so the
    evaluator, `inference_model` and tools/demo.py draw the same bases for them
    (jseg.models.ham_head.ImageBases). About 0.5 ms for 512x512, 7 ms for 2000x2000.
    """
    arr = np.ascontiguousarray(img)
    digest = hashlib.sha256(repr((arr.shape, arr.dtype.str)).encode())
    digest.update(memoryview(arr).cast("B"))
    return tuple(int.from_bytes(digest.digest()[i:i + 4], "little") for i in range(0, 16, 4))


def read_label(path):
    """Decode a label map with Pillow, unchanged (palette PNGs give their indices): (H, W) uint8."""
    data = _read_bytes(path)
    if not data:
        raise DataError(f"empty label file {path}")
    _check_complete(data, path)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            seg = np.array(im)
    except Exception as e:  # Pillow raises several types for corrupt data
        raise DataError(f"cannot decode label map {path}: {e}") from None
    if seg.ndim == 3 and seg.shape[2] == 1:
        seg = seg[..., 0]
    if seg.ndim != 2:
        raise DataError(f"label map {path} has mode {mode} with shape {seg.shape}; expected a "
                        f"single-channel image of class ids (8-bit grey or palette PNG), not "
                        f"colours; convert colours to class ids first")
    if seg.dtype != np.uint8:
        if seg.size and (seg.min() < 0 or seg.max() > 255):
            raise DataError(f"label map {path} has values from {seg.min()} to {seg.max()}; "
                            f"class ids must fit in 0..255")
        seg = seg.astype(np.uint8)
    return seg


def reduce_zero_label(seg):
    """ADE20K / Pascal-Context convention: 0 -> 255 (ignored), every other id -1."""
    seg = seg.astype(np.int16)
    seg[seg == 0] = 256
    seg = seg - 1
    seg[seg == 254] = 255  # a 255 in the file stays ignored
    return seg.astype(np.uint8)


# ---------------------------------------------------------------------------
# Listing samples.

def _scan(directory, suffix, exclude_suffix=None):
    """Relative paths under `directory` ending with `suffix`, recursively, sorted.

    Symlinked folders are followed, but each real folder (st_dev, st_ino) is entered
    once: a link into a folder already scanned - a loop back to an ancestor, or a
    second link to the same data - is skipped with a warning. The real folders of a
    tree are walked before its links, so a link never hides the folder it points to.
    """
    found, scanned = [], {}  # scanned: (st_dev, st_ino) -> the path it was first met as

    def first_visit(path):
        try:
            st = os.stat(path)
        except OSError as e:  # os.walk skips unreadable folders silently; say so here
            logger.warning("skipped %s: %s", path, e.strerror or e)
            return False
        first = scanned.setdefault((st.st_dev, st.st_ino), path)
        if first != path:
            logger.warning("skipped %s -> %s: that folder is already scanned as %s (a symlink "
                           "loop or a second link to the same data)",
                           path, os.path.realpath(path), first)
        return first == path

    pending = [(directory, ".")]  # folders to walk, with their path relative to `directory`
    while pending:
        top, rel_top = pending.pop(0)
        if not first_visit(top):
            continue
        for root, dirs, files in os.walk(top):  # does not enter links: they are queued
            rel_root = os.path.normpath(os.path.join(rel_top, os.path.relpath(root, top)))
            links = sorted(d for d in dirs if os.path.islink(os.path.join(root, d)))
            pending += [(os.path.join(root, d), os.path.join(rel_root, d)) for d in links]
            dirs[:] = sorted(d for d in dirs
                             if d not in links and first_visit(os.path.join(root, d)))
            for name in files:
                if not name.endswith(suffix):
                    continue
                if exclude_suffix and name.endswith(exclude_suffix):
                    continue
                found.append(os.path.normpath(os.path.join(rel_root, name)))
    return sorted(found)


def _read_split(path):
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f]
    except OSError as e:
        raise DataError(f"cannot read split file {path}: {e.strerror or e}") from None
    names = [n for n in names if n]
    if not names:
        raise DataError(f"split file {path} lists no samples")
    return names


@dataclass
class SampleList:
    """The samples of one split as found on disk, and the files that do not pair up.

    pairs: the complete (image, label) pairs in order (label None without ann_dir);
    no_label / no_image: images without a label and labels without an image in scanned
    folders; missing: split file -> the files it names that do not exist;
    num_images / num_labels: the image and label files found, paired or not.
    """
    name: str
    img_dir: str
    ann_dirs: list
    img_suffix: str
    seg_map_suffix: str
    pairs: list
    num_images: int
    num_labels: int
    no_label: list
    no_image: list
    missing: dict

    def error(self):
        """The DataError the loader raises for these problems, or None when there are none."""
        if self.no_label or self.no_image:
            parts = []
            if self.no_label:
                parts.append(f"{len(self.no_label)} image(s) without a label "
                             f"'<name>{self.seg_map_suffix}' in {self.ann_dirs[0]}: "
                             f"{_fmt(self.no_label)}")
            if self.no_image:
                parts.append(f"{len(self.no_image)} label(s) without an image "
                             f"'<name>{self.img_suffix}' in {self.img_dir}: {_fmt(self.no_image)}")
            return DataError(f"unpaired files in dataset '{self.name}': " + "; ".join(parts))
        for split_path, files in self.missing.items():
            return DataError(f"{len(files)} file(s) named in split file {split_path} do not "
                             f"exist: {_fmt(files)}")
        return None


def list_samples(data_root, img_dir, ann_dir=None, split=None, *, img_suffix=".jpg",
                 seg_map_suffix=".png", name="custom"):
    """List one split's samples as SegDataset does, returning the problems instead of raising.

    img_dir, ann_dir and split are relative to data_root (absolute paths are taken as they
    are); see SegDataset. A missing folder or split file, or an ann_dir list without a split
    list of the same length, raises DataError.
    """
    def path(rel):
        return rel if os.path.isabs(rel) else os.path.join(data_root, rel)

    def folder(rel, what):
        if not os.path.isdir(path(rel)):
            raise DataError(f"{what} {path(rel)} does not exist")
        return path(rel)

    img_root = folder(img_dir, "image folder (img_dir)")
    out = SampleList(name, img_root, [], img_suffix, seg_map_suffix, [], 0, 0, [], [], {})
    if split is None:
        if isinstance(ann_dir, (list, tuple)):
            raise DataError(f"dataset '{name}': a list of ann_dir {list(ann_dir)} needs "
                            f"a list of split files of the same length")
        ann_root = folder(ann_dir, "label folder (ann_dir)") if ann_dir is not None else None
        _scan_pairs(out, ann_root)
        return out
    splits = list(split) if isinstance(split, (list, tuple)) else [split]
    anns = list(ann_dir) if isinstance(ann_dir, (list, tuple)) else [ann_dir] * len(splits)
    if len(anns) != len(splits):
        raise DataError(f"dataset '{name}': {len(anns)} ann_dir {anns} but "
                        f"{len(splits)} split files {splits}; give one ann_dir per split")
    for ann, spl in zip(anns, splits):
        split_path = path(spl)
        if not os.path.isfile(split_path):
            raise DataError(f"split file {split_path} does not exist")
        ann_root = folder(ann, "label folder (ann_dir)") if ann is not None else None
        _split_pairs(out, ann_root, split_path)
    return out


def _scan_pairs(out, ann_root):
    """Fill `out` with the files of out.img_dir paired by relative path with those of ann_root."""
    img_sfx, seg_sfx = out.img_suffix, out.seg_map_suffix
    # A label suffix that ends like the image suffix (x_mask.png vs .png) in the same
    # folder must not make labels count as images.
    same = ann_root is not None and os.path.normpath(ann_root) == os.path.normpath(out.img_dir)
    exclude = seg_sfx if same and seg_sfx != img_sfx else None
    imgs = _scan(out.img_dir, img_sfx, exclude)
    out.num_images = len(imgs)
    if ann_root is None:
        out.pairs = [(os.path.join(out.img_dir, r), None) for r in imgs]
        return
    out.ann_dirs.append(ann_root)
    stems = [r[:-len(img_sfx)] for r in imgs]
    segs = _scan(ann_root, seg_sfx)
    out.num_labels = len(segs)
    seg_stems = {r[:-len(seg_sfx)] for r in segs}
    out.no_label = [os.path.join(out.img_dir, r) for r, s in zip(imgs, stems)
                    if s not in seg_stems]
    out.no_image = sorted(os.path.join(ann_root, s + seg_sfx) for s in seg_stems - set(stems))
    out.pairs = [(os.path.join(out.img_dir, r), os.path.join(ann_root, s + seg_sfx))
                 for r, s in zip(imgs, stems) if s in seg_stems]


def _split_pairs(out, ann_root, split_path):
    """Add to `out` the samples named in one split file, with labels from ann_root."""
    if ann_root is not None:
        out.ann_dirs.append(ann_root)
    missing = []
    for n in _read_split(split_path):
        img = os.path.join(out.img_dir, n + out.img_suffix)
        seg = os.path.join(ann_root, n + out.seg_map_suffix) if ann_root else None
        has_img, has_seg = os.path.isfile(img), seg is not None and os.path.isfile(seg)
        out.num_images += has_img
        out.num_labels += has_seg
        if not has_img:
            missing.append(img)
        if seg is not None and not has_seg:
            missing.append(seg)
        if has_img and (seg is None or has_seg):
            out.pairs.append((img, seg))
    if missing:
        out.missing[split_path] = missing


class SegDataset:
    """Image/label pairs of one split; `dataset[i]` reads and checks sample i.

    Raises `DataError` naming the file and the problem: a missing folder or split file,
    unpaired images or labels (when built), an unreadable or truncated file, a label of
    another size than its image, or label values outside [0, num_classes) other than the
    ignore index (when read).

    Args:
        data_root: dataset folder; img_dir, ann_dir and split are relative to it
            (absolute paths are taken as they are).
        img_dir: folder of images.
        ann_dir: folder of labels, a list of folders (one per split file), or None
            for images without labels.
        split: split file, a list of split files (paired with ann_dir), or None to
            scan img_dir.
        classes / palette: class names and RGB colours; num_classes = len(classes).
        img_suffix / seg_map_suffix: file name endings of images and labels.
        reduce_zero_label: map label 0 to 255 and every other id to id - 1.
        to_rgb: return images in RGB order (else BGR, as OpenCV reads them).
        name: dataset kind, used in messages.
        hint: how to get the data, shown when data_root is missing.
    """

    def __init__(self, data_root, img_dir, ann_dir=None, split=None, *, classes,
                 palette=None, img_suffix=".jpg", seg_map_suffix=".png",
                 reduce_zero_label=False, ignore_index=IGNORE_INDEX, to_rgb=True,
                 name="custom", hint=""):
        if not classes:
            raise DataError(f"dataset '{name}' needs class names (data.classes)")
        self.name = name
        self.classes = tuple(classes)
        self.palette = tuple(tuple(int(v) for v in c) for c in
                             (palette if palette is not None else default_palette(len(classes))))
        if len(self.palette) != len(self.classes):
            raise DataError(f"dataset '{name}' has {len(self.classes)} classes but "
                            f"{len(self.palette)} palette colours; give one colour per class")
        self.img_suffix = img_suffix
        self.seg_map_suffix = seg_map_suffix
        self.reduce_zero_label = bool(reduce_zero_label)
        self.ignore_index = ignore_index
        self.to_rgb = bool(to_rgb)
        self.data_root = data_root
        if not os.path.isdir(data_root):
            fix = f"; {hint}" if hint else ""
            raise DataError(f"data root {data_root!r} of dataset '{name}' does not exist{fix}, "
                            f"or set data.data_root=PATH")
        listing = list_samples(data_root, img_dir, ann_dir, split, img_suffix=img_suffix,
                               seg_map_suffix=seg_map_suffix, name=name)
        error = listing.error()
        if error is not None:
            raise error
        self.img_dir = listing.img_dir
        self.samples = listing.pairs
        if not self.samples:
            raise DataError(f"no images ending with '{img_suffix}' found in {self.img_dir}; "
                            f"check data.img_suffix and the img_dir")

    @property
    def num_classes(self):
        return len(self.classes)

    # -----------------------------------------------------------------------

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        index = int(index) % len(self)
        img_path, seg_path = self.samples[index]
        img = read_image(img_path, self.to_rgb)
        seg = None
        if seg_path is not None:
            seg = read_label(seg_path)
            if seg.shape != img.shape[:2]:
                raise DataError(f"label {seg_path} is {seg.shape[0]}x{seg.shape[1]} (HxW) but its "
                                f"image {img_path} is {img.shape[0]}x{img.shape[1]}; they must "
                                f"be the same size")
            if self.reduce_zero_label:
                seg = reduce_zero_label(seg)
            self._check_values(seg, seg_path)
        return {"img": img, "seg": seg, "img_path": img_path, "seg_path": seg_path,
                "ori_shape": tuple(img.shape[:2]), "index": index}

    def _check_values(self, seg, path):
        bad = (seg >= self.num_classes) & (seg != self.ignore_index)
        if bad.any():
            values = np.unique(seg[bad])
            after = " after reduce_zero_label (file value - 1)" if self.reduce_zero_label else ""
            raise DataError(f"label {path} has value(s) {_fmt(values.tolist())}{after} outside "
                            f"0..{self.num_classes - 1} ({self.num_classes} classes) and not the "
                            f"ignore index {self.ignore_index} ({int(bad.sum())} pixels); check "
                            f"data.reduce_zero_label and the number of classes")

    def check(self, indices=None):
        """Read every sample (or `indices`) and return [(index, message)] of the bad ones."""
        bad = []
        for i in (range(len(self)) if indices is None else indices):
            try:
                self[i]
            except DataError as e:
                bad.append((i, str(e)))
        return bad

    def __repr__(self):
        return (f"SegDataset(name={self.name!r}, samples={len(self)}, classes={self.num_classes}, "
                f"img_dir={self.img_dir!r}, reduce_zero_label={self.reduce_zero_label})")


def dataset_settings(data_cfg):
    """Resolve the dataset kind's defaults against `data_cfg` (the config's `data` section).

    Returns a dict with classes, palette, img_suffix, seg_map_suffix, reduce_zero_label, hint.
    """
    kind = data_cfg["type"]
    if kind == "custom":
        if not data_cfg.get("classes"):
            raise DataError("data.type 'custom' needs data.classes (a list of class names)")
        info = DatasetInfo(tuple(data_cfg["classes"]), None, ".jpg", ".png", False, "")
    elif kind in DATASETS:
        info = DATASETS[kind]
    else:
        raise DataError(f"unknown dataset type {kind!r}; valid: "
                        f"{', '.join(sorted(DATASETS) + ['custom'])}")
    classes = tuple(data_cfg.get("classes") or info.classes)
    if kind != "custom" and len(classes) != len(info.classes):
        raise DataError(f"data.classes has {len(classes)} names but {kind} has "
                        f"{len(info.classes)} classes; only renaming is supported, not subsets "
                        f"(use data.type 'custom' with relabelled files)")
    palette = data_cfg.get("palette")
    if palette is None:
        palette = info.palette if info.palette is not None else default_palette(len(classes))

    def pick(key, default):
        value = data_cfg.get(key)
        return default if value is None else value

    return {"classes": classes, "palette": tuple(tuple(c) for c in palette),
            "img_suffix": pick("img_suffix", info.img_suffix),
            "seg_map_suffix": pick("seg_map_suffix", info.seg_map_suffix),
            "reduce_zero_label": pick("reduce_zero_label", info.reduce_zero_label),
            "hint": info.hint}


def build_dataset(data_cfg, split="train"):
    """The `split` ("train" or "val") dataset described by the config's `data` section."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    s = dataset_settings(data_cfg)
    part = data_cfg[split]
    hint = s.pop("hint")
    if data_cfg["type"] == "custom" and "demo" in os.path.basename(
            os.path.normpath(data_cfg["data_root"])):
        hint = "make it with: python tools/make_demo_data.py --out " + data_cfg["data_root"]
    return SegDataset(data_cfg["data_root"], part["img_dir"], part.get("ann_dir"),
                      part.get("split"), to_rgb=data_cfg.get("to_rgb", True),
                      name=data_cfg["type"], hint=hint, **s)
