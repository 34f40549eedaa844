"""Check a prepared dataset before training: read every file once and report what is wrong.

A dataset that is subtly wrong (raw Cityscapes label ids, ADE20K labels without
reduce_zero_label, colour PNGs, half the labels missing) otherwise shows up only as an
mIoU near 0 after days of training. `check_dataset(cfg)` lists each split as the loader
does, reads every image header and every label in worker processes, and returns a `Report`
of errors (what the loader refuses or would train wrongly on) and warnings (counts, class
coverage); what is checked: `check_dataset`. Only numpy, Pillow, OpenCV and tqdm are
imported here (no Jittor).

    report = check_dataset(load_config("configs/segnext/segnext_mscan-t_ade20k-512x512.yaml"),
                           splits=("train", "val"), workers=8)
    print(report.text())      # ends with "verdict: OK", "verdict: WARNINGS (n)" or "verdict: ERRORS (n)"
    report.exit_code          # 0 for OK and WARNINGS, 2 (EXIT_ERRORS) for ERRORS
"""
import collections
import multiprocessing as mp
import os
import signal
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image, UnidentifiedImageError

from .converters import colours_to_ids
from .datasets import (DATASETS, IGNORE_INDEX, DataError, dataset_settings, list_samples,
                       read_image, read_label, reduce_zero_label)

__all__ = ["EXIT_ERRORS", "Finding", "PairInfo", "Report", "check_dataset", "image_size",
           "inspect_pair"]

EXIT_ERRORS = 2  # exit code of a check that found errors (1 is a bad command line)
SHOW = 5  # examples a finding lists
NAMES = 12  # class names a "never seen" warning lists
CONVERTERS = "tools/dataset_converters"
_ORIENTATION = 0x0112  # EXIF tag; 5..8 are a quarter turn, which OpenCV applies when decoding
_MODES = {"1": "1 (1-bit)", "L": "L (8-bit grey)", "P": "P (palette: indices are the ids)",
          "I": "I (32-bit grey)", "I;16": "I;16 (16-bit grey)", "RGB": "RGB (colour)",
          "RGBA": "RGBA (colour)", "LA": "LA (grey + alpha)", "PA": "PA (palette + alpha)"}


@dataclass
class Finding:
    """One problem: `level` "error" or "warning", the split, a line of text and detail lines
    (examples, the likely cause, the fix)."""
    level: str
    split: str
    text: str
    details: list = field(default_factory=list)


@dataclass
class Report:
    """The lines of the per-split summaries and the findings; `text()` renders it all."""
    lines: list
    findings: list

    @property
    def errors(self):
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self):
        return [f for f in self.findings if f.level == "warning"]

    @property
    def verdict(self):
        if self.errors:
            return f"verdict: ERRORS ({len(self.errors)})"
        if self.warnings:
            return f"verdict: WARNINGS ({len(self.warnings)})"
        return "verdict: OK"

    @property
    def exit_code(self):
        return EXIT_ERRORS if self.errors else 0

    def text(self):
        out = list(self.lines)
        if self.findings:
            out.append("findings:")
            for f in self.errors + self.warnings:  # errors first
                out.append(f"  {f.level.upper():<8} {f.split}: {f.text}")
                out += [f"           {d}" for d in f.details]
        out.append(self.verdict)
        return "\n".join(out)


# ---------------------------------------------------------------------------
# Reading one pair (runs in the worker processes).

@dataclass
class PairInfo:
    """What reading one (image, label) pair found."""
    img_shape: tuple = None   # (H, W) as OpenCV decodes it
    orientation: int = 1      # EXIF orientation of the image (1: none)
    seg_shape: tuple = None   # (H, W) of the label
    seg_mode: str = None      # Pillow mode of the label file
    values: np.ndarray = None  # raw label values present, as stored in the file
    counts: np.ndarray = None  # pixels of each value
    colour: tuple = None      # a colour label: (channels all equal, share of pixels in palette)
    errors: list = field(default_factory=list)  # why a file cannot be read


