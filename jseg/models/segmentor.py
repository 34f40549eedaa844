"""EncoderDecoder: backbone + decode head, with the training loss and the three test modes.

Follows mmsegmentation 1.x's EncoderDecoder:
- `encode_decode(img)`: logits resized (bilinear, align_corners False) to the input size.
- `whole_inference` / `slide_inference` / `inference` (chosen by `test_mode`): seg logits.
- `aug_test`: multi-scale + flip test time augmentation, averaged softmax probabilities.
- `execute(img, label)`: loss dict in training mode, `inference(img)` in eval mode.
"""
import jittor as jt
from jittor import nn

from jseg.utils.inference import slide_windows

from .layers import resize

__all__ = ["EncoderDecoder", "slide_windows"]


def _check_slide_settings(crop_size, stride):
    """ValueError unless crop_size and stride are (h, w) with 0 < stride <= crop_size in each
    dimension: a larger stride leaves pixels in no window (their average is 0 / 0 = NaN)."""
    pairs = len(crop_size) == 2 and len(stride) == 2
    if not pairs or not all(0 < s <= c for s, c in zip(stride, crop_size)):
        raise ValueError(f"slide inference needs (h, w) pairs with 0 < stride <= crop_size in "
                         f"each dimension, got crop_size {tuple(crop_size)} and stride "
                         f"{tuple(stride)}; e.g. crop_size=(1024, 1024), stride=(768, 768)")


