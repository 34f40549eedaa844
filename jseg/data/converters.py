"""Shared pieces of the dataset converters in tools/dataset_converters/.

The converters turn raw benchmark downloads into the layouts of `jseg.data.datasets`.
They are restartable: every output file is written to a hidden temporary file next to
it and then renamed over the final name (`os.replace`, atomic on one file system), so an
output that exists is complete, and a second run skips it. A temporary file left by an
interrupted run never has the output's name or suffix, so no dataset scan picks it up,
and it is overwritten when that output is made again. PNG outputs written by other tools
are also checked for their end chunk, so a half-written one is made again.

Only numpy, OpenCV, Pillow and tqdm are imported here (no Jittor).
"""
import multiprocessing as mp
import os
import signal
import sys

import cv2
import numpy as np

from jseg.utils.atomic import atomic_write

__all__ = ["ConvertError", "require_dir", "require_file", "find_files", "is_complete",
           "write_bytes", "write_png", "write_lines", "encode_png", "decode_image", "id_lut",
           "colours_to_ids", "decode_coco_rle", "run_tasks", "run_cli"]

IGNORE_INDEX = 255
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the empty IEND chunk every PNG ends with


class ConvertError(Exception):
    """Raw data missing or laid out wrongly; the message says what was expected and the fix."""


# ---------------------------------------------------------------------------
# Checking the raw layout.

def require_dir(path, what, fix=""):
    """Return `path` if it is a folder, else raise ConvertError naming `what` and `fix`."""
    if not os.path.isdir(path):
        raise ConvertError(f"{what} {path} does not exist" + (f"; {fix}" if fix else ""))
    return path


def require_file(path, what, fix=""):
    if not os.path.isfile(path):
        raise ConvertError(f"{what} {path} does not exist" + (f"; {fix}" if fix else ""))
    return path


def find_files(root, suffix):
    """Paths relative to `root` of the files under it whose names end with `suffix`, sorted."""
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        found += [os.path.normpath(os.path.join(rel, f)) for f in files
                  if f.endswith(suffix) and not f.startswith(".")]
    return sorted(found)


# ---------------------------------------------------------------------------
# Restartable, atomic writing.

def _temp_name(path):
    # Hidden, fixed per output (so a stale one is overwritten, not accumulated), and ending
    # in .tmp so that no dataset suffix (.png, _labelTrainIds.png) matches it.
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.tmp")


def is_complete(path):
    """True if `path` exists, is not empty and, for a PNG, ends with the IEND chunk."""
    try:
        size = os.path.getsize(path)
    except OSError:
        return False
    if size == 0:
        return False
    if path.lower().endswith(".png"):
        if size < len(_PNG_SIGNATURE) + len(_PNG_END):
            return False
        with open(path, "rb") as f:
            head = f.read(len(_PNG_SIGNATURE))
            f.seek(-len(_PNG_END), os.SEEK_END)
            tail = f.read()
        return head == _PNG_SIGNATURE and tail == _PNG_END
    return True


def write_bytes(path, data):
    """Write `data` to `path` through a temporary file and an atomic rename (no fsync: a
    converted file can be made again)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_write(path, temp=_temp_name(path), durable=False) as f:
        f.write(data)


def encode_png(array, bgr=False):
    """PNG bytes of an (H, W) uint8 label map (8-bit grey) or an (H, W, 3) uint8 image.

    Colour images are RGB, or BGR (as OpenCV decodes them) when `bgr` is set.
    """
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"PNG data must be uint8, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 3:
        if not bgr:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim != 2:
        raise ValueError(f"PNG data must be (H, W) or (H, W, 3), got shape {array.shape}")
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise ValueError(f"OpenCV could not encode an array of shape {array.shape} as PNG")
    return buf.tobytes()


def write_png(path, array, bgr=False):
    write_bytes(path, encode_png(array, bgr))


def write_lines(path, lines):
    """Write one name per line (a split list), atomically; an identical file is left alone."""
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except OSError:
        pass
    write_bytes(path, data)


def decode_image(data, source, bgr=False):
    """Decode image bytes with OpenCV into (H, W, 3) uint8, RGB (or BGR if `bgr`).

    Grey images come back as three equal channels and an alpha channel is dropped, as
    Pillow's convert('RGB') does. Bytes that cannot be decoded raise ConvertError naming
    `source`.
    """
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if img is None:
        raise ConvertError(f"cannot decode image {source} ({len(data)} bytes); re-download "
                           f"or re-extract it")
    return img if bgr else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------
# Label mappings.

def id_lut(mapping, default=IGNORE_INDEX):
    """A 256-entry uint8 lookup table: lut[raw_id] = train id, `default` for ids not in `mapping`.

    Apply it with `lut[label]` to a uint8 label map.
    """
    lut = np.full(256, default, np.uint8)
    for src, dst in mapping.items():
        if not (0 <= src < 256 and 0 <= dst < 256):
            raise ValueError(f"id mapping {src} -> {dst} does not fit in 0..255")
        lut[src] = dst
    return lut


def colours_to_ids(rgb, palette, unknown=IGNORE_INDEX):
    """Map an (H, W, 3) uint8 RGB colour mask to (H, W) uint8 ids by exact colour match.

    palette[i] is the RGB colour of id i. Colours not in the palette become `unknown`.
    Returns (ids, number of pixels with an unknown colour).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a colour mask must be (H, W, 3), got shape {rgb.shape}")
    # One int per pixel: 0xRRGGBB.
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) \
        | rgb[..., 2].astype(np.int32)
    keys = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], np.int32)
    order = np.argsort(keys)
    keys, ids = keys[order], np.arange(len(palette), dtype=np.uint8)[order]
    pos = np.clip(np.searchsorted(keys, codes), 0, len(keys) - 1)
    found = keys[pos] == codes
    out = np.where(found, ids[pos], np.uint8(unknown)).astype(np.uint8)
    return out, int((~found).sum())


