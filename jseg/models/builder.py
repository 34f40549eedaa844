"""Build a segmentor from the `model` section of a config.

The section is a mapping (plain nested dicts are fine):

    backbone:    {type: MSCAN, in_channels, embed_dims, depths, mlp_ratios, drop_rate,
                  drop_path_rate, pretrained, pretrained_strict (skipped: the trainer loads it)}
    decode_head: {type: LightHamHead, in_channels, in_index, channels, ham_channels,
                  num_classes, dropout_ratio, norm_groups, align_corners, ignore_index,
                  loss_weight, class_weight, ham: {md_s, md_r, train_steps, eval_steps, inv_t,
                  rand_init, grad_mode}}
    test_cfg:    {mode: whole | slide, crop_size, stride, tta_ratios, tta_flip}

`type` picks a class from a plain dict; every other key is a keyword argument of that class
(`ham` becomes the head's `ham_kwargs`). Missing keys take the constructor defaults.
"""
import inspect
from collections.abc import Mapping

import jittor as jt

from jseg.ops import accelerate

from .ham_head import LightHamHead, NMF2D
from .mscan import MSCAN
from .segmentor import EncoderDecoder

__all__ = ["BACKBONES", "HEADS", "build_backbone", "build_head", "build_model"]

BACKBONES = {"MSCAN": MSCAN}
HEADS = {"LightHamHead": LightHamHead}

# config key -> constructor keyword, where they differ
_HEAD_RENAMES = {"ham": "ham_kwargs"}
_TEST_CFG_RENAMES = {"mode": "test_mode"}


def _check_kwargs(what, cls, kwargs):
    """ValueError naming the unknown keys and the accepted ones."""
    accepted = [p for p in inspect.signature(cls).parameters if p != "self"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {what} (type {cls.__name__}); "
                         f"accepted: {accepted}")


def _pick_class(what, cfg, table):
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{what} must be a mapping with a 'type' key, got {type(cfg).__name__}")
    if "type" not in cfg:
        raise ValueError(f"{what} has no 'type'; valid types: {sorted(table)}")
    name = cfg["type"]
    if name not in table:
        raise ValueError(f"unknown {what} type {name!r}; valid types: {sorted(table)}")
    return table[name]


def _plain(value):
    """YAML lists -> tuples, nested mappings -> dicts (constructors take plain values)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    return value


def build_backbone(cfg):
    """MSCAN from `model.backbone`.

    `pretrained` is not a constructor argument: it names weights that the trainer loads into
    the built backbone (jseg.engine.trainer), so it is skipped here.
    """
    cls = _pick_class("model.backbone", cfg, BACKBONES)
    kwargs = {k: _plain(v) for k, v in cfg.items()
              if k not in ("type", "pretrained", "pretrained_strict")}
    _check_kwargs("model.backbone", cls, kwargs)
    return cls(**kwargs)


def build_head(cfg):
    """LightHamHead from `model.decode_head`; its `ham` mapping goes to NMF2D."""
    cls = _pick_class("model.decode_head", cfg, HEADS)
    kwargs = {_HEAD_RENAMES.get(k, k): _plain(v) for k, v in cfg.items() if k != "type"}
    _check_kwargs("model.decode_head", cls, kwargs)
    if kwargs.get("ham_kwargs") is not None:
        _check_kwargs("model.decode_head.ham", NMF2D, kwargs["ham_kwargs"])
    return cls(**kwargs)


def build_model(model_cfg):
    """EncoderDecoder from the `model` section of a config (see the module docstring).

    The initial weights are computed before returning. Jittor draws random values when an op
    executes, not when it is created, so lazily initialised weights would consume the RNG
    stream at the first forward: the weights and that forward's NMF bases / DropPath masks
    would then depend on what ran first. With `jt.set_global_seed(s)` before this call the
    weights are reproducible, and seeding later gives repeatable forwards.

    The model gets jseg.ops' CPU kernels here, once (`accelerate`); each runs where it
    applies, and the reference maths elsewhere (CUDA, `JSEG_CPU_KERNELS=0`).
    """
    if not isinstance(model_cfg, Mapping):
        raise ValueError(f"model config must be a mapping, got {type(model_cfg).__name__}")
    for key in ("backbone", "decode_head"):
        if key not in model_cfg:
            raise ValueError(f"model config has no '{key}' section")
    unknown = sorted(set(model_cfg) - {"backbone", "decode_head", "test_cfg"})
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in model; accepted: "
                         "['backbone', 'decode_head', 'test_cfg']")
    test_cfg = model_cfg.get("test_cfg") or {}
    test_kwargs = {_TEST_CFG_RENAMES.get(k, k): _plain(v) for k, v in test_cfg.items()}
    for name in ("backbone", "decode_head"):
        if name in test_kwargs:
            raise ValueError(f"unknown key '{name}' in model.test_cfg")
    _check_kwargs("model.test_cfg", EncoderDecoder, test_kwargs)
    backbone = build_backbone(model_cfg["backbone"])
    head = build_head(model_cfg["decode_head"])
    model = accelerate(EncoderDecoder(backbone, head, **test_kwargs))
    jt.sync(model.parameters())
    return model
