"""YAML configs: `_base_` inheritance, one schema with defaults, validation, overrides.

A config file is YAML. `_base_` (a path or a list of paths, relative to the
file) names files to start from: bases are merged in order, then the file on
top. Dicts merge key by key; lists and scalars replace.

`SCHEMA` below is the single source of truth: every key a config may set, its
type, its default and a one-line comment. `load_config` validates every file
before merging (so an error names the file that has the typo), fills defaults,
applies command-line overrides `KEY=VALUE` through the same checks, and returns
a `Config` (a dict with attribute access). `dump_config` writes the resolved
config; loading that file gives the same config back.

    cfg = load_config("configs/segnext/segnext_mscan-t_ade20k-512x512.yaml",
                      overrides=["train.max_iters=2000", "data.batch_size=8"])
    cfg.model.decode_head.num_classes  # 150
"""
import copy
import difflib
import os
import re

import yaml

__all__ = ["ConfigError", "Config", "SCHEMA", "load_config", "dump_config",
           "config_to_yaml", "describe_schema"]


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and how to fix it."""


# ---------------------------------------------------------------------------
# Types a field may have. Each has `check(value) -> bool` and a readable name.

class _Type:
    name = "?"

    def check(self, value):
        raise NotImplementedError


class _Scalar(_Type):
    def __init__(self, py_type):
        self.py_type = py_type
        self.name = py_type.__name__

    def check(self, value):
        if self.py_type is float:  # an int is a fine float; a bool is not
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.py_type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.py_type)


class _Choice(_Type):
    def __init__(self, *choices):
        self.choices = choices
        self.name = " | ".join(repr(c) for c in choices)

    def check(self, value):
        return value in self.choices


class _ListOf(_Type):
    def __init__(self, item, length=None):
        self.item = _as_type(item)
        self.length = length
        n = f", length {length}" if length else ""
        self.name = f"list of {self.item.name}{n}"

    def check(self, value):
        return (isinstance(value, list)
                and (self.length is None or len(value) == self.length)
                and all(self.item.check(v) for v in value))


class _AnyOf(_Type):
    def __init__(self, *types):
        self.types = [_as_type(t) for t in types]
        self.name = " or ".join(t.name for t in self.types)

    def check(self, value):
        return any(t.check(value) for t in self.types)


class _NoneType(_Type):
    name = "null"

    def check(self, value):
        return value is None


def _as_type(t):
    return t if isinstance(t, _Type) else _Scalar(t)


def ListOf(item, length=None):
    return _ListOf(item, length)


def Choice(*choices):
    return _Choice(*choices)


def Optional(t):
    return _AnyOf(t, _NoneType())


def AnyOf(*types):
    return _AnyOf(*types)


# ---------------------------------------------------------------------------
# Schema nodes.

class Field:
    """A leaf: its type, default value and a one-line comment."""

    def __init__(self, type_, default, doc):
        self.type = _as_type(type_)
        self.default = default
        self.doc = doc
        if default is not None or not self.type.check(None):
            assert self.type.check(default), f"schema default {default!r} is not {self.type.name}"


class Section:
    """A dict with a fixed set of keys, each a Field, Section or MapOf."""

    def __init__(self, doc="", **children):
        self.doc = doc
        self.children = children

    def defaults(self):
        return {k: c.defaults() if not isinstance(c, Field) else copy.deepcopy(c.default)
                for k, c in self.children.items()}


class MapOf:
    """A dict with free keys whose values all follow one Section (e.g. param groups)."""

    def __init__(self, item, default, doc):
        self.item = item
        self.default = default
        self.doc = doc

    def defaults(self):
        return copy.deepcopy(self.default)


# ---------------------------------------------------------------------------
# The schema. Model keys mirror the constructor arguments of jseg.models.

_PAIR = ListOf(int, 2)

SCHEMA = Section(
    "root",
    name=Field(Optional(str), None, "run name; null means the config file's name without .yaml"),
    work_dir=Field(Optional(str), None, "output folder; null means work_dirs/<name>"),
    seed=Field(Optional(int), None, "global random seed (weights, data order, NMF bases); null: not seeded"),
    device=Field(Choice("auto", "cpu", "cuda"), "auto", "auto: GPU when a usable one is present, else CPU"),
    model=Section(
        "the segmentor",
        backbone=Section(
            "MSCAN encoder",
            type=Field(Choice("MSCAN"), "MSCAN", "encoder class"),
            in_channels=Field(int, 3, "input image channels"),
            embed_dims=Field(ListOf(int, 4), [32, 64, 160, 256], "channels of the four stages"),
            depths=Field(ListOf(int, 4), [3, 3, 5, 2], "blocks per stage"),
            mlp_ratios=Field(ListOf(AnyOf(int, float), 4), [8, 8, 4, 4], "MLP hidden width / stage width"),
            drop_rate=Field(float, 0.0, "dropout inside the MLPs"),
            drop_path_rate=Field(float, 0.1, "stochastic depth at the last block (linear from 0)"),
            pretrained=Field(Optional(str), None,
                             "backbone weights converted by weights_convert (imagenet format); "
                             "loaded non-strictly into the backbone only"),
        ),
        decode_head=Section(
            "LightHamHead decoder",
            type=Field(Choice("LightHamHead"), "LightHamHead", "decoder class"),
            in_channels=Field(ListOf(int), [64, 160, 256], "channels of the selected stages"),
            in_index=Field(ListOf(int), [1, 2, 3], "which backbone stages feed the head (0-based)"),
            channels=Field(int, 256, "width after `align`, input of conv_seg"),
            ham_channels=Field(int, 256, "width of squeeze and the Hamburger"),
            num_classes=Field(int, 150, "number of classes (logit channels)"),
            dropout_ratio=Field(float, 0.1, "channel-wise dropout before conv_seg"),
            norm_groups=Field(int, 32, "GroupNorm groups in squeeze / ham_out / align"),
            align_corners=Field(bool, False, "bilinear resize convention"),
            ignore_index=Field(int, 255, "label value ignored by the loss and metrics"),
            loss_weight=Field(float, 1.0, "weight of the cross-entropy loss"),
            class_weight=Field(Optional(ListOf(float)), None,
                               "per-class loss weights, length num_classes; null: all 1"),
            ham=Section(
                "NMF2D matrix decomposition",
                md_s=Field(int, 1, "number of groups S the channels are split into"),
                md_r=Field(int, 16, "rank R of the factorisation"),
                train_steps=Field(int, 6, "multiplicative-update steps in training"),
                eval_steps=Field(int, 7, "multiplicative-update steps in evaluation"),
                inv_t=Field(AnyOf(int, float), 100, "softmax temperature (upstream forces it to 1)"),
                rand_init=Field(bool, True, "fresh random bases every forward (upstream); "
                                            "false: one fixed basis"),
                grad_mode=Field(Choice("full", "one_step"), "full",
                                "full: gradients through every NMF step (mmseg 1.x, official); "
                                "one_step: steps under no-grad (JSeg / HamNet)"),
            ),
        ),
        test_cfg=Section(
            "inference",
            mode=Field(Choice("whole", "slide"), "whole", "whole image or sliding window"),
            crop_size=Field(Optional(_PAIR), None, "slide window (h, w)"),
            stride=Field(Optional(_PAIR), None, "slide step (h, w)"),
            tta_ratios=Field(ListOf(float), [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
                             "test-time augmentation scales (with --tta)"),
            tta_flip=Field(bool, True, "add horizontal flips in test-time augmentation"),
        ),
    ),
    data=Section(
        "dataset, augmentation and loading",
        type=Field(Choice("ade20k", "cityscapes", "voc_aug", "coco_stuff164k",
                          "pascal_context59", "isaid", "custom"), "ade20k", "dataset kind"),
        data_root=Field(str, "data/ade/ADEChallengeData2016", "dataset folder"),
        classes=Field(Optional(ListOf(str)), None, "class names (custom); null: the dataset's own"),
        palette=Field(Optional(ListOf(ListOf(int, 3))), None, "RGB colour per class; null: the dataset's own"),
        img_suffix=Field(Optional(str), None, "image file suffix; null: the dataset's own"),
        seg_map_suffix=Field(Optional(str), None, "label file suffix; null: the dataset's own"),
        reduce_zero_label=Field(Optional(bool), None,
                                "label 0 -> 255 and others -1; null: the dataset's own"),
        train=Section(
            "training split",
            img_dir=Field(str, "images/training", "images, relative to data_root"),
            ann_dir=Field(AnyOf(str, ListOf(str)), "annotations/training",
                          "labels, relative to data_root; a list pairs with a list of splits"),
            split=Field(Optional(AnyOf(str, ListOf(str))), None,
                        "file(s) listing sample names; null: every image in img_dir"),
        ),
        val=Section(
            "validation split",
            img_dir=Field(str, "images/validation", "images, relative to data_root"),
            ann_dir=Field(str, "annotations/validation", "labels, relative to data_root"),
            split=Field(Optional(AnyOf(str, ListOf(str))), None,
                        "file(s) listing sample names; null: every image in img_dir"),
        ),
        batch_size=Field(int, 16, "global training batch (split across MPI ranks)"),
        num_workers=Field(int, 2, "data loading worker processes"),
        on_bad_sample=Field(Choice("fail", "skip"), "fail", "a corrupt training sample stops the run or is skipped"),
        img_scale=Field(_PAIR, [2048, 512], "training resize scale (long, short) before ratio_range"),
        ratio_range=Field(ListOf(float, 2), [0.5, 2.0], "random rescale range"),
        crop_size=Field(_PAIR, [512, 512], "training crop (h, w)"),
        cat_max_ratio=Field(float, 0.75, "a crop may not be more than this share one class"),
        flip_prob=Field(float, 0.5, "horizontal flip probability"),
        photometric_distortion=Field(bool, True, "random brightness/contrast/saturation/hue"),
        mean=Field(ListOf(float, 3), [123.675, 116.28, 103.53], "RGB mean"),
        std=Field(ListOf(float, 3), [58.395, 57.12, 57.375], "RGB std"),
        to_rgb=Field(bool, True, "convert the BGR image read by OpenCV to RGB"),
        test_scale=Field(_PAIR, [2048, 512], "test resize scale (long, short)"),
        test_keep_ratio=Field(bool, True, "keep aspect ratio when resizing for test"),
        size_divisor=Field(Optional(int), 32, "make test inputs a multiple of this; null: no"),
        size_divisor_mode=Field(Choice("pad", "resize"), "pad",
                                "pad (mmseg 1.x) or resize (official / JSeg) to size_divisor"),
    ),
    optimizer=Section(
        "AdamW",
        type=Field(Choice("adamw"), "adamw", "optimizer"),
        lr=Field(float, 6e-5, "base learning rate"),
        betas=Field(ListOf(float, 2), [0.9, 0.999], "Adam betas"),
        eps=Field(float, 1e-8, "Adam epsilon"),
        weight_decay=Field(float, 0.01, "decoupled weight decay"),
        paramwise=MapOf(
            Section("multipliers for parameters whose name contains the key",
                    lr_mult=Field(float, 1.0, "learning-rate multiplier"),
                    decay_mult=Field(float, 1.0, "weight-decay multiplier")),
            {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
             "head": {"lr_mult": 10.0}},
            "name substring -> {lr_mult, decay_mult}; longest key wins"),
        grad_clip=Field(Optional(float), None, "clip the gradient norm to this; null: no clipping"),
    ),
    scheduler=Section(
        "linear warm-up then poly decay, by iteration",
        warmup_iters=Field(int, 1500, "warm-up length"),
        warmup_ratio=Field(float, 1e-6, "lr factor at iteration 0"),
        power=Field(float, 1.0, "poly exponent"),
        min_lr=Field(float, 0.0, "lr at the end"),
    ),
    train=Section(
        "training loop",
        max_iters=Field(int, 160000, "training iterations"),
        log_interval=Field(int, 50, "iterations between log lines"),
        eval_interval=Field(int, 16000, "iterations between evaluations; 0: only at the end"),
        checkpoint_interval=Field(int, 16000, "iterations between checkpoints"),
        keep_checkpoints=Field(int, 3, "how many recent checkpoints to keep"),
        amp=Field(bool, False, "mixed precision: fp16 compute, fp32 weights, dynamic loss "
                  "scaling (CUDA only; see jseg/engine/amp.py)"),
    ),
)


# ---------------------------------------------------------------------------
# YAML reading: `6e-5` is a float here (plain YAML 1.1 reads it as a string).

class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def _read_yaml(path, origin):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}{origin}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"cannot parse {path}{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, found {type(data).__name__}")
    return data


def _suggest(key, options):
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(options))})"


def _validate(node, value, dotted, source):
    """Check `value` against schema `node`; raise ConfigError naming `dotted` and `source`."""
    if isinstance(node, Field):
        if not node.type.check(value):
            raise ConfigError(f"wrong type for '{dotted}' in {source}: expected {node.type.name}, "
                              f"got {type(value).__name__} {value!r}")
        return
    if not isinstance(value, dict):
        raise ConfigError(f"'{dotted}' in {source} must be a mapping, got {type(value).__name__} {value!r}")
    if isinstance(node, MapOf):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"keys of '{dotted}' in {source} must be strings, got {k!r}")
            _validate(node.item, v, f"{dotted}.{k}", source)
        return
    for k, v in value.items():
        path = f"{dotted}.{k}" if dotted else str(k)
        if k not in node.children:
            raise ConfigError(f"unknown key '{path}' in {source}{_suggest(str(k), node.children)}")
        _validate(node.children[k], v, path, source)


def _merge(base, top):
    """Deep-merge `top` onto `base` (both plain dicts); dicts merge, the rest replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_tree(path, stack, origin=""):
    """Read `path` and its bases recursively; returns the merged plain dict."""
    path = os.path.normpath(path)
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(stack[stack.index(real):] + [real])
        raise ConfigError(f"circular _base_ in {path}: {chain}")
    data = _read_yaml(path, origin)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"_base_ in {path} must be a path or a list of paths, got {bases!r}")
    _validate(SCHEMA, data, "", path)
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = _merge(merged, _load_tree(base_path, stack + [real],
                                           origin=f" (the _base_ '{base}' of {path})"))
    return _merge(merged, data)


