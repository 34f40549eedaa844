"""Convert a SegNeXt checkpoint (PyTorch or Jittor/JSeg) into jseg's checkpoint format.

SRC is read without torch and without running code from the file
(`jseg.checkpoint.safe_pickle`); the weights are renamed into our layout
(`jseg.checkpoint.mapping`), checked to form a complete SegNeXt, and with a config
checked key by key against the model that config builds (for an ImageNet backbone:
the backbone keys only). Floating-point weights are stored as float32, as the model
holds them. DST is written atomically as {"state_dict": {...}, "meta": {...}}: on any
error nothing is written and an existing DST is left as it was. The command line is
weights_convert/convert.py.

The meta keeps what the way back to mmseg (`jseg.export.mmseg`) needs besides the
weights: the class names and palette the source recorded, and the values of the BatchNorm
step counters (`num_batches_tracked`, which our model does not have), by key.
"""
import os

import numpy as np

from jseg import __version__
from jseg.config import load_config
from jseg.utils.atomic import check_writable
from jseg.utils.download import sha256_of as file_sha256

from .mapping import (FORMATS, ConversionError, check_against_model, convert_state_dict,
                      describe_architecture, detect_format, infer_state_shapes)
from .safe_pickle import (CheckpointError, load_checkpoint_file, sniff_checkpoint_format,
                          unwrap_state_dict)
from .writer import save_checkpoint_file

__all__ = ["convert_checkpoint", "expected_shapes_from_config", "file_sha256", "as_palette"]


def expected_shapes_from_config(path):
    """Key -> shape of the model a config file builds (imports Jittor)."""
    from jseg.models import build_model

    cfg = load_config(path)
    model = build_model(cfg["model"])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _class_names(meta):
    """Class names recorded by mmcv (CLASSES) or mmengine (dataset_meta.classes), if any."""
    names = meta.get("CLASSES")
    if names is None and isinstance(meta.get("dataset_meta"), dict):
        names = meta["dataset_meta"].get("classes")
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _palette(meta, num_classes):
    """The palette recorded by mmcv (PALETTE) or mmengine (dataset_meta.palette), if any."""
    colors = meta.get("PALETTE")
    if colors is None and isinstance(meta.get("dataset_meta"), dict):
        colors = meta["dataset_meta"].get("palette")
    return as_palette(colors, num_classes)


def as_palette(colors, num_classes):
    """`colors` as a list of [r, g, b] ints if it is one colour of 0..255 per class, else
    None."""
    try:
        colors = [[int(v) for v in c] for c in colors]
    except (TypeError, ValueError):
        return None
    if len(colors) != num_classes or any(len(c) != 3 or not all(0 <= v < 256 for v in c)
                                         for c in colors):
        return None
    return colors


def convert_checkpoint(src, dst, fmt="auto", config_file=None, log=print):
    """Convert SRC to DST (see module doc); returns a summary dict.

    Raises CheckpointError / ConversionError / OSError (and the config's own
    errors) with a one-line message; DST is only written when everything passed.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose auto or one of "
                              f"{', '.join(FORMATS)}")
    check_writable(dst)

    container = sniff_checkpoint_format(src)
    checkpoint = load_checkpoint_file(src)
    try:
        state, meta = unwrap_state_dict(checkpoint)
        if fmt == "auto":
            fmt, reason = detect_format(state)
            reason = f"detected: {reason}"
        else:
            reason = "given with --format"
        converted, report = convert_state_dict(state, fmt)
        # the model holds float32: fp16 widens exactly (bf16 already did while reading)
        widened = {k for k, v in converted.items()
                   if v.dtype.kind == "f" and v.dtype != np.float32}
        converted = {k: v.astype(np.float32) if k in widened else v
                     for k, v in converted.items()}
        # complete and self-consistent: every block, norm and head key at matching widths
        check_against_model(converted, infer_state_shapes(converted),
                            what="a complete SegNeXt of the checkpoint's own widths and depths")
        architecture = describe_architecture(converted)
    except (CheckpointError, ConversionError) as e:
        raise type(e)(f"{src}: {e}") from None
    if config_file is not None:
        expected = expected_shapes_from_config(config_file)
        if fmt == "imagenet":  # a backbone initialisation: the head is trained from scratch
            expected = {k: v for k, v in expected.items() if k.startswith("backbone.")}
        check_against_model(converted, expected, what=f"the config {config_file}")

    out_meta = {"source_format": fmt, "source_container": container,
                "source_sha256": file_sha256(src), "source_file": os.path.basename(src),
                "converter": "jseg weights_convert", "jseg_version": __version__}
    classes = _class_names(meta)
    if classes is not None:
        out_meta["classes"] = classes
        palette = _palette(meta, len(classes))
        if palette is not None:
            out_meta["palette"] = palette
    if report["num_batches_tracked"]:
        out_meta["num_batches_tracked"] = report["num_batches_tracked"]
    try:
        save_checkpoint_file(dst, {"state_dict": converted, "meta": out_meta})
    except OSError as e:
        raise OSError(f"cannot write {dst}: {e.strerror or e}") from None

    n_dropped = sum(len(v) for v in report["dropped"].values())
    log(f"source: {src} ({container}, sha256 {out_meta['source_sha256'][:16]}...)")
    log(f"format: {fmt} ({reason})")
    log(f"model: {architecture}")
    log(f"keys: {len(state)} in the checkpoint -> {report['mapped']} mapped "
        f"({report['renamed']} renamed), {n_dropped} dropped")
    for why, keys in report["dropped"].items():
        log(f"  dropped {len(keys)}: {why}")
    if report["num_batches_tracked"]:
        log(f"  {len(report['num_batches_tracked'])} num_batches_tracked values kept in the "
            "meta (for the export back to mmseg)")
    if widened:
        log(f"  {len(widened)} floating-point arrays stored as float32 (as the model holds them)")
    left_out = [k for k in checkpoint if k not in ("state_dict", "model", "meta")] \
        if isinstance(checkpoint.get("state_dict", checkpoint.get("model")), dict) else []
    if left_out:
        log(f"  also left out of the container: {', '.join(map(str, left_out))}")
    if config_file is not None:
        part = "backbone" if fmt == "imagenet" else "model"
        log(f"checked against {config_file}: all {len(expected)} {part} keys present "
            "with the right shapes, nothing extra")
    log(f"wrote {dst}")
    return {"format": fmt, "reason": reason, "container": container,
            "mapped": report["mapped"], "dropped": n_dropped, "architecture": architecture}
