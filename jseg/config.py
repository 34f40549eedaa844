"""YAML configs: `_base_` inheritance, one schema with defaults, validation, overrides.

A config file is YAML. `_base_` (a path or a list of paths, relative to the
file) names files to start from: bases are merged in order, then the file on
top. Dicts merge key by key; lists and scalars replace.

`SCHEMA` below is the single source of truth: every key a config may set, its
type, its default, a one-line comment and, for numbers, the range allowed
(`rule=at_least(1)`, applied to a value or to each entry of a list). `load_config`
validates every file before merging (so an error names the file that has the
typo), fills defaults, applies command-line overrides `KEY=VALUE` through the
same checks, then checks the keys that must agree with each other (head widths
against the backbone, class counts against the dataset, slide windows, the
schedule) and returns a `Config` (a dict with attribute access). `dump_config`
writes the resolved config; loading that file gives the same config back.

    cfg = load_config("configs/segnext/segnext_mscan-t_ade20k-512x512.yaml",
                      overrides=["train.max_iters=2000", "data.batch_size=8"])
    cfg.model.decode_head.num_classes  # 150
"""
import copy
import difflib
import json
import math
import os
import re

import yaml

from .utils.atomic import atomic_write

__all__ = ["ConfigError", "Config", "FrozenList", "SCHEMA", "DATASET_NUM_CLASSES", "load_config",
           "dump_config", "config_to_yaml", "describe_schema"]


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


def _holds_list(t):
    return isinstance(t, _ListOf) or (isinstance(t, _AnyOf) and any(map(_holds_list, t.types)))


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
# Range rules a number must follow (a scalar, or every entry of a list). Each has
# `check(x) -> bool` and a text for messages and docs (">= 1", "in [0, 1)").

class _Rule:
    def __init__(self, text, test):
        self.text = text
        self.test = test

    def check(self, x):
        return _finite(x) and self.test(x)


def _finite(x):
    return isinstance(x, int) or math.isfinite(x)  # an int may be too large for a float


def at_least(lo):
    return _Rule(f">= {lo}", lambda x: x >= lo)


def above(lo):
    return _Rule(f"> {lo}", lambda x: x > lo)


def between(lo, hi, ends="[]"):
    """`ends` says which bounds are included: "[]", "[)", "(]" or "()"."""
    low_ok = (lambda x: x >= lo) if ends[0] == "[" else (lambda x: x > lo)
    high_ok = (lambda x: x <= hi) if ends[1] == "]" else (lambda x: x < hi)
    return _Rule(f"in {ends[0]}{lo}, {hi}{ends[1]}", lambda x: low_ok(x) and high_ok(x))


def _numbers(value):
    """The numbers a rule applies to: the value itself or the entries of a list (None: none)."""
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


# ---------------------------------------------------------------------------
# Schema nodes.

class Field:
    """A leaf: its type, default value, a one-line comment and an optional range rule."""

    def __init__(self, type_, default, doc, rule=None):
        self.type = _as_type(type_)
        self.default = default
        self.doc = doc
        self.rule = rule
        if default is not None or not self.type.check(None):
            assert self.type.check(default), f"schema default {default!r} is not {self.type.name}"
        assert rule is None or all(rule.check(v) for v in _numbers(default)), \
            f"schema default {default!r} is not {rule.text}"


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
_STAGES = 4  # MSCAN has four stages
_DROP_RATE = between(0, 1, "[)")  # 1 would drop everything

