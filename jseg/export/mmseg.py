"""Export our weights as an mmsegmentation 1.x checkpoint, without torch.

SRC is one of our checkpoints (a converted weights file or a training checkpoint), read
safely; its state dict must be a complete SegNeXt in our layout. The keys become mmseg
1.x's (`mapping.to_mmseg_state_dict`: the same names plus each BatchNorm's
num_batches_tracked, with the values the converter kept, else 0), every floating-point
tensor float32. DST is written atomically in torch.save's zip format (`torch_writer`), as
mmengine lays out a checkpoint:

    {"meta": {"dataset_meta": {"classes": [...], "palette": [[r, g, b], ...]},
              "jseg_version": ..., "exporter": ..., "source_file": ..., "source_sha256": ...},
     "state_dict": OrderedDict(...)}

`torch.load(DST, weights_only=True)` and mmseg's `init_model` read it; the classes and
palette (see `_dataset_meta`) spare mmseg guessing a dataset from the class count.
"""
import collections
import os

import numpy as np
import yaml

from jseg import __version__
from jseg.config import load_config
from jseg.utils.atomic import check_writable

from jseg.checkpoint.convert import as_palette, file_sha256
from jseg.checkpoint.mapping import (ConversionError, check_against_model, infer_state_shapes,
                      to_mmseg_state_dict)
from jseg.checkpoint.safe_pickle import CheckpointError, load_checkpoint_file, unwrap_state_dict

from .torch_writer import save_torch_checkpoint

__all__ = ["export_mmseg_checkpoint"]


def _recorded_classes(meta):
    names = meta.get("classes")
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _settings(data_cfg, what, log):
    """classes and palette of a config's `data` section, as our datasets resolve them."""
    from jseg.data.datasets import DataError, dataset_settings  # cv2 and PIL: only here

    try:
        settings = dataset_settings(data_cfg)
    except (DataError, KeyError, TypeError) as e:
        raise ConversionError(f"cannot tell the class names from {what}: {e}") from None
    classes = list(settings["classes"])
    palette = as_palette(settings["palette"], len(classes))
    if palette is None:
        palette = _fallback_palette(classes)
        log(f"note: the palette of {what} is not one (r, g, b) per class "
            f"({len(settings['palette'])} colours for {len(classes)} classes); using "
            "the benchmark's or a fixed random one")
    return classes, palette


def _fallback_palette(classes):
    """The palette of the benchmark with exactly these class names, else a fixed random one
    (the one our datasets give a custom dataset without a palette)."""
    from jseg.data.palettes import CLASSES, PALETTES, default_palette

    for kind, names in CLASSES.items():
        if list(names) == classes:
            return [list(map(int, c)) for c in PALETTES[kind]]
    return [list(map(int, c)) for c in default_palette(len(classes))]


def _dataset_meta(meta, config_file, src, log):
    """(classes, palette, where they came from).

    The classes come from, first found: the checkpoint's meta ("classes", which the
    converter copies from an mmseg / mmcv source, and "palette"), the config file given,
    the config a training checkpoint carries in its meta. A palette not recorded with the
    classes is the config's (same classes), the benchmark's (same classes) or a fixed
    random one. mmseg loads its model strictly; `mmseg.apis.init_model(config, DST)` takes
    the classes and palette from `meta.dataset_meta`."""
    config = None
    if config_file is not None:
        config = _settings(load_config(config_file).data, f"the config {config_file}", log)
    classes = _recorded_classes(meta)
    if classes is not None:
        if config is not None and config[0] != classes:
            log(f"note: the class names of {config_file} differ from those recorded in {src}; "
                "using the recorded ones")
        palette = as_palette(meta.get("palette"), len(classes))
        if palette is None:
            palette = (config[1] if config is not None and config[0] == classes
                       else _fallback_palette(classes))
        return classes, palette, "the checkpoint's meta"
    if config is not None:
        return config[0], config[1], f"the config {config_file}"
    if isinstance(meta.get("config"), str):  # a training checkpoint: its resolved config
        try:
            data = yaml.safe_load(meta["config"])["data"]
        except (yaml.YAMLError, TypeError, KeyError) as e:
            raise CheckpointError(f"{src}: the config in its meta cannot be read "
                                  f"({type(e).__name__}: {e}); pass the config file") from None
        classes, palette = _settings(data, "the config in the checkpoint's meta", log)
        return classes, palette, "the config in the checkpoint's meta"
    raise CheckpointError(f"{src}: no class names: its meta has neither 'classes' nor a "
                          "training config; pass the config the weights were trained with")


def export_mmseg_checkpoint(src, dst, config_file=None, log=print):
    """Export our checkpoint SRC as an mmseg 1.x checkpoint DST (see module doc).

    config_file: where the class names come from when SRC does not record them.
    Returns {"keys": int, "num_batches_tracked": {"recorded": int, "zero": int},
    "classes": int, "classes_from": str}. Raises CheckpointError / ConversionError /
    OSError (and the config's ConfigError) with a one-line message; DST is only written
    when everything passed, and an existing DST is otherwise left as it was.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    check_writable(dst)

    checkpoint = load_checkpoint_file(src)
    try:
        state, meta = unwrap_state_dict(checkpoint)
        if "decode_head.conv_seg.weight" not in state:
            raise ConversionError("a backbone without a decode head (an ImageNet "
                                  "initialisation?); only a whole segmentor can be exported")
        state = {k: v.astype(np.float32) if v.dtype.kind == "f" else v
                 for k, v in state.items()}
        mmseg_state, report = to_mmseg_state_dict(state, meta.get("num_batches_tracked"))
        check_against_model(state, infer_state_shapes(state),
                            what="a complete SegNeXt of the checkpoint's own widths and depths")
        classes, palette, classes_from = _dataset_meta(meta, config_file, src, log)
    except (CheckpointError, ConversionError) as e:
        message = str(e)
        raise type(e)(message if message.startswith(src) else f"{src}: {message}") from None
    num_classes = int(state["decode_head.conv_seg.weight"].shape[0])
    if len(classes) != num_classes:
        raise ConversionError(f"{src} has {num_classes} classes but {classes_from} names "
                              f"{len(classes)}; pass the config the weights were trained with")

    out_meta = {"dataset_meta": {"classes": classes, "palette": palette},
                "jseg_version": __version__, "exporter": "jseg export_mmseg_checkpoint",
                "source_file": os.path.basename(src), "source_sha256": file_sha256(src)}
    try:
        save_torch_checkpoint(dst, {"meta": out_meta,
                                    "state_dict": collections.OrderedDict(mmseg_state)})
    except OSError as e:
        raise OSError(f"cannot write {dst}: {e.strerror or e}") from None

    log(f"source: {src} (sha256 {out_meta['source_sha256'][:16]}...)")
    log(f"keys: {report['mapped']} -> {len(mmseg_state)} mmseg 1.x keys "
        f"({report['recorded']} num_batches_tracked as recorded, {report['zero']} set to 0)")
    log(f"classes: {num_classes} from {classes_from}")
    log(f"wrote {dst}")
    return {"keys": len(mmseg_state),
            "num_batches_tracked": {"recorded": report["recorded"], "zero": report["zero"]},
            "classes": num_classes, "classes_from": classes_from}

