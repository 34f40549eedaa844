"""A small synthetic segmentation dataset in the ADE20K layout, for demos and tests.

    <out>/images/training/demo_00000.jpg        <out>/annotations/training/demo_00000.png
    <out>/images/validation/demo_00000.jpg      <out>/annotations/validation/demo_00000.png
    <out>/meta.json, <out>/README.txt

Labels: 0 = unlabelled (ignored after reduce_zero_label, as in ADE20K), then
1 grass, 2 water, 3 disc, 4 box, 5 triangle, 6 blob (class ids 0..5 after
reduce_zero_label; names and colours in `jseg.data.palettes.DEMO_CLASSES`).
What a scene holds: `render_sample`.

Every image is a pure function of (seed, split, index): generation is
deterministic, files are written atomically, existing files are kept, so an
interrupted run can simply be started again.
"""
import json
import math
import os

import cv2
import numpy as np

from jseg.utils.atomic import atomic_write

from .palettes import DEMO_CLASSES, DEMO_PALETTE

__all__ = ["DEMO_CLASSES", "DEMO_PALETTE", "DemoSpec", "render_sample", "make_demo_data"]

_VERSION = 2  # bump when the drawing changes; meta.json records it
_SPLITS = {"training": 0, "validation": 1}
UNLABELLED, GRASS, WATER, DISC, BOX, TRIANGLE, BLOB = range(7)  # values in the label files
_OBJECTS = (DISC, BOX, TRIANGLE, BLOB)
_CLASS_HUE = {DISC: 0, BOX: 25, TRIANGLE: 150, BLOB: 130}  # OpenCV hue units (0..179)


class DemoSpec(dict):
    """Generation parameters: num_train, num_val, size (long side), seed."""

    def __init__(self, num_train=300, num_val=40, size=128, seed=0):
        if num_train < 0 or num_val < 0:
            raise ValueError(f"image counts must be >= 0, got {num_train} and {num_val}")
        if size < 32:
            raise ValueError(f"size (long side) must be at least 32 pixels, got {size}")
        super().__init__(num_train=int(num_train), num_val=int(num_val), size=int(size),
                         seed=int(seed), version=_VERSION)


# ---------------------------------------------------------------------------
# Drawing helpers; all randomness from `rng`.

def _hsv_colour(rng, hue=None, hue_spread=12):
    """An RGB colour (float32 (3,)) with a hue near `hue` (or any hue)."""
    h = rng.uniform(0, 180) if hue is None else (hue + rng.uniform(-hue_spread, hue_spread)) % 180
    s = rng.uniform(110, 255)
    v = rng.uniform(110, 250)
    hsv = np.array([[[h, s, v]]], np.float32)
    hsv[..., 0] *= 2.0  # float HSV in OpenCV uses degrees
    hsv[..., 1:] /= 255.0
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0] * 255.0