class EncoderDecoder(nn.Module):
    """Semantic segmentor = `backbone` (MSCAN) + `decode_head` (LightHamHead).

    Args:
        backbone: returns a list of stage features.
        decode_head: turns them into stride-8 logits; owns the loss settings.
        test_mode: "whole" (one pass over the image) or "slide" (sliding windows).
        crop_size, stride: (h, w) window size and step of slide mode.
        tta_ratios, tta_flip: default scales and horizontal flip of `aug_test`.

    `nmf_draws` (attribute, default 1): with K > 1, eval-mode inference runs the backbone
    once and the decode head once on K copies of the features (one batch), each copy with
    its own NMF bases (random, or as the NMF's `bases_fn` chooses them for a batch of K*B).
    Every output is then (K*B, ...), draw-major: rows k*B .. k*B + B - 1 are draw k. This
    is how an evaluation measures the spread over NMF seeds for the cost of the heads only.
    """

    TEST_MODES = ("whole", "slide")

    def __init__(self, backbone, decode_head, test_mode: str = "whole", crop_size=None,
                 stride=None, tta_ratios=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                 tta_flip: bool = True):
        super().__init__()
        if test_mode not in self.TEST_MODES:
            raise ValueError(f"test_mode must be one of {self.TEST_MODES}, got {test_mode!r}")
        if test_mode == "slide" and (crop_size is None or stride is None):
            raise ValueError("test_mode 'slide' needs crop_size and stride, e.g. "
                             f"crop_size=(1024, 1024), stride=(768, 768); got {crop_size}, {stride}")
        if crop_size is not None and stride is not None:
            _check_slide_settings(crop_size, stride)
        self.backbone = backbone
        self.decode_head = decode_head
        self.test_mode = test_mode
        self.crop_size = None if crop_size is None else tuple(int(v) for v in crop_size)
        self.stride = None if stride is None else tuple(int(v) for v in stride)
        self.tta_ratios = tuple(float(r) for r in tta_ratios)
        self.tta_flip = bool(tta_flip)
        self.nmf_draws = 1

    @property
    def num_classes(self):
        return self.decode_head.num_classes

    def encode_decode(self, img):
        """(B, C_in, H, W) -> logits (B, num_classes, H, W); (K*B, ...) with nmf_draws K."""
        features = self.backbone(img)
        if self.nmf_draws > 1 and not self.is_training():
            # (B, C, h, w) -> (K*B, C, h, w): K copies of the batch, draw-major
            features = [f.repeat(self.nmf_draws, 1, 1, 1) for f in features]
        logits = self.decode_head(features)
        return self.resize(logits, img.shape[2:], self.decode_head.align_corners)

    def resize(self, x, size, align_corners=False):
        """Bilinear resize of (B, C, H, W) to `size` (jseg.models.layers.resize)."""
        return resize(x, size, align_corners)

    def whole_inference(self, img):
        return self.encode_decode(img)

    def slide_inference(self, img, crop_size=None, stride=None):
        """Logits averaged over overlapping windows, each a full `encode_decode`.

        Every window draws its own NMF bases, as in the references.
        """
        crop_size = crop_size or self.crop_size
        stride = stride or self.stride
        if crop_size is None or stride is None:
            raise ValueError("slide inference needs crop_size and stride (test_cfg)")
        _check_slide_settings(crop_size, stride)
        _, _, H, W = img.shape
        boxes = slide_windows(H, W, crop_size, stride)
        windows = [self.encode_decode(img[:, :, y1:y2, x1:x2]) for y1, y2, x1, x2 in boxes]
        return self.merge_windows(windows, boxes, (H, W))

    def merge_windows(self, windows, boxes, size):
        """Per pixel, the mean of the window logits (B, C, h_i, w_i) that cover it: (B, C, H, W)."""
        H, W = size
        B = windows[0].shape[0]  # K*B with nmf_draws K
        logits = jt.zeros((B, self.num_classes, H, W), "float32")
        count = jt.zeros((1, 1, H, W), "float32")
        for (y1, y2, x1, x2), window_logits in zip(boxes, windows):
            # zero-pad the window's logits to the full image: (left, right, top, bottom)
            padding = (x1, W - x2, y1, H - y2)
            logits = logits + nn.pad(window_logits, padding)
            count = count + nn.pad(jt.ones((1, 1, y2 - y1, x2 - x1), "float32"), padding)
        return logits / count

    def inference(self, img):
        """Seg logits (B, num_classes, H, W) by `test_mode` (no softmax, as mmseg 1.x)."""
        if self.test_mode == "slide":
            return self.slide_inference(img)
        return self.whole_inference(img)

    def aug_test(self, img, ratios=None, flip=None):
        """Multi-scale (+ horizontal flip) test: mean of the softmax probabilities (B, C, H, W).

        For each ratio r the input is resized to (int(H * r + 0.5), int(W * r + 0.5)) -- mmcv's
        rescale rounding, which mmseg's TTA Resize(scale_factor=r, keep_ratio=True) uses --
        then `inference` runs (on the flipped image too when `flip`), the logits are flipped
        back, resized to (H, W), softmaxed and averaged, like mmseg's SegTTAModel.
        Difference: mmseg resizes the raw image in its data pipeline, we resize the already
        normalised tensor (bilinear, align_corners False), which differs slightly at borders
        and by interpolation order.
        """
        ratios = self.tta_ratios if ratios is None else tuple(ratios)
        flip = self.tta_flip if flip is None else bool(flip)
        _, _, H, W = img.shape
        probs = None
        n = 0
        for ratio in ratios:
            size = (int(H * ratio + 0.5), int(W * ratio + 0.5))
            scaled = self.resize(img, size, align_corners=False)
            for flipped in ((False, True) if flip else (False,)):
                x = jt.flip(scaled, 3) if flipped else scaled
                logits = self.inference(x)
                if flipped:
                    logits = jt.flip(logits, 3)
                logits = self.resize(logits, (H, W), self.decode_head.align_corners)
                p = nn.softmax(logits, dim=1)
                probs = p if probs is None else probs + p
                n += 1
        return probs / n

    def loss(self, img, label):
        """Training losses: {'loss_ce': ..., 'acc_seg': ...}; label (B, H, W) or (B, 1, H, W)."""
        return self.decode_head.loss(self.decode_head(self.backbone(img)), label)

    def execute(self, img, label=None):
        """Training mode: `loss(img, label)`; eval mode: `inference(img)` logits."""
        if self.is_training():
            if label is None:
                raise ValueError("training-mode forward needs a label map; call model.eval() "
                                 "for inference")
            return self.loss(img, label)
        return self.inference(img)
