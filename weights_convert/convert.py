"""Convert a SegNeXt checkpoint (PyTorch or JSeg) into jseg's checkpoint format.

    python weights_convert/convert.py SRC DST [--format auto|mmseg|official|imagenet|jseg]
                                              [--config-file CONFIG]

SRC is read without torch and without running code from the file
(`jseg.utils.safe_pickle`); the weights are renamed into our layout
(`weights_convert.mapping`), checked to form a complete SegNeXt, and with
--config-file checked key by key against the model that config builds (for an
ImageNet backbone: the backbone keys only). Floating-point weights are stored
as float32, as the model holds them. DST is written atomically as
{"state_dict": {...}, "meta": {...}}: on any error nothing is written and an
existing DST is left as it was. Errors are one line on stderr and exit code 1
(2 for wrong command-line usage).
"""
import hashlib
import os
import sys
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script from a checkout: make `import jseg` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jseg  # noqa: E402
from jseg.utils.atomic import save_checkpoint_file  # noqa: E402
from jseg.utils.cli import ToolParser  # noqa: E402
from jseg.utils.safe_pickle import (  # noqa: E402
    CheckpointError, load_checkpoint_file, sniff_checkpoint_format, unwrap_state_dict)
from weights_convert.mapping import (  # noqa: E402
    FORMATS, ConversionError, check_against_model, convert_state_dict, describe_architecture,
    detect_format, infer_state_shapes)

__all__ = ["convert_checkpoint", "expected_shapes_from_config", "file_sha256", "main"]


def expected_shapes_from_config(path):
    """Key -> shape of the model a config file builds (imports Jittor)."""
    from jseg.config import load_config
    from jseg.models import build_model

    cfg = load_config(path)
    model = build_model(cfg["model"])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _class_names(meta):
    """Class names recorded by mmcv (CLASSES) or mmengine (dataset_meta.classes), if any."""
    names = meta.get("CLASSES")
    if names is None and isinstance(meta.get("dataset_meta"), dict):
        names = meta["dataset_meta"].get("classes")
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def convert_checkpoint(src, dst, fmt="auto", config_file=None, log=print):
    """Convert SRC to DST (see module doc); returns a summary dict.

    Raises CheckpointError / ConversionError / OSError (and the config's own
    errors) with a one-line message; DST is only written when everything passed.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    if fmt != "auto" and fmt not in FORMATS:
        raise ConversionError(f"unknown format {fmt!r}; choose auto or one of "
                              f"{', '.join(FORMATS)}")
    dst_dir = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(dst_dir) or not os.access(dst_dir, os.W_OK):
        raise OSError(f"cannot write {dst}: {dst_dir} is not a writable directory")

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
                "converter": "jseg weights_convert", "jseg_version": jseg.__version__}
    classes = _class_names(meta)
    if classes is not None:
        out_meta["classes"] = classes
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


def main(argv=None):
    parser = ToolParser(
        "Convert a SegNeXt checkpoint (mmseg 1.x, official PyTorch, ImageNet MSCAN or JSeg) "
        "into jseg's checkpoint format, safely (no code from the file runs).",
        prog="weights_convert/convert.py")
    parser.add_argument("src", metavar="SRC", help="checkpoint to read (.pth, .pt, .pkl)")
    parser.add_argument("dst", metavar="DST", help="jseg checkpoint to write")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                        help="layout of SRC (default: detect it from the keys)")
    parser.add_argument("--config-file", default=None, metavar="CONFIG",
                        help="also check every key and shape against the model this config "
                             "builds (needs Jittor)")
    args = parser.parse_args(argv)
    try:
        convert_checkpoint(args.src, args.dst, args.format, args.config_file)
    except (CheckpointError, ConversionError, OSError, ValueError) as e:
        # ValueError: the config's own errors (ConfigError) and bad values in them
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