def _rle_string_counts(text):
    """Run lengths from a COCO compressed RLE string (the counts of pycocotools' masks).

    Each count is a signed little-endian base-32 number, 5 bits a character offset by 48,
    bit 0x20 meaning "more characters follow"; from the fourth count on, each is stored as
    the difference to the count two places before it.
    """
    c = np.frombuffer(text.encode("ascii"), np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    if c.min() < 0 or c.max() > 63:
        raise ValueError("characters outside the RLE alphabet")
    last = (c & 0x20) == 0                       # last character of each number
    if not last[-1]:
        raise ValueError("the RLE string stops inside a number")
    group = np.concatenate([[0], np.cumsum(last)[:-1]])   # number index of each character
    start = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    k = np.arange(c.size) - start[group]          # position within its number
    x = np.zeros(int(last.sum()), np.int64)
    np.add.at(x, group, (c & 0x1F) << (5 * k))
    ends = np.flatnonzero(last)
    neg = (c[ends] & 0x10) != 0                   # sign bit of the last 5-bit chunk
    x[neg] -= np.int64(1) << (5 * (k[ends][neg] + 1))
    counts = x.copy()
    if x.size > 3:                                # counts[m] = x[m] + counts[m - 2], m >= 3
        counts[3::2] = x[1] + np.cumsum(x[3::2])
    if x.size > 4:
        counts[4::2] = x[2] + np.cumsum(x[4::2])
    return counts


def decode_coco_rle(rle):
    """Decode a COCO-style RLE dict {'size': [h, w], 'counts': str or list} to (h, w) bool.

    Runs alternate 0s and 1s, starting with 0s, over the pixels in column-major order.
    Raises ValueError if the runs do not cover exactly h * w pixels.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    counts = _rle_string_counts(counts) if isinstance(counts, str) else \
        np.asarray(counts, np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE runs cover {int(counts.sum())} pixels with "
                         f"{int((counts < 0).sum())} negative runs; expected {h}x{w} pixels")
    values = np.zeros(counts.size, bool)
    values[1::2] = True
    return np.repeat(values, counts).reshape(w, h).T


# ---------------------------------------------------------------------------
# Running many independent jobs with a progress bar.

def _ignore_sigint():
    """Pool initializer: Ctrl-C in a terminal reaches the whole process group; the main
    process says "interrupted" and ends the pool, the workers stay quiet."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_tasks(fn, items, nproc=1, desc="converting", unit="file"):
    """Apply `fn` to every item, in `nproc` processes when > 1, showing a tqdm progress bar.

    Returns the results in the order of `items`. An exception in a job (a ConvertError for a
    bad file) stops the run and is raised here.
    """
    from tqdm import tqdm

    items = list(items)
    results = []
    with tqdm(total=len(items), desc=desc, unit=unit, mininterval=0.5,
              dynamic_ncols=True) as bar:
        if nproc <= 1 or len(items) <= 1:
            for item in items:
                results.append(fn(item))
                bar.update()
        else:
            chunk = max(1, min(16, len(items) // (nproc * 8)))
            method = "fork" if "fork" in mp.get_all_start_methods() else None
            with mp.get_context(method).Pool(nproc, initializer=_ignore_sigint) as pool:
                for res in pool.imap(fn, items, chunksize=chunk):
                    results.append(res)
                    bar.update()
    return results


def converter_parser(doc, overwrite_help):
    """The command line of a converter script: description (first line of `doc`) and
    epilog (the rest after the first paragraph), plus --nproc and --overwrite; the caller
    adds its positional arguments. Bad options: one `error:` line, exit 1."""
    from jseg.utils.cli import ToolParser

    parser = ToolParser(doc, epilog=doc.split("\n\n", 1)[1])
    parser.add_argument("--nproc", type=int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    return parser


def run_cli(job):
    """Run `job()` for a command-line tool: print the summary it returns, give an exit code.

    A ConvertError (bad or missing raw data) becomes one `error: ...` line on stderr and
    exit code 1, like every bad input; other exceptions keep their traceback.
    """
    try:
        summary = job()
    except ConvertError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary:
        print(summary, flush=True)
    return 0