# Class counts of the dataset kinds (`data.type`); "custom" takes len(data.classes).
# The names are in jseg.data.palettes.CLASSES (config, the bottom layer, does not import
# jseg.data; tests/test_config.py checks that the two agree).
DATASET_NUM_CLASSES = {"ade20k": 150, "cityscapes": 19, "voc_aug": 21, "coco_stuff164k": 171,
                       "pascal_context59": 59, "isaid": 16}

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
            in_channels=Field(int, 3, "input image channels", at_least(1)),
            embed_dims=Field(ListOf(int, _STAGES), [32, 64, 160, 256],
                             "channels of the four stages", at_least(1)),
            depths=Field(ListOf(int, _STAGES), [3, 3, 5, 2], "blocks per stage", at_least(1)),
            mlp_ratios=Field(ListOf(AnyOf(int, float), _STAGES), [8, 8, 4, 4],
                             "MLP hidden width / stage width", above(0)),
            drop_rate=Field(float, 0.0, "dropout inside the MLPs", _DROP_RATE),
            drop_path_rate=Field(float, 0.1, "stochastic depth at the last block (linear from 0)",
                                 _DROP_RATE),
            pretrained=Field(Optional(str), None,
                             "backbone weights: a file converted by weights_convert (imagenet "
                             "format, or a segmentor's backbone.* keys), zoo:mscan_t/s/b/l or a "
                             "URL; every MSCAN tensor must match unless pretrained_strict is "
                             "false"),
            pretrained_strict=Field(bool, True,
                                    "false: start training even when the pretrained file "
                                    "does not cover every MSCAN tensor (the rest stay random)"),
        ),
        decode_head=Section(
            "LightHamHead decoder",
            type=Field(Choice("LightHamHead"), "LightHamHead", "decoder class"),
            in_channels=Field(ListOf(int), [64, 160, 256],
                              "channels of the selected stages: embed_dims[i] for i in in_index",
                              at_least(1)),
            in_index=Field(ListOf(int), [1, 2, 3], "which backbone stages feed the head (0-based)",
                           between(0, _STAGES, "[)")),
            channels=Field(int, 256, "width after `align`, input of conv_seg", at_least(1)),
            ham_channels=Field(int, 256, "width of squeeze and the Hamburger", at_least(1)),
            num_classes=Field(Optional(int), None,
                              "number of classes (logit channels); null: the dataset's "
                              "(len(data.classes), else the count of data.type)", at_least(1)),
            dropout_ratio=Field(float, 0.1, "channel-wise dropout before conv_seg", _DROP_RATE),
            norm_groups=Field(int, 32, "GroupNorm groups in squeeze / ham_out / align; divides "
                                       "ham_channels and channels", at_least(1)),
            align_corners=Field(bool, False, "bilinear resize convention"),
            ignore_index=Field(int, 255, "label value ignored by the loss and metrics; "
                                         "not a class id"),
            loss_weight=Field(float, 1.0, "weight of the cross-entropy loss", at_least(0)),
            class_weight=Field(Optional(ListOf(float)), None,
                               "per-class loss weights, length num_classes; null: all 1",
                               at_least(0)),
            ham=Section(
                "NMF2D matrix decomposition",
                md_s=Field(int, 1, "number of groups S the channels are split into; divides "
                                   "ham_channels", at_least(1)),
                md_r=Field(int, 16, "rank R of the factorisation", at_least(1)),
                train_steps=Field(int, 6, "multiplicative-update steps in training", at_least(1)),
                eval_steps=Field(int, 7, "multiplicative-update steps in evaluation", at_least(1)),
                inv_t=Field(AnyOf(int, float), 100, "softmax temperature (upstream forces it to 1)",
                            above(0)),
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
            crop_size=Field(Optional(_PAIR), None, "slide window (h, w)", at_least(1)),
            stride=Field(Optional(_PAIR), None, "slide step (h, w), at most crop_size",
                         at_least(1)),
            tta_ratios=Field(ListOf(float), [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
                             "test-time augmentation scales (with --tta)", above(0)),
            tta_flip=Field(bool, True, "add horizontal flips in test-time augmentation"),
        ),
    ),
    data=Section(
        "dataset, augmentation and loading",
        type=Field(Choice(*DATASET_NUM_CLASSES, "custom"), "ade20k", "dataset kind"),
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
            ann_dir=Field(Optional(str), "annotations/validation",
                          "labels, relative to data_root; null: unlabelled images (e.g. a "
                          "benchmark's test split): --task test writes predictions, no metrics"),
            split=Field(Optional(AnyOf(str, ListOf(str))), None,
                        "file(s) listing sample names; null: every image in img_dir"),
        ),
        batch_size=Field(int, 16, "global training batch (split across MPI ranks)", at_least(1)),
        num_workers=Field(int, 2, "data loading worker processes", at_least(0)),
        on_bad_sample=Field(Choice("fail", "skip"), "fail", "a corrupt training sample stops the run or is skipped"),
        img_scale=Field(_PAIR, [2048, 512],
                        "training resize scale (long, short) before ratio_range", at_least(1)),
        ratio_range=Field(ListOf(float, 2), [0.5, 2.0], "random rescale range [low, high]",
                          above(0)),
        crop_size=Field(_PAIR, [512, 512], "training crop (h, w)", at_least(1)),
        cat_max_ratio=Field(float, 0.75, "a crop may not be more than this share one class",
                            between(0, 1, "(]")),
        flip_prob=Field(float, 0.5, "horizontal flip probability", between(0, 1)),
        photometric_distortion=Field(bool, True, "random brightness/contrast/saturation/hue"),
        mean=Field(ListOf(float, 3), [123.675, 116.28, 103.53], "RGB mean"),
        std=Field(ListOf(float, 3), [58.395, 57.12, 57.375], "RGB std", above(0)),
        to_rgb=Field(bool, True, "convert the BGR image read by OpenCV to RGB"),
        test_scale=Field(_PAIR, [2048, 512], "test resize scale (long, short)", at_least(1)),
        test_keep_ratio=Field(bool, True, "keep aspect ratio when resizing for test"),
        size_divisor=Field(Optional(int), 32, "make test inputs a multiple of this; null: no",
                           at_least(1)),
        size_divisor_mode=Field(Choice("pad", "resize"), "pad",
                                "pad (mmseg 1.x) or resize (official / JSeg) to size_divisor"),
    ),
    optimizer=Section(
        "AdamW",
        type=Field(Choice("adamw"), "adamw", "optimizer"),
        lr=Field(float, 6e-5, "base learning rate", above(0)),
        betas=Field(ListOf(float, 2), [0.9, 0.999], "Adam betas", between(0, 1, "[)")),
        eps=Field(float, 1e-8, "Adam epsilon", above(0)),
        weight_decay=Field(float, 0.01, "decoupled weight decay", at_least(0)),
        paramwise=MapOf(
            Section("multipliers for parameters whose name contains the key",
                    lr_mult=Field(float, 1.0, "learning-rate multiplier", at_least(0)),
                    decay_mult=Field(float, 1.0, "weight-decay multiplier", at_least(0))),
            # mmseg's SegNeXt configs also list pos_block (decay_mult 0), a PVT key that
            # matches no MSCAN parameter; it is left out
            {"norm": {"decay_mult": 0.0}, "head": {"lr_mult": 10.0}},
            "name substring -> {lr_mult, decay_mult}; longest key wins"),
        grad_clip=Field(Optional(float), None, "clip the gradient norm to this; null: no clipping",
                        above(0)),
    ),
    scheduler=Section(
        "linear warm-up then poly decay, by iteration",
        warmup_iters=Field(int, 1500, "warm-up length; 0: no warm-up; longer than "
                           "train.max_iters: the run only warms up",
                           at_least(0)),
        # (0, 1]: mmengine's LinearLR, which the warm-up follows, refuses factors above 1 and
        # divides by zero at 0
        warmup_ratio=Field(float, 1e-6, "lr factor at iteration 0", between(0, 1, "(]")),
        power=Field(float, 1.0, "poly exponent", at_least(0)),
        min_lr=Field(float, 0.0, "lr at the end, at most optimizer.lr", at_least(0)),
    ),
    train=Section(
        "training loop",
        max_iters=Field(int, 160000, "training iterations", at_least(1)),
        log_interval=Field(int, 50, "iterations between log lines", at_least(1)),
        eval_interval=Field(int, 16000, "iterations between evaluations; 0: only at the end",
                            at_least(0)),
        checkpoint_interval=Field(int, 16000, "iterations between checkpoints", at_least(1)),
        keep_checkpoints=Field(int, 3, "how many recent checkpoints to keep; 0: keep every one",
                               at_least(0)),
        amp=Field(bool, False, "mixed precision: fp16 compute, fp32 weights, dynamic loss "
                  "scaling (CUDA only; see jseg/engine/amp.py)"),
        tensorboard=Field(bool, False, "also write TensorBoard event files to "
                          "work_dir/tensorboard: losses, lr, metrics, per-class values and "
                          "sample predictions (needs tensorboardX; jseg/engine/tensorboard.py)"),
        tensorboard_samples=Field(int, 4, "validation images drawn (image | label | "
                                  "prediction) into TensorBoard per evaluation", at_least(0)),
    ),
    evaluation=Section(
        "metrics of --task val / test and of the evaluations during training",
        # the names of mmseg's IoUMetric(iou_metrics=...); jseg.engine.metrics.METRICS
        metrics=Field(ListOf(Choice("mIoU", "mDice", "mFscore")), ["mIoU"],
                      "metrics in the table, the summary and metrics.jsonl: mIoU (IoU, Acc; "
                      "always there), mDice (Dice), mFscore (Fscore, Precision, Recall)"),
        confusion_matrix=Field(bool, True,
                               "write the confusion matrix (counts, .npy) and its row-"
                               "normalised heat map (.png) into work_dir: "
                               "confusion_matrix.{npy,png} for val / test, "
                               "confusion_matrix_iter_<8-digit iteration>.* in training"),
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
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}{origin} is not UTF-8 text: byte 0x{raw[e.start]:02x} at "
                          f"position {e.start} (line {line}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)
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