def _smooth_noise(rng, h, w, cell_h, cell_w):
    """Value noise in [-1, 1]: random values on a coarse grid, resized up bilinearly."""
    gh, gw = max(2, h // cell_h + 2), max(2, w // cell_w + 2)
    grid = rng.uniform(-1, 1, size=(gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_LINEAR)


def _grass(rng, h, w):
    base = _hsv_colour(rng, hue=rng.uniform(35, 80), hue_spread=0)
    blades = _smooth_noise(rng, h, w, cell_h=rng.integers(6, 12), cell_w=1)  # vertical streaks
    patches = _smooth_noise(rng, h, w, 16, 16)
    shade = 1.0 + 0.28 * blades + 0.12 * patches
    tint = np.array([1.0, 1.0, 0.8], np.float32) + 0.15 * patches[..., None] * \
        np.array([0.6, 0.2, -0.4], np.float32)
    return base * shade[..., None] * tint


def _water(rng, h, w):
    base = _hsv_colour(rng, hue=rng.uniform(75, 115), hue_spread=0)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    f1, f2 = rng.uniform(0.35, 0.7), rng.uniform(0.03, 0.08)
    ripple = np.sin(f1 * yy + 2.5 * np.sin(f2 * xx + rng.uniform(0, 6.3)) + rng.uniform(0, 6.3))
    swell = _smooth_noise(rng, h, w, 24, 48)
    shade = 1.0 + 0.10 * ripple + 0.10 * swell
    glint = np.clip(ripple - 0.85, 0, None) * 1.6  # small bright crests
    return base * shade[..., None] + 60.0 * glint[..., None]


def _texture(rng, h, w, colour):
    """An object's appearance over the whole canvas: plain, stripes, checks or gradient."""
    kind = rng.integers(4)
    other = _hsv_colour(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # plain
        t = np.zeros((h, w), np.float32)
    elif kind == 1:  # stripes at a random angle
        a, period = rng.uniform(0, math.pi), rng.uniform(4, 9)
        t = (np.sin((xx * math.cos(a) + yy * math.sin(a)) * 2 * math.pi / period) > 0)
        t = t.astype(np.float32) * 0.6
    elif kind == 2:  # checks
        c = rng.integers(3, 7)
        t = (((xx // c) + (yy // c)) % 2).astype(np.float32) * 0.5
    else:  # gradient
        a = rng.uniform(0, 2 * math.pi)
        g = xx * math.cos(a) + yy * math.sin(a)
        t = (g - g.min()) / max(float(np.ptp(g)), 1.0)
    img = colour * (1 - t[..., None]) + other * t[..., None]
    return img * (1.0 + 0.08 * _smooth_noise(rng, h, w, 4, 4))[..., None]


def _shape_mask(rng, cls, h, w, cx, cy, r):
    """A uint8 mask of one object of class `cls`, centred at (cx, cy) with size ~r."""
    mask = np.zeros((h, w), np.uint8)
    rot = rng.uniform(0, 2 * math.pi)
    if cls == DISC:
        axes = (int(round(r)), int(round(r * rng.uniform(0.85, 1.0))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, math.degrees(rot), 0, 360, 1, -1)
        return mask
    if cls == BOX:
        aspect = rng.uniform(0.45, 1.0)
        rect = ((float(cx), float(cy)), (2 * r, 2 * r * aspect), math.degrees(rot))
        pts = cv2.boxPoints(rect)
    elif cls == TRIANGLE:
        angles = rot + np.array([0, 2 * math.pi / 3, 4 * math.pi / 3])
        angles += rng.uniform(-0.3, 0.3, size=3)
        radii = r * rng.uniform(1.2, 1.5, size=3)  # about the area of the other shapes
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
    else:  # BLOB: a lumpy closed curve, radius modulated by a few harmonics
        theta = np.linspace(0, 2 * math.pi, 48, endpoint=False)
        rad = np.ones_like(theta)
        for k in (2, 3, 4):
            rad += rng.uniform(0.1, 0.22) * np.sin(k * theta + rng.uniform(0, 2 * math.pi))
        rad *= r
        pts = np.stack([cx + rad * np.cos(theta + rot), cy + rad * np.sin(theta + rot)], 1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def render_sample(seed, split, index, size=128):
    """The (image RGB uint8 (H, W, 3), label uint8 (H, W)) of one demo sample.

    H x W is 0.75 size x size (landscape, with probability 0.8) or size x 0.75 size. Each
    scene is a textured background, grass (green to teal, fine vertical blades) and/or water
    (teal to blue, smooth horizontal ripples) split by a wavy shore, with 2 to 6 objects of
    four shapes drawn on top in random order, so they overlap. Object colours are drawn from
    a hue family of their class half of the time and from any hue otherwise, textures
    (plain, stripes, checks, gradient) are random, so colour alone does not give the class:
    shape and context are needed. Some objects get an unlabelled outline and some scenes an
    unlabelled clutter patch. Global lighting, noise and a slight blur finish the image
    (`make_demo_data` then writes it as a JPEG).
    """
    rng = np.random.default_rng([int(seed), _SPLITS[split], int(index), _VERSION])
    long_side = int(size)
    short_side = int(round(long_side * 0.75))
    if rng.random() < 0.8:
        h, w = short_side, long_side  # landscape
    else:
        h, w = long_side, short_side  # portrait
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # Background: grass, water, or both split by a wavy shore line.
    layout = rng.random()
    if layout < 0.2:
        water = np.zeros((h, w), bool)
    elif layout < 0.35:
        water = np.ones((h, w), bool)
    else:
        a = rng.uniform(-0.6, 0.6) + (math.pi / 2 if rng.random() < 0.75 else 0.0)
        along = xx * math.cos(a) + yy * math.sin(a)  # distance across the shore
        across = -xx * math.sin(a) + yy * math.cos(a)
        lo, hi = float(along.min()), float(along.max())
        shore = lo + rng.uniform(0.3, 0.7) * (hi - lo)
        wave = rng.uniform(2, 7) * np.sin(across * rng.uniform(0.04, 0.12) + rng.uniform(0, 6.3))
        water = (along > shore + wave) if rng.random() < 0.5 else (along < shore + wave)
    label = np.where(water, WATER, GRASS).astype(np.uint8)
    img = np.where(water[..., None], _water(rng, h, w), _grass(rng, h, w)).astype(np.float32)

    # Unlabelled clutter patch (label 0), e.g. a rock nobody annotated.
    if rng.random() < 0.3:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        axes = (int(rng.uniform(4, 10)), int(rng.uniform(3, 8)))
        m = np.zeros((h, w), np.uint8)
        cv2.ellipse(m, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        grey = rng.uniform(70, 160) + 25 * _smooth_noise(rng, h, w, 2, 2)
        img = np.where(m[..., None] > 0, grey[..., None], img)
        label[m > 0] = UNLABELLED

    # Objects, painted in order: later ones occlude earlier ones.
    for _ in range(int(rng.integers(2, 7))):
        cls = int(_OBJECTS[rng.integers(len(_OBJECTS))])
        r = rng.uniform(0.07, 0.26) * min(h, w)
        cx = rng.uniform(-0.1 * w, 1.1 * w)
        cy = rng.uniform(-0.1 * h, 1.1 * h)
        mask = _shape_mask(rng, cls, h, w, cx, cy, r) > 0
        if not mask.any():
            continue
        hue = _CLASS_HUE[cls] if rng.random() < 0.5 else None
        look = _texture(rng, h, w, _hsv_colour(rng, hue))
        img = np.where(mask[..., None], look, img)
        label[mask] = cls
        if rng.random() < 0.3:  # an unlabelled outline, like uncertain annotation borders
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
            label[ring & ~mask] = UNLABELLED

    # Camera: lighting gradient, noise, slight blur.
    a = rng.uniform(0, 2 * math.pi)
    light = 1.0 + rng.uniform(0.0, 0.25) * ((xx * math.cos(a) + yy * math.sin(a)) / max(h, w) - 0.5)
    img = img * light[..., None] + rng.normal(0, 4.0, size=img.shape)
    img = cv2.GaussianBlur(np.clip(img, 0, 255).astype(np.float32), (3, 3), 0.6)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), label


# ---------------------------------------------------------------------------
# Writing the dataset.

def _write_atomic(path, data):
    with atomic_write(path, durable=False) as f:  # demo data can be made again
        f.write(data)


def _encode(ext, array, params=()):
    ok, buf = cv2.imencode(ext, array, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {ext} image")
    return buf.tobytes()


README = """Synthetic demo data for jseg (made by tools/make_demo_data.py, not a real benchmark).

Layout as ADE20K: images/{training,validation}/*.jpg, annotations/{training,validation}/*.png.
Label files: 0 = unlabelled, 1..6 = grass, water, disc, box, triangle, blob.
Use reduce_zero_label: true (0 becomes the ignore index 255, classes become 0..5).
Every image is drawn from (seed, split, index); see meta.json for the settings.
"""


def make_demo_data(out, num_train=300, num_val=40, size=128, seed=0, log=None):
    """Write the demo set under `out`; returns {"written": n, "kept": m, "out": out}.

    Files already present are kept (they were written atomically). If `out` holds a
    demo set made with other settings, raises ValueError instead of mixing them.
    """
    spec = DemoSpec(num_train, num_val, size, seed)
    os.makedirs(out, exist_ok=True)
    meta_path = os.path.join(out, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            old = json.load(f)
        if old.get("params") != dict(spec):
            raise ValueError(f"{out} already holds demo data made with {old.get('params')}, "
                             f"not {dict(spec)}; delete it or choose another --out")
    meta = {"params": dict(spec), "classes": list(DEMO_CLASSES),
            "palette": [list(c) for c in DEMO_PALETTE], "label_values": "0 unlabelled, "
            + ", ".join(f"{i + 1} {c}" for i, c in enumerate(DEMO_CLASSES)),
            "reduce_zero_label": True}
    _write_atomic(meta_path, (json.dumps(meta, indent=1) + "\n").encode())
    _write_atomic(os.path.join(out, "README.txt"), README.encode())
    written = kept = 0
    for split, count in (("training", spec["num_train"]), ("validation", spec["num_val"])):
        img_dir = os.path.join(out, "images", split)
        ann_dir = os.path.join(out, "annotations", split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(count):
            img_path = os.path.join(img_dir, f"demo_{i:05d}.jpg")
            ann_path = os.path.join(ann_dir, f"demo_{i:05d}.png")
            if os.path.exists(img_path) and os.path.exists(ann_path):
                kept += 1
                continue
            img, label = render_sample(spec["seed"], split, i, spec["size"])
            _write_atomic(img_path, _encode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                            (cv2.IMWRITE_JPEG_QUALITY, 92)))
            _write_atomic(ann_path, _encode(".png", label, (cv2.IMWRITE_PNG_COMPRESSION, 6)))
            written += 1
            if log is not None and written % 50 == 0:
                log(f"{split}: {i + 1}/{count}")
    return {"written": written, "kept": kept, "out": out}