def _ends_complete(path, fmt, size):
    """False if a JPEG / PNG has no end marker in its last KiB (it may be truncated)."""
    marker = {"JPEG": b"\xff\xd9", "PNG": b"IEND"}.get(fmt)
    if marker is None:
        return True
    with open(path, "rb") as f:
        f.seek(max(0, size - 1024))
        return marker in f.read()


def image_size(path):
    """((H, W), EXIF orientation) of an image as the loader decodes it, from its header.

    OpenCV applies the EXIF orientation, so 5..8 (a quarter turn) swap the header's sides.
    A file the loader could not read raises DataError with the loader's reason.
    """
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if size == 0:
        raise DataError(f"empty image file {path}")
    try:
        with Image.open(path) as im:
            (w, h), fmt = im.size, im.format
            # only an EXIF block of the header: getexif() of a PNG without one decodes it
            orientation = im.getexif().get(_ORIENTATION, 1) if "exif" in im.info else 1
    except UnidentifiedImageError:
        raise DataError(f"cannot decode image {path}: not an image ({size} bytes)") from None
    except Exception as e:  # Pillow raises several types for unreadable data
        raise DataError(f"cannot read image {path}: {e}") from None
    if min(w, h) <= 0:
        raise DataError(f"image {path} has no pixels: its header declares {w}x{h} "
                        f"(width x height)")
    if not _ends_complete(path, fmt, size):
        read_image(path)  # decodes it as the loader does: raises DataError if truncated
    if orientation in (5, 6, 7, 8):
        h, w = w, h
    return (h, w), orientation


def _inspect_label(path, palette, info):
    try:
        with Image.open(path) as im:
            info.seg_mode = im.mode
            if len(im.getbands()) > 1:  # colours (RGB, RGBA, LA...): the loader refuses them
                rgb = np.asarray(im.convert("RGB"))
                info.seg_shape = rgb.shape[:2]
                equal = bool((rgb[..., 0] == rgb[..., 1]).all()
                             and (rgb[..., 1] == rgb[..., 2]).all())
                unknown = colours_to_ids(rgb, palette)[1] if palette else rgb[..., 0].size
                info.colour = (equal, 1.0 - unknown / max(1, rgb[..., 0].size))
                return
    except Exception as e:  # Pillow raises several types for unreadable data
        read_label(path)  # raises the loader's own reason (empty, truncated, undecodable)
        raise DataError(f"cannot read label map {path}: {e}") from None
    seg = read_label(path)
    info.seg_shape = seg.shape
    hist = np.bincount(seg.ravel(), minlength=256)
    info.values = np.flatnonzero(hist).astype(np.uint8)
    info.counts = hist[info.values]


def inspect_pair(pair, palette=()):
    """Read one (image path, label path or None) pair: a PairInfo; never raises DataError."""
    img_path, seg_path = pair
    info = PairInfo()
    try:
        info.img_shape, info.orientation = image_size(img_path)
    except DataError as e:
        info.errors.append(str(e))
    if seg_path is not None:
        try:
            _inspect_label(seg_path, palette, info)
        except DataError as e:
            info.errors.append(str(e))
    return info