def _bad_entry(type_, value):
    """' (entry 1 'mFoo' is not 'mIoU' | 'mDice')': the first wrong entry of a list, if any."""
    if isinstance(type_, _ListOf) and isinstance(value, list):
        for i, v in enumerate(value):
            if not type_.item.check(v):
                return f" (entry {i} {v!r} is not {type_.item.name})"
    return ""


def _validate(node, value, dotted, source):
    """Check `value` against schema `node`; raise ConfigError naming `dotted` and `source`."""
    if isinstance(node, Field):
        if not node.type.check(value):
            raise ConfigError(f"wrong type for '{dotted}' in {source}: expected {node.type.name}, "
                              f"got {type(value).__name__} {value!r}"
                              f"{_bad_entry(node.type, value)}")
        numbers = _numbers(value) if node.rule else []
        if not all(node.rule.check(v) for v in numbers):
            finite = "" if all(map(_finite, numbers)) else "finite and "
            each = "have each entry " if isinstance(value, list) else "be "
            raise ConfigError(f"'{dotted}' in {source} must {each}{finite}{node.rule.text}, "
                              f"got {value!r}")
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


def _read_only(*_args, **_kwargs):
    raise TypeError("a loaded config is read-only: give overrides to load_config "
                    "(KEY=VALUE), or edit a copy (copy.deepcopy(cfg))")


