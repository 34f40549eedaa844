"""Checks of keys that must agree with each other, on the merged config with its defaults:
head widths against the backbone, class counts against the dataset, slide windows, the
schedule. Each failure names every key involved, its value and a fix."""
import json
import math

from .schema import DATASET_NUM_CLASSES
from .types import ConfigError

__all__ = ["check_resolved"]


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


def check_resolved(cfg, source):
    """Checks that involve several keys, on the merged config with its defaults (fills a null
    num_classes). A failure names every key involved, its value and the fix."""
    _resolve_num_classes(cfg, source)
    _check_model(cfg["model"], source)
    _check_data_and_schedule(cfg, source)