def _ignore_sigint():
    """Pool initializer: Ctrl-C in a terminal reaches the whole process group; the main
    process says "interrupted" and ends the pool, the workers stay quiet."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_all(pairs, fn, workers, progress, desc):
    """Yield (pair, fn(pair)) in order, from `workers` processes when > 1, with a progress bar."""
    from tqdm import tqdm

    with tqdm(total=len(pairs), desc=desc, unit="file", disable=not progress,
              mininterval=0.5, dynamic_ncols=True) as bar:
        if workers <= 1 or len(pairs) <= 1:
            for pair in pairs:
                yield pair, fn(pair)
                bar.update()
            return
        chunk = max(1, min(64, len(pairs) // (workers * 8)))
        method = "fork" if "fork" in mp.get_all_start_methods() else None
        with mp.get_context(method).Pool(min(workers, len(pairs)),
                                         initializer=_ignore_sigint) as pool:
            for pair, info in zip(pairs, pool.imap(fn, pairs, chunksize=chunk)):
                yield pair, info
                bar.update()


# ---------------------------------------------------------------------------
# One split: totals over its pairs.

class _Tally:
    """Totals of one split's PairInfos; only sums and the offending files are kept."""

    def __init__(self, lut, num_classes):
        self.lut, self.num_classes = lut, num_classes
        self.raw_pixels = np.zeros(256, np.int64)  # pixels of each value as stored
        self.raw_labels = np.zeros(256, np.int64)  # labels holding each value as stored
        self.labels_read = 0
        self.img_sizes = collections.Counter()
        self.seg_modes = collections.Counter()
        self.unreadable, self.mismatch, self.colour = [], [], []
        self.out_of_range, self.all_ignore = [], []

    def add(self, pair, info):
        img_path, seg_path = pair
        self.unreadable += info.errors
        if info.img_shape is not None:
            self.img_sizes[info.img_shape] += 1
        if info.seg_mode is not None:
            self.seg_modes[info.seg_mode] += 1
        if info.colour is not None:
            self.colour.append((seg_path, info.seg_mode) + info.colour)
        if info.img_shape is not None and info.seg_shape is not None \
                and tuple(info.img_shape) != tuple(info.seg_shape):
            self.mismatch.append((seg_path, info.seg_shape, img_path, info.img_shape,
                                  info.orientation))
        if info.values is None:
            return
        self.labels_read += 1
        self.raw_pixels[info.values] += info.counts
        self.raw_labels[info.values] += 1
        mapped = self.lut[info.values]
        bad = (mapped >= self.num_classes) & (mapped != IGNORE_INDEX)
        if bad.any():
            self.out_of_range.append((seg_path, info.values[bad].tolist()))
        elif (mapped == IGNORE_INDEX).all():
            self.all_ignore.append((seg_path, info.values.tolist()))

    def by_class(self):
        """(pixels, labels) per value after reduce_zero_label: 256 entries each."""
        pixels, labels = np.zeros(256, np.int64), np.zeros(256, np.int64)
        np.add.at(pixels, self.lut, self.raw_pixels)
        np.add.at(labels, self.lut, self.raw_labels)
        return pixels, labels


# ---------------------------------------------------------------------------
# Findings.

def _examples(lines, total=None):
    """Detail lines listing up to SHOW examples: "e.g. a", "     b", "     ... and 3 more"."""
    lines = list(lines)
    total = len(lines) if total is None else total
    out = [("e.g. " if i == 0 else "     ") + line for i, line in enumerate(lines[:SHOW])]
    if total > SHOW:
        out.append(f"     ... and {total - SHOW} more")
    return out


def _fmt(items, show=SHOW):
    items = [str(i) for i in items]
    more = f" ... and {len(items) - show} more" if len(items) > show else ""
    return ", ".join(items[:show]) + more


def _values(values):
    """Sorted values as "24, 26, 33" (runs of 4 or more as "19..33")."""
    values = sorted(set(int(v) for v in values))
    parts, i = [], 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        if j - i >= 3:
            parts.append(f"{values[i]}..{values[j]}")
        else:
            parts += [str(v) for v in values[i:j + 1]]
        i = j + 1
    return ", ".join(parts)


def _pct(part, whole):
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def _peek(folder, limit=2000, suffix=""):
    """(number of files ending with `suffix`, a few of their names) under `folder`; the
    count stops at the first folder that reaches `limit`."""
    names, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a symlink loop or a second link to a folder: once is enough
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        names += [os.path.relpath(os.path.join(root, f), folder) for f in sorted(files)
                  if not f.startswith(".") and f.endswith(suffix)]
        if len(names) >= limit:
            break
    return len(names), names[:3]