class FrozenList(list):
    """A list of a loaded config: equal to a plain list, but read-only."""
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce__(self):
        return FrozenList, (list(self),)

    def __deepcopy__(self, memo):  # an editable copy, as for Config
        return copy.deepcopy(list(self), memo)


class Config(dict):
    """A dict whose keys are also attributes (`cfg.model.backbone.depths`).

    What load_config returns is read-only (so the config.yaml and checkpoints a run writes
    hold what it ran with); copy.deepcopy gives an editable copy.
    """
    _frozen = False

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _check(self):
        if self._frozen:
            _read_only()

    def __setattr__(self, name, value):
        self._check()
        self[name] = value

    def __setitem__(self, key, value):
        self._check()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._check()
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        self._check()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._check()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._check()
        return super().pop(*args)

    def popitem(self):
        self._check()
        return super().popitem()

    def clear(self):
        self._check()
        super().clear()

    def __deepcopy__(self, memo):
        return Config.wrap(copy.deepcopy(Config.unwrap(self), memo))

    def __reduce__(self):  # pickles (e.g. to data workers) as plain data, wrapped back
        return Config.wrap, (Config.unwrap(self), self._frozen)

    @staticmethod
    def wrap(value, frozen=False):
        """Nested dicts -> Config (lists too, read-only ones when `frozen`)."""
        if isinstance(value, dict):
            out = Config({k: Config.wrap(v, frozen) for k, v in value.items()})
            object.__setattr__(out, "_frozen", frozen)
            return out
        if isinstance(value, list):
            items = [Config.wrap(v, frozen) for v in value]
            return FrozenList(items) if frozen else items
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


