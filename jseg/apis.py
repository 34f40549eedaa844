"""User-facing entry points: a ready model from a config, predictions on images, overlays.

    model = init_model("configs/segnext/segnext_mscan-t_ade20k-512x512.yaml", "segnext_t.pkl")
    result = inference_model(model, "street.jpg")          # {"pred": (H, W) class ids}
    show_result("street.jpg", result, out_file="street_overlay.jpg")
"""
import logging
import os

import numpy as np

from .config import Config, load_config
from .checkpoint import load_weights
from .data.datasets import load_rgb
from .platform.env import init_device

__all__ = ["init_model", "inference_model", "show_result", "load_rgb"]

logger = logging.getLogger(__name__)


def init_model(config, checkpoint=None, device=None):
    """Build the segmentor of `config` in eval mode, with `checkpoint` loaded strictly.

    config: a path to a YAML config or a loaded `Config`.
    checkpoint: a weights file converted by weights_convert or saved by training;
        every model key must be present with the right shape and nothing extra.
    device: "cpu", "cuda" or None (the config's `device`, "auto" by default).
    The config stays reachable as `model.cfg` (test pipeline, classes, palette).
    """
    from .models import build_model

    cfg = config if isinstance(config, Config) else load_config(config)
    init_device(device or cfg.device)
    model = build_model(cfg.model)
    if checkpoint is not None:
        load_weights(model, checkpoint, strict=True)
    model.eval()
    model.cfg = cfg
    return model


def inference_model(model, imgs, return_probs=False, tta=False, seed=None):
    """Segment one image or a list of them with the config's test pipeline.

    imgs: a path, an (H, W, 3) uint8 RGB array, or a list of these.
    Applies the test resize / normalisation / padding of `model.cfg.data`, whole or slide
    inference as `model.cfg.model.test_cfg` says, and with tta=True its multi-scale + flip
    views (probabilities averaged). Returns per image a dict {"pred": (H, W) int64 class
    ids at the original size} (+ "probs": (C, H, W) float32 with return_probs);
    a list for a list input.
    seed: of the NMF bases (default: the config's seed, else 0). An image's bases come from
        (seed, a digest of its pixels), as in run_net's evaluation, so an image gets the same
        prediction here, there and in tools/demo.py.
    """
    from .data.datasets import image_key
    from .data.loader import image_views, test_pipelines
    from .engine.evaluator import predict_image

    cfg = model.cfg
    pipelines = test_pipelines(cfg, tta)
    single = not isinstance(imgs, (list, tuple))
    results = []
    model.eval()
    for img in ([imgs] if single else imgs):
        rgb, views = image_views(img, pipelines)
        out = predict_image(model, views, return_probs=return_probs, key=image_key(rgb),
                            seed=seed if seed is not None else (cfg.seed or 0))
        results.append({"pred": out[0], "probs": out[1]} if return_probs else {"pred": out})
    return results[0] if single else results


def show_result(img, result, palette=None, classes=None, opacity=0.5, out_file=None,
                legend=True, model=None):
    """Draw `result["pred"]` (or a label map) over `img`; returns the (H, W, 3) RGB image.

    palette / classes default to `model.cfg`'s dataset when `model` is given. With legend,
    a strip listing the classes present (colour swatch + name) is added below the image.
    out_file: also write it there (format from the suffix), atomically: a failed write
        raises OSError and leaves the old file or nothing.
    """
    from .data.datasets import dataset_settings
    from .data.palettes import default_palette, overlay
    from .utils.atomic import write_image

    pred = result["pred"] if isinstance(result, dict) else np.asarray(result)
    if model is not None:
        settings = dataset_settings(model.cfg.data)
        palette = palette if palette is not None else settings["palette"]
        classes = classes if classes is not None else settings["classes"]
    if palette is None:
        palette = default_palette(int(pred.max()) + 1)
    rgb = load_rgb(img)
    if rgb.shape[:2] != pred.shape:
        raise ValueError(f"image {rgb.shape[:2]} and prediction {pred.shape} differ in size")
    drawn = overlay(rgb, pred, palette, opacity)
    if legend and classes is not None:
        drawn = _with_legend(drawn, pred, palette, classes)
    if out_file is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out_file)), exist_ok=True)
        write_image(out_file, drawn[:, :, ::-1])
    return drawn


def _with_legend(img, pred, palette, classes, row=18):
    """Append rows of (swatch, class name) for the classes present in `pred`."""
    import cv2

    present = [int(c) for c in np.unique(pred) if 0 <= c < len(classes)]
    width = img.shape[1]
    per_row = max(1, width // 120)
    rows = -(-len(present) // per_row)
    strip = np.full((rows * row + 4, width, 3), 255, np.uint8)
    for i, c in enumerate(present):
        x, y = (i % per_row) * 120 + 4, (i // per_row) * row + 4
        strip[y:y + row - 6, x:x + 12] = palette[c]
        cv2.putText(strip, str(classes[c])[:14], (x + 16, y + row - 7), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([img, strip], axis=0)