class _SplitCheck:
    """The findings of one split, from its listing and the totals of reading it."""

    def __init__(self, ctx, split, listing, tally):
        self.ctx, self.split, self.listing, self.tally = ctx, split, listing, tally
        self.findings = []

    def add(self, level, text, *details):
        self.findings.append(Finding(level, self.split, text, [d for d in details if d]))

    def run(self):
        self.counts()
        self.pairing()
        t = self.tally
        if t.unreadable:
            self.add("error", f"{len(t.unreadable)} unreadable file(s) (the loader stops on "
                     f"them, or skips the sample with data.on_bad_sample=skip)",
                     *_examples(t.unreadable))
        self.colour_labels()
        self.size_mismatch()
        advised_reduce = self.values()
        self.ignored_only()
        self.reduce_setting(advised_reduce)
        self.never_seen()
        return self.findings

    # -- files ---------------------------------------------------------------

    def counts(self):
        ctx, lst = self.ctx, self.listing
        expected = ctx.expected.get(self.split)
        if expected is None or lst.num_images == expected:
            return
        diff = lst.num_images - expected
        why = (f"{-diff:,} fewer: fine if a subset is intended" if diff < 0 else
               f"{diff:,} more: images of another split mixed in, or a different release?")
        self.add("warning", f"{lst.num_images:,} of {expected:,} images of the {ctx.kind} "
                 f"{self.split} split ({why})")

    def pairing(self):
        ctx, lst = self.ctx, self.listing
        if lst.no_label:
            cause = ""
            if lst.num_labels == 0:
                count, names = _peek(lst.ann_dirs[0])
                held = f"it holds {count} other file(s), e.g. {_fmt(names)}" if count \
                    else "it is empty"
                cause = (f"likely cause: no '*{lst.seg_map_suffix}' file in "
                         f"{lst.ann_dirs[0]} ({held}): check data.seg_map_suffix and "
                         f"data.{self.split}.ann_dir")
                if ctx.kind == "cityscapes" and any("_gtFine_" in n for n in names):
                    cause += f"; make the train-id maps with {ctx.convert('cityscapes')}"
            self.add("error", f"{len(lst.no_label)} image(s) without a label "
                     f"'<name>{lst.seg_map_suffix}' in {lst.ann_dirs[0]} (the loader refuses "
                     f"unpaired files)", *_examples(lst.no_label), cause)
        if lst.no_image:
            self.add("error", f"{len(lst.no_image)} label(s) without an image "
                     f"'<name>{lst.img_suffix}' in {lst.img_dir} (the loader refuses unpaired "
                     f"files)", *_examples(lst.no_image))
        for split_file, files in lst.missing.items():
            self.add("error", f"{len(files)} file(s) named in split file {split_file} do not "
                     f"exist (the loader refuses the split)", *_examples(files))

    # -- labels --------------------------------------------------------------

    def colour_labels(self):
        ctx, found = self.ctx, self.tally.colour
        if not found:
            return
        modes = sorted({mode for _, mode, _, _ in found})
        grey = [c for c in found if c[2]]
        colour = [c for c in found if not c[2]]
        causes = []
        if grey:
            causes.append(f"{len(grey)} of them have three equal channels: class ids saved as "
                          f"colour; save them single-channel (8-bit grey, e.g. "
                          f"Image.fromarray(ids, 'L'))")
        if colour:
            in_palette = float(np.mean([c[3] for c in colour]))
            if in_palette > 0.9:
                causes.append(f"{len(colour)} of them are colour-coded with the {ctx.kind} "
                              f"palette ({in_palette:.0%} of their pixels): colours, not ids")
            causes.append({
                "voc_aug": "VOC's SegmentationClass PNGs are palette images (mode P) whose "
                           "indices are the ids and are fine as they are; these were saved as "
                           "true colour (re-saved by an image tool?): take the original PNGs, "
                           "or map colours to ids",
                "isaid": f"iSAID masks come as colours: make id maps with {ctx.convert('isaid')}",
                "cityscapes": f"*_gtFine_color.png are for viewing: use the train ids "
                              f"*_gtFine_labelTrainIds.png made by {ctx.convert('cityscapes')}",
            }.get(ctx.kind, "map each colour to its class id "
                            "(jseg.data.converters.colours_to_ids)"))
        self.add("error", f"{len(found)} label(s) are colour images "
                 f"({', '.join(f'mode {m}' for m in modes)}), not single-channel class ids "
                 f"(8-bit grey or palette PNG); the loader refuses them",
                 *_examples(p for p, *_ in found), *[f"likely cause: {c}" for c in causes])

    def size_mismatch(self):
        found = self.tally.mismatch
        if not found:
            return
        examples = _examples(f"{s} is {sh[0]}x{sh[1]} (HxW), its image {i} is {ih[0]}x{ih[1]}"
                             for s, sh, i, ih, _ in found)
        rotated = [(i, o) for _, _, i, _, o in found if o != 1]
        cause = ""
        if rotated:
            cause = (f"likely cause: {len(rotated)} of these images have an EXIF orientation "
                     f"(e.g. {rotated[0][0]}: {rotated[0][1]}), which OpenCV applies when "
                     f"decoding; rotate their pixels and drop the tag (PIL.ImageOps."
                     f"exif_transpose) so that image and label agree")
        self.add("error", f"{len(found)} label(s) differ in size from their image (the loader "
                 f"refuses them)", *examples, cause)

    def values(self):
        """The out-of-range error; returns True when it already advised reduce_zero_label."""
        ctx, t = self.ctx, self.tally
        if not t.out_of_range:
            return False
        n = ctx.num_classes
        bad = sorted({v for _, vs in t.out_of_range for v in vs})  # as stored in the files
        shown = [int(ctx.lut[v]) for v in bad]
        pixels = int(t.raw_pixels[bad].sum())
        after = " after reduce_zero_label (file value - 1)" if ctx.reduce else ""
        lines = _examples(f"{p}: {_values(int(ctx.lut[v]) for v in vs)}"
                          for p, vs in t.out_of_range)
        causes, advised_reduce = self.value_causes(bad)
        check = (f"check data.reduce_zero_label (now {str(ctx.reduce).lower()}) and the class "
                 f"count ({n}: data.type / data.classes)")
        self.add("error", f"{len(t.out_of_range)} of {t.labels_read} label(s) hold values "
                 f"{_values(shown)}{after}: not a class id 0..{n - 1} nor the ignore index "
                 f"{IGNORE_INDEX} ({pixels:,} pixels, "
                 f"{_pct(pixels, int(t.raw_pixels.sum()))}); the loader refuses them",
                 *lines, *causes, ("if not: " if causes else "") + check)
        return advised_reduce

    def value_causes(self, bad):
        """Detail lines ("likely cause: ...", "fix: ...") for out-of-range values `bad` (as
        stored in the files), and whether they advise reduce_zero_label."""
        ctx, t = self.ctx, self.tally
        n, top = ctx.num_classes, max(bad)
        seg_names = [p for p, _ in t.out_of_range]
        label_ids = any(p.endswith("_labelIds.png") for p in seg_names)
        if (ctx.kind == "cityscapes" or label_ids) and top <= 33:
            suffix = (f" (data.seg_map_suffix is '{ctx.seg_map_suffix}')"
                      if ctx.seg_map_suffix.endswith("_labelIds.png") else "")
            return [f"likely cause: these are Cityscapes labelIds (0..33, the raw ids), not the "
                    f"19 train ids 0..18{suffix}",
                    f"fix: {ctx.convert('cityscapes')} (writes *_gtFine_labelTrainIds.png), "
                    f"then data.seg_map_suffix=_gtFine_labelTrainIds.png (the cityscapes "
                    f"default)"], False
        if ctx.kind == "coco_stuff164k" and top <= 181:
            return ["likely cause: these are raw COCO-Stuff ids (0..181), not the 171 train ids",
                    f"fix: {ctx.convert('coco_stuff164k')} (writes *_labelTrainIds.png), then "
                    f"data.seg_map_suffix=_labelTrainIds.png (the coco_stuff164k default)"], False
        if not ctx.reduce and top == n:
            return [f"likely cause: the values run up to {n}: ADE20K-style labels (0 = other / "
                    f"unlabelled, classes 1..{n})",
                    f"fix: data.reduce_zero_label=true (0 is then ignored and 1..{n} become "
                    f"0..{n - 1})"], True
        if ctx.kind == "isaid":
            return ["likely cause: iSAID colour masks not converted to ids",
                    f"fix: {ctx.convert('isaid')}"], False
        if len(set(bad)) > 32:
            return [f"likely cause: {len(set(bad))} distinct values up to {top}: grey images (a "
                    f"photo, or colours turned grey), not class ids"], False
        return [], False

    def ignored_only(self):
        ctx, t = self.ctx, self.tally
        found = t.all_ignore
        if not found:
            return
        after = " after reduce_zero_label" if ctx.reduce else ""
        cause = ""
        if ctx.reduce and all(vs == [0] for _, vs in found):
            cause = "likely cause: they are all 0, which reduce_zero_label ignores (empty masks?)"
        everything = len(found) == t.labels_read
        text = (f"all {len(found)} labels hold only the ignore index {IGNORE_INDEX}{after}: "
                f"nothing to learn" if everything else
                f"{len(found)} of {t.labels_read} label(s) hold only the ignore index "
                f"{IGNORE_INDEX}{after}: they teach nothing")
        self.add("error" if everything else "warning", text,
                 *_examples(f"{p} (values {_values(vs)})" for p, vs in found), cause)

    def reduce_setting(self, advised_reduce):
        ctx, t = self.ctx, self.tally
        if ctx.kind == "custom" or t.labels_read == 0:
            return
        zeros, total = int(t.raw_pixels[0]), int(t.raw_pixels.sum())
        default = DATASETS[ctx.kind].reduce_zero_label
        if default and not ctx.reduce and zeros and not advised_reduce:
            self.add("warning", f"data.reduce_zero_label is false, but {ctx.kind} labels use 0 "
                     f"for 'other' (its default is true): the {zeros:,} pixels of 0 "
                     f"({_pct(zeros, total)}) are trained as class 0 '{ctx.classes[0]}'",
                     "fix: data.reduce_zero_label=true (or drop the override)")
        if not default and ctx.reduce:
            self.add("warning", f"data.reduce_zero_label is true, but {ctx.kind} labels use 0 "
                     f"as a class ('{ctx.classes[0]}'): its {zeros:,} pixels "
                     f"({_pct(zeros, total)}) are ignored and every class id moves down by one",
                     "fix: data.reduce_zero_label=false (or drop the override)")

    def never_seen(self):
        ctx, t = self.ctx, self.tally
        if t.labels_read == 0:
            return
        pixels, _ = t.by_class()
        missing = [c for c in range(ctx.num_classes) if pixels[c] == 0]
        if not missing:
            return
        causes = []
        present = set(np.flatnonzero(t.raw_pixels).tolist())
        if present <= {0, IGNORE_INDEX} and IGNORE_INDEX in present and not ctx.reduce:
            causes.append(f"the labels hold only 0 and {IGNORE_INDEX}: a binary mask saved as "
                          f"0/255? {IGNORE_INDEX} is the ignore index; save the foreground "
                          f"as 1")
        n = ctx.num_classes
        if ctx.reduce and n < 256 and t.raw_pixels[0] and not t.raw_pixels[n] \
                and missing[-1] == n - 1:
            causes.append(f"with reduce_zero_label the file value {n} is class {n - 1}, and no "
                          f"label holds it while 0 (ignored) covers "
                          f"{_pct(int(t.raw_pixels[0]), int(t.raw_pixels.sum()))}: if the "
                          f"labels are 0-based (0 is a class), set data.reduce_zero_label=false")
        names = [f"{ctx.classes[c]} ({c})" for c in missing]
        self.add("warning", f"{len(missing)} of {n} classes never seen: "
                 f"{_fmt(names, NAMES)}", *[f"likely cause: {c}" for c in causes])