def _cli(value):
    """`value` as an override writes it: [64,160,256]."""
    return json.dumps(value, separators=(",", ":"))


def _divisor_at_most(n, limit):
    """The largest divisor of `n` that is <= `limit` (a value to suggest)."""
    return next(d for d in range(min(n, limit), 0, -1) if n % d == 0)


def _inconsistent(source, problem, fix):
    """The error for keys that disagree: "<problem> in <source>; <fix>"."""
    return ConfigError(f"{problem} in {source}; {fix}")


def _resolve_num_classes(cfg, source):
    """A null num_classes becomes the dataset's class count; a given one must equal it."""
    data, head = cfg["data"], cfg["model"]["decode_head"]
    if data["classes"]:
        count, origin = len(data["classes"]), f"data.classes ({len(data['classes'])} names)"
    elif data["type"] == "custom":
        raise _inconsistent(
            source, "data.type 'custom' needs data.classes",
            "give one name per class, e.g. data.classes=[background,road,car]")
    else:  # an empty list means "the dataset's own" to the data layer too
        count, origin = DATASET_NUM_CLASSES[data["type"]], f"data.type '{data['type']}'"
    if head["num_classes"] is None:
        head["num_classes"] = count
    elif head["num_classes"] != count:
        raise _inconsistent(
            source, f"model.decode_head.num_classes {head['num_classes']} does not match the "
            f"{count} classes of {origin}", f"set model.decode_head.num_classes={count}")


def _check_model(model, source):
    """Head inputs against the backbone, head widths against each other, the slide windows."""
    dims = model["backbone"]["embed_dims"]
    head, test = model["decode_head"], model["test_cfg"]
    index, in_channels, num_classes = head["in_index"], head["in_channels"], head["num_classes"]
    if not index or len(set(index)) != len(index):
        raise _inconsistent(
            source, f"model.decode_head.in_index {index} must list one or more backbone stages, "
            "each once", "e.g. model.decode_head.in_index=[1,2,3]")
    expected = [dims[i] for i in index]
    if in_channels != expected:
        raise _inconsistent(
            source, f"model.decode_head.in_channels {in_channels} does not match "
            f"model.backbone.embed_dims {dims} at in_index {index} (expected {expected})",
            f"set model.decode_head.in_channels={_cli(expected)}")
    weights = head["class_weight"]
    if weights is not None and len(weights) != num_classes:
        raise _inconsistent(
            source, f"model.decode_head.class_weight has {len(weights)} entries but "
            f"model.decode_head.num_classes is {num_classes}",
            "give one weight per class, or null for all 1")
    groups = head["norm_groups"]
    both = math.gcd(head["ham_channels"], head["channels"])
    for key in ("ham_channels", "channels"):  # GroupNorm over ham_channels in squeeze and
        if head[key] % groups:                # ham_out, over channels in align
            raise _inconsistent(
                source, f"model.decode_head.norm_groups {groups} does not divide "
                f"model.decode_head.{key} {head[key]} (GroupNorm)",
                "use a divisor of ham_channels and channels, e.g. "
                f"model.decode_head.norm_groups={_divisor_at_most(both, groups)}")
    md_s, ham_channels = head["ham"]["md_s"], head["ham_channels"]
    if ham_channels % md_s:
        raise _inconsistent(
            source, f"model.decode_head.ham.md_s {md_s} does not divide "
            f"model.decode_head.ham_channels {ham_channels} (NMF2D splits the channels into "
            f"md_s groups)", f"use a divisor of {ham_channels}, e.g. "
            f"model.decode_head.ham.md_s={_divisor_at_most(ham_channels, md_s)}")
    if 0 <= head["ignore_index"] < num_classes:
        raise _inconsistent(
            source, f"model.decode_head.ignore_index {head['ignore_index']} is a class id "
            f"(model.decode_head.num_classes is {num_classes})",
            f"use a label value outside [0, {num_classes}), e.g. "
            f"model.decode_head.ignore_index={max(255, num_classes)}")

    crop, stride = test["crop_size"], test["stride"]
    if test["mode"] == "slide" and (crop is None or stride is None):
        raise _inconsistent(
            source, "model.test_cfg.mode 'slide' needs model.test_cfg.crop_size and "
            f"model.test_cfg.stride, got {crop} and {stride}",
            "e.g. model.test_cfg.crop_size=[512,512] model.test_cfg.stride=[341,341]")
    if test["mode"] == "slide" and any(s > c for s, c in zip(stride, crop)):
        # mmseg asserts this too: pixels that no window covers would be 0 / 0 = NaN
        fitting = [min(s, c) for s, c in zip(stride, crop)]
        raise _inconsistent(
            source, f"model.test_cfg.stride {stride} is larger than model.test_cfg.crop_size "
            f"{crop}, so some pixels would be in no window", "use a stride <= the crop in each "
            f"dimension, e.g. model.test_cfg.stride={_cli(fitting)}")


