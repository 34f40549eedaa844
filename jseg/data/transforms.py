"""Data transforms with mmsegmentation semantics, driven by an explicit numpy Generator.

A transform is called as `t(results, rng)` and returns `results`, a dict with

    img          (H, W, 3) image; uint8 until Normalize, float32 after it
    seg          (H, W) uint8 label map, or None / absent (test time: labels stay untouched)
    ori_shape    (H, W) of the file
    img_shape    (h, w) of the valid image after resizing (padding excluded)
    pad_shape    (h, w) of the array after padding
    scale_factor (w_scale, h_scale) from the file to img_shape
    flip         whether the image was flipped horizontally

Random transforms draw only from `rng`, never from a global RNG, so a sample's augmentation
is a pure function of its seed. The numbers follow mmcv 2.x / mmsegmentation 1.x (each
transform's docstring); label maps are always resized nearest-neighbour.
"""
import cv2
import numpy as np

__all__ = ["Compose", "Resize", "RandomResize", "RandomCrop", "RandomFlip",
           "PhotoMetricDistortion", "Normalize", "Pad", "ResizeToMultiple",
           "rescale_size", "scale_size", "imresize", "build_train_pipeline",
           "build_test_pipeline", "build_tta_pipelines", "restore_prediction"]

_INTERP = {"nearest": cv2.INTER_NEAREST, "bilinear": cv2.INTER_LINEAR,
           "bicubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


def scale_size(size, factor):
    """(w, h) scaled by a factor (or (fw, fh)), rounded half up as mmcv does, at least 1."""
    fw, fh = (factor, factor) if np.isscalar(factor) else factor
    w, h = size
    return max(1, int(w * float(fw) + 0.5)), max(1, int(h * float(fh) + 0.5))


def rescale_size(size, scale):
    """New (w, h) and factor for a keep-ratio resize of `size` = (w, h).

    `scale` is a number (the factor itself) or a pair: the image becomes as large
    as possible with its long edge <= max(scale) and short edge <= min(scale), i.e.
    factor = min(long_target / long_edge, short_target / short_edge) and the new size
    (int(w * factor + 0.5), int(h * factor + 0.5)) as mmcv's `rescale_size`, except that
    every side is at least 1 pixel, where mmcv rounds a thin image's side to 0
    (1 row * 0.41 + 0.5 -> 0) and OpenCV then fails.
    """
    w, h = size
    if np.isscalar(scale):
        if scale <= 0:
            raise ValueError(f"scale factor must be positive, got {scale}")
        factor = float(scale)
    else:
        long_t, short_t = max(scale), min(scale)
        factor = min(long_t / max(h, w), short_t / min(h, w))
    return scale_size((w, h), factor), factor


def imresize(img, size, interpolation="bilinear"):
    """cv2.resize to `size` = (w, h); a no-op copy-free return when the size already fits."""
    h, w = img.shape[:2]
    if (w, h) == tuple(size):
        return img
    return cv2.resize(img, tuple(int(s) for s in size), interpolation=_INTERP[interpolation])


def _image_hw(results):
    """(h, w) of results["img"], which must have pixels to be resized."""
    h, w = results["img"].shape[:2]
    if h == 0 or w == 0:
        raise ValueError(f"cannot resize: the {h}x{w} image has no pixels (height x width)")
    return h, w


def _fits(size, scale):
    """Whether `size` = (w, h) lies within the keep-ratio bound `scale` = (long, short)."""
    return max(size) <= max(scale) and min(size) <= min(scale)


def _as_hw(size):
    if isinstance(size, int):
        return size, size
    if len(size) != 2:
        raise ValueError(f"expected (h, w), got {size!r}")
    return int(size[0]), int(size[1])


class Compose:
    """Apply transforms in order; `pipeline(results, rng)`."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, results, rng=None):
        results.setdefault("ori_shape", tuple(results["img"].shape[:2]))
        results.setdefault("img_shape", tuple(results["img"].shape[:2]))
        results.setdefault("pad_shape", tuple(results["img"].shape[:2]))
        results.setdefault("scale_factor", (1.0, 1.0))
        results.setdefault("flip", False)
        for t in self.transforms:
            results = t(results, rng)
        return results

    def __repr__(self):
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}])"


def _need_rng(rng, who):
    if rng is None:
        raise ValueError(f"{who} is random: pass a numpy Generator, e.g. np.random.default_rng(0)")
    return rng


class Resize:
    """Deterministic resize of img (bilinear) and seg (nearest).

    `scale` is (w, h) or, with keep_ratio, the (long, short) bound; alternatively
    `scale_factor` multiplies the current size (keep_ratio rescales by the factor,
    as mmcv's Resize(scale_factor=..., keep_ratio=True) does for test-time scales).

    `max_scale` (a (long, short) bound such as test_scale; only with a number
    scale_factor and keep_ratio) caps a scale_factor resize: an image that fits
    within max_scale is scaled by the factor as above (mmseg 1.x), a larger one is
    resized keep-ratio into max_scale * scale_factor instead (mmseg 0.x's
    MultiScaleFlipAug(img_scale=max_scale)). Why: without it the result grows with
    the original image, and memory with the square of its size (a 5000x5000 photo
    at factor 1.75 ran out of memory at 23 GB).
    """

    def __init__(self, scale=None, scale_factor=None, keep_ratio=True,
                 interpolation="bilinear", max_scale=None):
        if (scale is None) == (scale_factor is None):
            raise ValueError("give exactly one of scale and scale_factor")
        if max_scale is not None and not (np.isscalar(scale_factor) and keep_ratio):
            raise ValueError(f"max_scale {max_scale} caps a keep-ratio resize by a number "
                             f"scale_factor; got scale_factor={scale_factor}, "
                             f"keep_ratio={keep_ratio}")
        self.scale = tuple(scale) if scale is not None else None
        self.scale_factor = scale_factor
        self.keep_ratio = keep_ratio
        self.interpolation = interpolation
        self.max_scale = tuple(max_scale) if max_scale is not None else None

    def target(self, h, w):
        """The (w, h) the image of size (h, w) is resized to."""
        scale = self.scale
        if scale is None and self.max_scale is not None and not _fits((w, h), self.max_scale):
            f = float(self.scale_factor)
            scale = (int(self.max_scale[0] * f), int(self.max_scale[1] * f))
        elif scale is None:  # mmcv: scale = size * factor, then (keep_ratio) rescale to fit it
            scale = scale_size((w, h), self.scale_factor)
        if self.keep_ratio:
            return rescale_size((w, h), scale)[0]
        return scale

    def __call__(self, results, rng=None):
        return _resize(results, self.target(*_image_hw(results)), self.interpolation)

    def __repr__(self):
        what = f"scale={self.scale}" if self.scale else f"scale_factor={self.scale_factor}"
        cap = f", max_scale={self.max_scale}" if self.max_scale else ""
        return f"Resize({what}, keep_ratio={self.keep_ratio}{cap})"


def _resize(results, size, interpolation="bilinear"):
    img = results["img"]
    h, w = img.shape[:2]
    results["img"] = imresize(img, size, interpolation)
    if results.get("seg") is not None:
        results["seg"] = imresize(results["seg"], size, "nearest")
    new_h, new_w = results["img"].shape[:2]
    sw, sh = results.get("scale_factor", (1.0, 1.0))
    results["scale_factor"] = (sw * new_w / w, sh * new_h / h)
    results["img_shape"] = results["pad_shape"] = (new_h, new_w)
    return results


class RandomResize:
    """Resize to `scale` times a ratio drawn from U[ratio_range) (mmcv RandomResize).

    scale: (w, h); with keep_ratio only its long and short values matter. ratio_range
    None: no randomness, same as Resize(scale, keep_ratio). The target is
    (int(scale_w * ratio), int(scale_h * ratio)), at least 1 pixel a side.
    """

    def __init__(self, scale, ratio_range=(0.5, 2.0), keep_ratio=True):
        self.scale = tuple(int(s) for s in scale)
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        if self.ratio_range is not None and self.ratio_range[0] > self.ratio_range[1]:
            raise ValueError(f"ratio_range must be (min, max), got {ratio_range}")
        self.keep_ratio = keep_ratio

    def sample_scale(self, rng):
        if self.ratio_range is None:
            return self.scale
        lo, hi = self.ratio_range
        ratio = rng.random() * (hi - lo) + lo
        return max(1, int(self.scale[0] * ratio)), max(1, int(self.scale[1] * ratio))

    def __call__(self, results, rng=None):
        scale = self.sample_scale(_need_rng(rng, "RandomResize"))
        h, w = _image_hw(results)
        size = rescale_size((w, h), scale)[0] if self.keep_ratio else scale
        return _resize(results, size)

    def __repr__(self):
        return (f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range}, "
                f"keep_ratio={self.keep_ratio})")


class RandomCrop:
    """Random (h, w) crop, offsets uniform in [0, margin]; with cat_max_ratio < 1, up to 10
    re-draws until the crop holds > 1 class (ignore excluded) and none covers
    `cat_max_ratio` or more of it (mmseg rule)."""

    def __init__(self, crop_size, cat_max_ratio=1.0, ignore_index=255):
        self.crop_size = _as_hw(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _bbox(self, h, w, rng):
        margin_h = max(h - self.crop_size[0], 0)
        margin_w = max(w - self.crop_size[1], 0)
        y = int(rng.integers(0, margin_h + 1))
        x = int(rng.integers(0, margin_w + 1))
        return y, y + self.crop_size[0], x, x + self.crop_size[1]

    def _acceptable(self, seg, box):
        y1, y2, x1, x2 = box
        counts = np.bincount(seg[y1:y2, x1:x2].ravel(), minlength=256)
        if 0 <= self.ignore_index < 256:
            counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, results, rng=None):
        rng = _need_rng(rng, "RandomCrop")
        h, w = results["img"].shape[:2]
        box = self._bbox(h, w, rng)
        seg = results.get("seg")
        if self.cat_max_ratio < 1.0 and seg is not None:
            for _ in range(10):
                if self._acceptable(seg, box):
                    break
                box = self._bbox(h, w, rng)
        y1, y2, x1, x2 = box
        results["img"] = results["img"][y1:y2, x1:x2]
        if seg is not None:
            results["seg"] = seg[y1:y2, x1:x2]
        results["img_shape"] = results["pad_shape"] = tuple(results["img"].shape[:2])
        return results

    def __repr__(self):
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomFlip:
    """Horizontal flip with probability `prob` (prob 0 or 1 needs no rng)."""

    def __init__(self, prob=0.5):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = prob

    def __call__(self, results, rng=None):
        if self.prob in (0.0, 1.0):
            flip = self.prob == 1.0
        else:
            flip = bool(_need_rng(rng, "RandomFlip").random() < self.prob)
        if flip:
            results["img"] = np.ascontiguousarray(results["img"][:, ::-1])
            if results.get("seg") is not None:
                results["seg"] = np.ascontiguousarray(results["seg"][:, ::-1])
        results["flip"] = bool(results.get("flip", False)) != flip
        return results

    def __repr__(self):
        return f"RandomFlip(prob={self.prob})"


class PhotoMetricDistortion:
    """mmseg's PhotoMetricDistortion on a uint8 image in `channel_order` ('rgb' or 'bgr').

    Order: brightness; a coin picks contrast first (1) or last (0); saturation; hue.
    Each of the four is applied with probability 0.5. Values are clipped to
    [0, 255] and truncated to uint8 after every step, as upstream. Saturation and hue work
    in OpenCV's 8-bit HSV (H in [0, 180)). mmseg distorts the BGR image it loaded; we
    distort whichever order the image is in with the matching OpenCV conversion, which
    gives the same pixels, so RGB-loaded data matches mmseg's BGR-distort-then-convert.
    """

    def __init__(self, brightness_delta=32, contrast_range=(0.5, 1.5),
                 saturation_range=(0.5, 1.5), hue_delta=18, channel_order="rgb"):
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta
        self.channel_order = channel_order
        rgb = channel_order == "rgb"
        self._to_hsv = cv2.COLOR_RGB2HSV if rgb else cv2.COLOR_BGR2HSV
        self._from_hsv = cv2.COLOR_HSV2RGB if rgb else cv2.COLOR_HSV2BGR

    @staticmethod
    def _convert(img, alpha=1.0, beta=0.0):
        img = img.astype(np.float32) * alpha + beta
        return np.clip(img, 0, 255).astype(np.uint8)

    def __call__(self, results, rng=None):
        rng = _need_rng(rng, "PhotoMetricDistortion")
        img = results["img"]
        if img.dtype != np.uint8:
            raise ValueError("PhotoMetricDistortion expects a uint8 image; put it before Normalize")
        if rng.integers(2):  # brightness
            img = self._convert(img, beta=rng.uniform(-self.brightness_delta,
                                                      self.brightness_delta))
        mode = rng.integers(2)
        if mode == 1:
            img = self._contrast(img, rng)
        if rng.integers(2):  # saturation
            hsv = cv2.cvtColor(img, self._to_hsv)
            hsv[:, :, 1] = self._convert(hsv[:, :, 1], alpha=rng.uniform(*self.saturation_range))
            img = cv2.cvtColor(hsv, self._from_hsv)
        if rng.integers(2):  # hue, in OpenCV's 8-bit hue units (0..179)
            hsv = cv2.cvtColor(img, self._to_hsv)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))  # upstream: [-d, d)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + shift) % 180
            img = cv2.cvtColor(hsv, self._from_hsv)
        if mode == 0:
            img = self._contrast(img, rng)
        results["img"] = img
        return results

    def _contrast(self, img, rng):
        if rng.integers(2):
            return self._convert(img, alpha=rng.uniform(*self.contrast_range))
        return img

    def __repr__(self):
        return (f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
                f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
                f"hue_delta={self.hue_delta}, channel_order={self.channel_order!r})")


class Normalize:
    """(img - mean) / std as float32. `to_rgb` swaps a BGR input to RGB first (mmcv meaning).

    Our datasets already return RGB when the config's `data.to_rgb` is true, so the
    pipelines built here use to_rgb=False.
    """

    def __init__(self, mean, std, to_rgb=False):
        self.mean = np.asarray(mean, np.float32).reshape(1, 1, -1)
        self.std = np.asarray(std, np.float32).reshape(1, 1, -1)
        if np.any(self.std == 0):
            raise ValueError(f"std must be non-zero, got {std}")
        self.to_rgb = to_rgb

    def __call__(self, results, rng=None):
        img = results["img"]
        if self.to_rgb:
            img = img[..., ::-1]
        results["img"] = ((img.astype(np.float32) - self.mean) / self.std).astype(np.float32)
        return results

    def __repr__(self):
        return (f"Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()}, "
                f"to_rgb={self.to_rgb})")


class Pad:
    """Pad bottom/right to `size` (h, w) or up to a multiple of `size_divisor`.

    The image is padded with `pad_val`, the label map with `seg_pad_val`;
    img_shape keeps the valid size, pad_shape becomes the padded one.
    """

    def __init__(self, size=None, size_divisor=None, pad_val=0, seg_pad_val=255):
        if (size is None) == (size_divisor is None):
            raise ValueError("give exactly one of size and size_divisor")
        self.size = _as_hw(size) if size is not None else None
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(self, results, rng=None):
        img = results["img"]
        h, w = img.shape[:2]
        if self.size is not None:
            th, tw = self.size
            if h > th or w > tw:
                raise ValueError(f"cannot pad a {h}x{w} image to the smaller {th}x{tw}")
        else:
            d = self.size_divisor
            th, tw = -(-h // d) * d, -(-w // d) * d
        if (th, tw) != (h, w):
            pad = ((0, th - h), (0, tw - w)) + ((0, 0),) * (img.ndim - 2)
            results["img"] = np.pad(img, pad, constant_values=self.pad_val)
            if results.get("seg") is not None:
                results["seg"] = np.pad(results["seg"], pad[:2], constant_values=self.seg_pad_val)
        results["pad_shape"] = (th, tw)
        return results

    def __repr__(self):
        what = f"size={self.size}" if self.size else f"size_divisor={self.size_divisor}"
        return f"Pad({what}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"


class ResizeToMultiple:
    """Resize so both sides are multiples of `size_divisor`, rounding up (mmseg 0.x).

    The whole resized image is valid: img_shape = pad_shape = the new size.
    """

    def __init__(self, size_divisor=32, interpolation="bilinear"):
        self.size_divisor = size_divisor
        self.interpolation = interpolation

    def __call__(self, results, rng=None):
        h, w = _image_hw(results)
        d = self.size_divisor
        return _resize(results, (-(-w // d) * d, -(-h // d) * d), self.interpolation)

    def __repr__(self):
        return f"ResizeToMultiple(size_divisor={self.size_divisor})"


# ---------------------------------------------------------------------------
# Pipelines from the config's `data` section.

def build_train_pipeline(data_cfg, ignore_index=255, normalize=True):
    """RandomResize -> RandomCrop -> RandomFlip -> [PhotoMetricDistortion] -> Normalize -> Pad.

    With normalize=False the uint8 image is padded with 0 instead (for viewing).
    """
    crop = data_cfg["crop_size"]
    ts = [RandomResize(data_cfg["img_scale"], data_cfg["ratio_range"], keep_ratio=True),
          RandomCrop(crop, data_cfg["cat_max_ratio"], ignore_index),
          RandomFlip(data_cfg["flip_prob"])]
    if data_cfg["photometric_distortion"]:
        ts.append(PhotoMetricDistortion(channel_order="rgb" if data_cfg["to_rgb"] else "bgr"))
    if normalize:
        ts.append(Normalize(data_cfg["mean"], data_cfg["std"]))
    ts.append(Pad(size=crop, pad_val=0, seg_pad_val=ignore_index))
    return Compose(ts)


def _test_tail(data_cfg, normalize, flip=False):
    ts = []
    divisor, mode = data_cfg["size_divisor"], data_cfg["size_divisor_mode"]
    if divisor and mode == "resize":
        ts.append(ResizeToMultiple(divisor))
    if flip:
        ts.append(RandomFlip(1.0))
    if normalize:
        ts.append(Normalize(data_cfg["mean"], data_cfg["std"]))
    if divisor and mode == "pad":
        ts.append(Pad(size_divisor=divisor, pad_val=0))
    return ts


def build_test_pipeline(data_cfg, normalize=True):
    """Resize(test_scale, test_keep_ratio) -> [ResizeToMultiple] -> Normalize -> [Pad to multiple].

    Test pipelines leave the label map alone (metrics use the original labels). Inputs are
    made a multiple of `size_divisor` either by padding (mmseg 1.x; predictions must be
    cropped back to img_shape, `restore_prediction`) or by resizing (mmseg 0.x
    ResizeToMultiple, used by the official SegNeXt and Jittor/JSeg), as
    `size_divisor_mode` says.
    """
    resize = Resize(data_cfg["test_scale"], keep_ratio=data_cfg["test_keep_ratio"])
    return Compose([resize] + _test_tail(data_cfg, normalize))


def build_tta_pipelines(data_cfg, ratios, flip=True, relative_to="image", normalize=True):
    """One test pipeline per (ratio, flip) view for multi-scale + flip testing.

    relative_to "image" (mmseg 1.x tta_pipeline): rescale the original image by each
    ratio - but an image larger than test_scale is resized keep-ratio into test_scale
    times the ratio instead, as mmseg 0.x does (Resize's max_scale). Why: the plain
    test pipeline resizes into test_scale first, while uncapped views grow with the
    photo (a 2000x2000 image gave 3500x3500 views) and memory with its square.
    "test_scale" (mmseg 0.x / official --aug-test): resize keep-ratio into test_scale
    times each ratio, whatever the image size. Views are ordered ratio-major,
    unflipped first.
    """
    if relative_to not in ("image", "test_scale"):
        raise ValueError(f"relative_to must be 'image' or 'test_scale', got {relative_to!r}")
    views = []
    for r in ratios:
        if relative_to == "image":
            resize = Resize(scale_factor=float(r), keep_ratio=True,
                            max_scale=data_cfg["test_scale"])
        else:
            w, h = data_cfg["test_scale"]
            resize = Resize((int(w * r), int(h * r)), keep_ratio=data_cfg["test_keep_ratio"])
        for f in ((False, True) if flip else (False,)):
            views.append(Compose([resize] + _test_tail(data_cfg, normalize, flip=f)))
    return views


def restore_prediction(scores, meta, interpolation="bilinear"):
    """Map a (C, h_pad, w_pad) or (h_pad, w_pad) numpy array back to the original image.

    Crops the padding (to meta["img_shape"]), undoes a flip, resizes to meta["ori_shape"]
    (scores bilinear, or nearest for label maps with interpolation="nearest").
    """
    h, w = meta["img_shape"]
    out = scores[..., :h, :w]
    if meta.get("flip"):
        out = out[..., ::-1]
    oh, ow = meta["ori_shape"]
    if (h, w) == (oh, ow):
        return np.ascontiguousarray(out)
    if out.ndim == 2:
        return imresize(np.ascontiguousarray(out), (ow, oh), interpolation)
    hwc = np.ascontiguousarray(np.moveaxis(out, 0, -1))
    chunks = [imresize(hwc[..., i:i + 256], (ow, oh), interpolation).reshape(oh, ow, -1)
              for i in range(0, hwc.shape[-1], 256)]  # OpenCV takes at most 512 channels
    return np.moveaxis(np.concatenate(chunks, axis=-1), -1, 0)