def _parse_override(text):
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. train.max_iters=1000")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string; the schema decides
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    tree = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


class Config(dict):
    """A dict whose keys are also attributes (`cfg.model.backbone.depths`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name, value):
        self[name] = value

    def __deepcopy__(self, memo):
        return Config.wrap(copy.deepcopy(Config.unwrap(self), memo))

    @staticmethod
    def wrap(value):
        if isinstance(value, dict):
            return Config({k: Config.wrap(v) for k, v in value.items()})
        if isinstance(value, list):
            return [Config.wrap(v) for v in value]
        return value

    @staticmethod
    def unwrap(value):
        if isinstance(value, dict):
            return {k: Config.unwrap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [Config.unwrap(v) for v in value]
        return value


def _fill_defaults(node, value):
    if isinstance(node, Section):
        out = {}
        for k, child in node.children.items():
            if isinstance(child, Field):
                out[k] = copy.deepcopy(value[k]) if k in value else copy.deepcopy(child.default)
            else:
                out[k] = _fill_defaults(child, value.get(k, {}) if k in value else child.defaults())
        return out
    if isinstance(node, MapOf):
        return {k: _fill_defaults(node.item, v) for k, v in value.items()}
    return value


def load_config(path, overrides=()):
    """Load, merge, validate and complete a config; returns a `Config`.

    `overrides` are strings `KEY=VALUE` (dotted key, YAML value), applied last.
    Raises ConfigError with the file, the dotted key and a hint on any mistake.
    """
    tree = _load_tree(str(path), [])
    for text in overrides:
        patch = _parse_override(text)
        _validate(SCHEMA, patch, "", f"the command-line override {text!r}")
        tree = _merge(tree, patch)
    cfg = _fill_defaults(SCHEMA, tree)
    _validate(SCHEMA, cfg, "", str(path))
    if cfg["name"] is None:
        cfg["name"] = os.path.splitext(os.path.basename(str(path)))[0]
    if cfg["work_dir"] is None:
        cfg["work_dir"] = os.path.join("work_dirs", cfg["name"])
    return Config.wrap(cfg)


def config_to_yaml(cfg):
    """The resolved config as YAML text (every key, no _base_)."""
    return yaml.safe_dump(Config.unwrap(cfg), sort_keys=False, default_flow_style=None)


def dump_config(cfg, path):
    """Write the resolved config to `path` atomically; `load_config(path)` gives it back."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(config_to_yaml(cfg))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def describe_schema(node=SCHEMA, prefix=""):
    """Lines `dotted.key: type = default  # comment` for every field (for docs and --help)."""
    lines = []
    for k, child in node.children.items():
        path = f"{prefix}{k}"
        if isinstance(child, Field):
            lines.append(f"{path}: {child.type.name} = {child.default!r}  # {child.doc}")
        elif isinstance(child, MapOf):
            lines.append(f"{path}: {{name: {{...}}}} = {child.default!r}  # {child.doc}")
            lines += describe_schema(child.item, f"{path}.<name>.")
        else:
            lines += describe_schema(child, f"{path}.")
    return lines