def _check_data_and_schedule(cfg, source):
    """Ranges given as two keys (or a [low, high] pair) are in order."""
    low, high = cfg["data"]["ratio_range"]
    if low > high:
        raise _inconsistent(
            source, f"data.ratio_range {[low, high]} has its low end above its high end",
            f"give [low, high], e.g. data.ratio_range={_cli([high, low])}")
    lr, min_lr = cfg["optimizer"]["lr"], cfg["scheduler"]["min_lr"]
    if min_lr > lr:
        raise _inconsistent(
            source, f"scheduler.min_lr {min_lr} is above optimizer.lr {lr}, so the decay would "
            "raise the learning rate", f"set scheduler.min_lr to at most {lr}, e.g. 0.0")
    # A warm-up as long as the run or longer (a short fine-tune or smoke run of a shipped
    # config) is allowed, as mmengine runs it: the run only warms up (the trainer warns).


def _check_resolved(cfg, source):
    """Checks that involve several keys, on the merged config with its defaults (fills a null
    num_classes). A failure names every key involved, its value and the fix."""
    _resolve_num_classes(cfg, source)
    _check_model(cfg["model"], source)
    _check_data_and_schedule(cfg, source)


def load_config(path, overrides=()):
    """Load, merge, validate and complete a config; returns a `Config`.

    `overrides` are strings `KEY=VALUE` (dotted key, YAML value), applied last.
    A null model.decode_head.num_classes becomes the dataset's class count.
    Raises ConfigError with the file, the dotted key and a hint on any mistake.
    """
    tree = _load_tree(str(path), [])
    for text in overrides:
        patch = _parse_override(text)
        _validate(SCHEMA, patch, "", f"the command-line override {text!r}")
        tree = _merge(tree, patch)
    cfg = _fill_defaults(SCHEMA, tree)
    _validate(SCHEMA, cfg, "", str(path))
    _check_resolved(cfg, f"{path} with its command-line overrides" if overrides else str(path))
    if cfg["name"] is None:
        cfg["name"] = os.path.splitext(os.path.basename(str(path)))[0]
    if cfg["work_dir"] is None:
        cfg["work_dir"] = os.path.join("work_dirs", cfg["name"])
    return Config.wrap(cfg, frozen=True)


def config_to_yaml(cfg):
    """The resolved config as YAML text (every key, no _base_)."""
    return yaml.safe_dump(Config.unwrap(cfg), sort_keys=False, default_flow_style=None)


def dump_config(cfg, path):
    """Write the resolved config to `path` atomically; `load_config(path)` gives it back."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(config_to_yaml(cfg))


def describe_schema(node=SCHEMA, prefix=""):
    """Lines `dotted.key: type (rule) = default  # comment` for every field (for docs and
    --help); `(rule)` only where the field has a range rule, e.g. `(each >= 1)`."""
    lines = []
    for k, child in node.children.items():
        path = f"{prefix}{k}"
        if isinstance(child, Field):
            rule = ""
            if child.rule:
                rule = f" ({'each ' if _holds_list(child.type) else ''}{child.rule.text})"
            lines.append(f"{path}: {child.type.name}{rule} = {child.default!r}  # {child.doc}")
        elif isinstance(child, MapOf):
            lines.append(f"{path}: {{name: {{...}}}} = {child.default!r}  # {child.doc}")
            lines += describe_schema(child.item, f"{path}.<name>.")
        else:
            lines += describe_schema(child, f"{path}.")
    return lines