# ---------------------------------------------------------------------------
# The summary of one split.

def _summary(ctx, split, split_files, listing, tally):
    lst, t = listing, tally
    where = f"{lst.img_dir} (*{lst.img_suffix})"
    labels = ", ".join(lst.ann_dirs) + f" (*{lst.seg_map_suffix})" if lst.ann_dirs else "none"
    lines = [f"[{split}] images {where}", f"  labels {labels}"]
    if split_files:
        lines.append(f"  names from {', '.join(split_files)}")
    expected = ctx.expected.get(split)
    standard = (f"the {ctx.kind} {split} split has {expected:,}" if expected is not None
                else f"no standard count for {ctx.kind}" + (" (patches)" if ctx.kind == "isaid"
                                                            else ""))
    lines.append(f"  files: {lst.num_images:,} images, {lst.num_labels:,} labels, "
                 f"{len(lst.pairs):,} pairs; {standard}")
    if t.img_sizes:
        sizes = [f"{h}x{w} ({n:,})" for (h, w), n in t.img_sizes.most_common(3)]
        more = f" and {len(t.img_sizes) - 3} other sizes" if len(t.img_sizes) > 3 else ""
        lines.append(f"  image sizes (HxW): {', '.join(sizes)}{more}")
    if not lst.ann_dirs:
        lines.append(f"  no labels (data.{split}.ann_dir is null): only the images are checked")
        return lines
    if t.seg_modes:
        lines.append("  label files: " + ", ".join(f"{_MODES.get(m, m)} {n:,}" for m, n in
                                                    sorted(t.seg_modes.items())))
    if t.labels_read == 0:
        return lines
    pixels, labels = t.by_class()
    total = int(t.raw_pixels.sum())
    ignored = int(pixels[IGNORE_INDEX])
    labelled = int(pixels[:ctx.num_classes].sum())
    after = " after reduce_zero_label" if ctx.reduce else ""
    lines.append(f"  label pixels: {total:,} in {t.labels_read:,} labels; ignored "
                 f"({IGNORE_INDEX}{after}) {ignored:,} ({_pct(ignored, total)})")
    seen = int((pixels[:ctx.num_classes] > 0).sum())
    lines.append(f"  classes{after}: {seen} of {ctx.num_classes} seen; share = of the labelled "
                 f"pixels, labels = labels holding the class")
    rows = [("id", "class", "pixels", "share", "labels", "")]
    for c in range(ctx.num_classes):
        p = int(pixels[c])
        rows.append((str(c), ctx.classes[c], f"{p:,}", _pct(p, labelled) if p else "-",
                     f"{int(labels[c]):,}", "" if p else "never seen"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [r[0].rjust(widths[0]), r[1].ljust(widths[1])] + \
            [v.rjust(w) for v, w in zip(r[2:5], widths[2:5])] + [r[5]]
        lines.append(("    " + "  ".join(cells)).rstrip())
    return lines


# ---------------------------------------------------------------------------
# The whole check.

@dataclass
class _Context:
    """The dataset settings every split shares."""
    kind: str
    data_root: str
    classes: tuple
    palette: tuple
    img_suffix: str
    seg_map_suffix: str
    reduce: bool
    hint: str
    expected: dict

    @property
    def num_classes(self):
        return len(self.classes)

    @property
    def lut(self):
        """Value in the file -> value the loader trains on (reduce_zero_label applied)."""
        values = np.arange(256, dtype=np.uint8)
        return reduce_zero_label(values) if self.reduce else values

    def convert(self, kind):
        """The converter command for dataset `kind`, with this data_root where it fits."""
        args = {"cityscapes": self.data_root, "coco_stuff164k": self.data_root,
                "isaid": "RAW_ROOT --out-dir " + self.data_root}
        return f"python {CONVERTERS}/{kind}.py {args.get(kind, '...')}"


def _context(data):
    s = dataset_settings(data)
    info = DATASETS.get(data["type"])
    counts = info.num_samples if info is not None and info.num_samples else (None, None)
    return _Context(data["type"], data["data_root"], s["classes"], s["palette"], s["img_suffix"],
                    s["seg_map_suffix"], bool(s["reduce_zero_label"]), s["hint"],
                    {"train": counts[0], "val": counts[1]})


def _list_split(ctx, data, split):
    """The SampleList of `split`; DataError when there is nothing to check."""
    part = data[split]
    img_dir = part["img_dir"]
    img_path = img_dir if os.path.isabs(img_dir) else os.path.join(ctx.data_root, img_dir)
    if not os.path.isdir(img_path):
        raise DataError(f"{img_path} does not exist: check data.data_root and "
                        f"data.{split}.img_dir")

    def no_images():
        count, names = _peek(img_path)
        other = (f"; it holds {count} other file(s), e.g. {_fmt(names)}: check "
                 f"data.img_suffix" if count else "")
        return DataError(f"{img_path} holds no images (*{ctx.img_suffix}): check "
                         f"data.data_root{other}")

    scanned = part.get("split") is None
    try:
        listing = list_samples(ctx.data_root, img_dir, part.get("ann_dir"), part.get("split"),
                               img_suffix=ctx.img_suffix, seg_map_suffix=ctx.seg_map_suffix,
                               name=ctx.kind)
    except DataError:  # a missing label folder: say first if there is nothing at all
        if scanned and not _peek(img_path, limit=1, suffix=ctx.img_suffix)[0]:
            raise no_images() from None
        raise
    if listing.num_images == 0:
        if scanned:
            raise no_images()
        raise DataError(f"none of the images named in data.{split}.split exist in "
                        f"{img_path} (*{ctx.img_suffix}): check data.data_root")
    return listing


def check_dataset(cfg, splits=("train", "val"), workers=1, progress=False, source=None):
    """Check the dataset of config `cfg` (from load_config): a Report.

    `splits`: which of "train" and "val"; `workers`: processes reading the files (1: this
    one); `progress`: show a tqdm bar on stderr; `source`: the config file, for the header.
    A data_root or image folder that is missing or holds no images, a missing label folder
    or split file raise DataError (nothing to check); everything else is a finding:

    - files: images and labels found, against the benchmark's standard split size
      (`DatasetInfo.num_samples`; none for iSAID patches and custom data). A different
      count is a warning, since a subset can be intended;
    - unpaired files (images without a label, labels without an image, names of a split
      file with no file), unreadable or truncated files, labels of another size than their
      image (an image's EXIF orientation is applied, as OpenCV does when decoding it),
      colour label PNGs (the loader needs single-channel class ids), label values that are
      not a class id after reduce_zero_label nor the ignore index 255, with the likely
      cause: these are errors, as the loader refuses the data or trains on the wrong ids;
    - the pixels and labels of every class after reduce_zero_label (as the loader applies
      it), classes never seen, labels with ignored pixels only, a reduce_zero_label setting
      that does not fit the labels: warnings.

    Images are not decoded: Pillow reads their size from the header, and the end of the
    file is checked for the JPEG / PNG end marker (a file without one is decoded as the
    loader would, to tell a truncated file from one with trailing bytes). Labels are
    decoded by the loader's own `read_label`.
    """
    data = cfg["data"]
    ctx = _context(data)
    if not os.path.isdir(ctx.data_root):
        fix = f"{ctx.hint}, or set" if ctx.hint else "set"
        raise DataError(f"data root {ctx.data_root} does not exist: {fix} data.data_root=PATH")
    listings = {split: _list_split(ctx, data, split) for split in splits}  # all before reading

    lines = [f"dataset check of {source}" if source else "dataset check",
             f"dataset: {ctx.kind}, {ctx.num_classes} classes, data_root {ctx.data_root}",
             f"labels: reduce_zero_label {str(ctx.reduce).lower()}"
             + (" (file value 0 -> ignored, v -> v - 1)" if ctx.reduce else "")
             + f", ignore index {IGNORE_INDEX}", ""]
    findings = []
    read = partial(inspect_pair, palette=ctx.palette)
    for split, listing in listings.items():
        tally = _Tally(ctx.lut, ctx.num_classes)
        for pair, info in _read_all(listing.pairs, read, workers, progress, f"reading {split}"):
            tally.add(pair, info)
        names = data[split].get("split") or []
        names = [names] if isinstance(names, str) else list(names)  # the split files
        lines += _summary(ctx, split, names, listing, tally) + [""]
        findings += _SplitCheck(ctx, split, listing, tally).run()
    return Report(lines, findings)
