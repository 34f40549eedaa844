"""Loading weights into a model: strict by default, with errors that list every mismatch.

Jittor's own `Module.load_parameters` only logs unknown keys and shape
mismatches; a checkpoint that does not fit must instead stop the user, so all
loading goes through `load_state_dict` here.
"""
import logging
import os
import re
import time
import uuid

import numpy as np

from .safe_pickle import CheckpointError, load_checkpoint_file, unwrap_state_dict
from .writer import save_checkpoint_file
from .zoo import is_remote, read_weights

logger = logging.getLogger(__name__)

__all__ = ["WeightsMismatchError", "NonFiniteError", "load_state_dict", "load_weights",
           "load_backbone_init", "read_checkpoint", "read_training_checkpoint",
           "save_training_checkpoint", "check_optimizer_state", "write_checkpoint",
           "find_checkpoints", "checkpoint_name", "checkpoint_iteration"]


class WeightsMismatchError(ValueError):
    """A state dict does not fit the model; the message lists every bad key."""


class NonFiniteError(CheckpointError):
    """A checkpoint would hold NaN or infinite values; nothing was written."""


def _describe(keys, limit=8):
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _mismatch_message(missing, unexpected, misshaped, source):
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_describe(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_describe(unexpected)})")
    if misshaped:
        parts.append(f"{len(misshaped)} with the wrong shape ("
                     + ", ".join(f"{k}: file {tuple(f)} vs model {tuple(m)}"
                                 for k, (f, m) in sorted(misshaped.items())[:8]) + ")")
    msg = f"weights in {source} do not fit the model: " + "; ".join(parts)
    seg = misshaped.get("decode_head.conv_seg.bias")
    if seg is not None:
        msg += (f". The file has {seg[0][0]} classes and the config {seg[1][0]}: "
                "use the config of the dataset the weights were trained on")
    return msg


def load_state_dict(model, state_dict, strict=True, source="the state dict"):
    """Copy arrays from `state_dict` (name -> array) into `model`'s parameters and buffers.

    strict=True: every model key must be present with the same shape and no key may be
    left over, otherwise WeightsMismatchError lists missing, unexpected and mis-shaped keys.
    strict=False (backbone initialisation): keys absent on either side are allowed and
    returned as (missing, unexpected); mis-shaped keys are still an error.
    Nothing is copied unless the check passes.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    misshaped = {k: (tuple(np.shape(v)), tuple(own[k].shape))
                 for k, v in state_dict.items()
                 if k in own and tuple(np.shape(v)) != tuple(own[k].shape)}
    if misshaped or (strict and (missing or unexpected)):
        raise WeightsMismatchError(_mismatch_message(missing if strict else [],
                                                     unexpected if strict else [],
                                                     misshaped, source))
    _check_values({k: v for k, v in state_dict.items() if k in own}, source)
    import jittor as jt
    for key, value in state_dict.items():
        if key in own:
            var = own[key]
            var.update(jt.array(np.asarray(value).astype(str(var.dtype), copy=False)))
    return missing, unexpected


def _stage_of(key):
    """'block2.0.attn.proj_1.weight' -> 2 (patch_embed{i}, block{i}, norm{i} of MSCAN)."""
    found = re.match(r"(?:patch_embed|block|norm)(\d+)\.", key)
    return int(found.group(1)) if found else 0


def load_backbone_init(model, path, strict=True):
    """Initialise the backbone from `path` (a converted ImageNet MSCAN, a segmentor whose
    `backbone.*` keys are taken, or zoo:mscan_*), reporting the tensors matched per stage.

    strict: refuse (WeightsMismatchError) unless every MSCAN tensor is matched by name and shape;
    otherwise load what matches and warn about the rest, which keeps its random init.
    """
    state, _ = read_checkpoint(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    matched = {k for k, v in state.items() if own.get(k) == tuple(np.shape(v))}
    misshaped = sorted(k for k in state if k in own and k not in matched)
    missing = sorted(k for k in own if k not in matched)
    stages = sorted({_stage_of(k) for k in own})
    per_stage = ", ".join(
        f"stage {i} {sum(_stage_of(k) == i for k in matched)}/"
        f"{sum(_stage_of(k) == i for k in own)}" for i in stages)
    report = (f"backbone init from {path}: {len(matched)}/{len(own)} MSCAN tensors matched "
              f"({per_stage})")
    if missing:
        parts = [f"{len(missing)} not matched (e.g. {', '.join(missing[:3])})"]
        if misshaped:
            k = misshaped[0]
            parts.append(f"{len(misshaped)} of them have another shape ({k}: file "
                         f"{tuple(np.shape(state[k]))} vs model {own[k]}), weights of another "
                         "MSCAN variant")
        if any(".mlp.dwconv.dwconv." in k or k.endswith("num_batches_tracked") for k in state):
            parts.append("the file is in a PyTorch layout: convert it first with "
                         "python weights_convert/convert.py SRC DST --format imagenet")
        if not strict:
            logger.warning("%s; %s; model.backbone.pretrained_strict is false, so these keep "
                           "their random initialisation", report, "; ".join(parts))
        else:
            raise WeightsMismatchError(
                f"{report}; {'; '.join(parts)}. Use weights of this variant converted by "
                "weights_convert (or zoo:mscan_t/s/b/l), or set "
                "model.backbone.pretrained_strict=false to train knowingly with the "
                "unmatched tensors at their random initialisation")
    else:
        logger.info(report)
    load_state_dict(model.backbone, {k: state[k] for k in matched}, strict=False,
                    source=f"{path} (backbone initialisation)")
    ignored = len(state) - len(matched) - len(misshaped)
    if ignored:
        logger.info("backbone init: %d tensors of %s are not MSCAN's and were ignored (e.g. "
                    "an ImageNet classifier or a decode head)", ignored, path)


def _check_values(arrays, source):
    """Weights must be floating point and finite: a diverged run's NaNs, or integer or
    text arrays where weights belong, would otherwise load silently."""
    not_float = {k: np.asarray(v).dtype for k, v in arrays.items()
                 if not np.issubdtype(np.asarray(v).dtype, np.floating)}
    if not_float:
        raise WeightsMismatchError(
            f"weights in {source} are not usable: {len(not_float)} tensor(s) are not floating "
            "point (" + ", ".join(f"{k}: {d}" for k, d in sorted(not_float.items())[:8])
            + "); this is not a weights file of this model")
    bad = [k for k, v in arrays.items() if not np.isfinite(v).all()]
    if bad:
        raise WeightsMismatchError(
            f"weights in {source} are not usable: {len(bad)} of {len(arrays)} tensors hold NaN "
            f"or infinite values ({_describe(bad)}); they come from a diverged run: use an "
            "earlier checkpoint")


def read_checkpoint(path, full=False):
    """Read a checkpoint safely (no code in it runs); returns (state_dict, whole object).

    `path` may also be "zoo:NAME" or an http(s) URL (see `jseg.checkpoint.zoo`).

    `state_dict` is the flat name -> array dict (from `state_dict`, `model` or a flat file);
    the whole object is returned too when full=True (training checkpoints hold more).
    """
    if is_remote(path):  # "zoo:NAME" or a URL: downloaded, verified, converted, cached
        _, obj = read_weights(path, log=logger.info)
    else:
        obj = load_checkpoint_file(path)
    state_dict, _ = unwrap_state_dict(obj)
    return state_dict, (obj if full else None)


def read_training_checkpoint(path, model=None):
    """Read a checkpoint to resume training: (state_dict, whole object).

    Checks, before anything is loaded, that it is a training checkpoint (iteration, seed,
    AdamW moments), not a weights file (those are a new run's load_from); with `model`,
    also that the moments have the shapes of its parameters. Raises CheckpointError.
    """
    state_dict, ckpt = read_checkpoint(path, full=True)
    meta = ckpt.get("meta") if isinstance(ckpt, dict) else None
    optim = ckpt.get("optimizer") if isinstance(ckpt, dict) else None
    if not (isinstance(meta, dict) and isinstance(meta.get("iter"), int)
            and isinstance(meta.get("seed"), int) and isinstance(optim, dict)
            and isinstance(optim.get("n_step"), int)
            and isinstance(optim.get("m"), dict) and isinstance(optim.get("v"), dict)):
        raise CheckpointError(
            f"{path} is not a training checkpoint (it has no iteration, seed and optimizer "
            "state; weights converted by weights_convert or saved by other tools hold weights "
            "only): start a new run from its weights with load_from instead of resume")
    if model is not None:
        check_optimizer_state(ckpt, model, path)
    return state_dict, ckpt


def check_optimizer_state(ckpt, model, path):
    """The AdamW moments of training checkpoint `ckpt` fit `model`'s parameters."""
    optim = ckpt["optimizer"]
    own = model.state_dict()
    for kind in ("m", "v"):
        bad = {k: np.shape(v) for k, v in optim[kind].items()
               if k not in own or tuple(np.shape(v)) != tuple(own[k].shape)}
        if bad:
            raise CheckpointError(
                f"the optimizer state in {path} was written for another model: "
                + ", ".join(f"{k}: {tuple(s)}" + (f" vs model {tuple(own[k].shape)}" if k in own
                                                  else " (not in the model)")
                            for k, s in sorted(bad.items())[:4])
                + "; resume with the config it was trained with")


def write_checkpoint(path, obj):
    """Write `obj` (plain data and numpy arrays) atomically in our checkpoint format."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_checkpoint_file(path, obj)


_CHECKPOINT_NAME = re.compile(r"iter_(\d{8})\.pkl")


def checkpoint_name(iteration):
    """File name of the training checkpoint written after `iteration` iterations."""
    return f"iter_{int(iteration):08d}.pkl"


def checkpoint_iteration(path):
    """The iteration in a training checkpoint's file name, or None for other names."""
    match = _CHECKPOINT_NAME.fullmatch(os.path.basename(path))
    return int(match.group(1)) if match else None


def find_checkpoints(directory):
    """Training checkpoints `iter_XXXXXXXX.pkl` in `directory`, oldest (lowest iteration) first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if _CHECKPOINT_NAME.fullmatch(n))


def load_weights(model, path, strict=True):
    """Load a weights file (our checkpoint format, or anything `safe_pickle` can read
    that holds a state dict in our key layout) into `model`; see load_state_dict."""
    state_dict, _ = read_checkpoint(path)
    return load_state_dict(model, state_dict, strict=strict, source=str(path))


def save_training_checkpoint(path, state, optim, iteration, seed, config_yaml, amp=None, *,
                             run_id=None, lineage=None):
    """Write a resumable checkpoint, only if every weight and AdamW moment is finite.

    state: {name: array} of the model; optim: the AdamW state {n_step, m, v}
    (jseg.engine.optim.optimizer_state); config_yaml: the run's resolved config; amp: the
    loss scaler's state or None. run_id / lineage: the run's identity and the checkpoint
    names its lineage keeps (see `jseg.engine.workdir`). Raises NonFiniteError, writing
    nothing, on non-finite values; OSError from the write (the earlier file at `path`, if
    any, is unchanged).
    """
    from jseg import __version__

    arrays = [(k, a) for k, a in state.items()] + \
        [(f"AdamW {kind} of {k}", a) for kind in ("m", "v") for k, a in optim[kind].items()]
    bad = [k for k, a in arrays if not np.isfinite(a).all()]
    if bad:
        raise NonFiniteError(
            f"{len(bad)} of {len(arrays)} weight and AdamW tensors are NaN or infinite after "
            f"iteration {iteration} (e.g. {', '.join(bad[:3])}); the step diverged, and the "
            f"checkpoint was not written")
    extra = {"amp": amp} if amp is not None else {}
    write_checkpoint(path, {
        **extra,
        "meta": {"iter": int(iteration), "seed": int(seed), "jseg_version": __version__,
                 "config": config_yaml, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "run_id": run_id or uuid.uuid4().hex,
                 "checkpoints": list(lineage or [os.path.basename(path)])},
        "state_dict": state,
        "optimizer": optim,
    })
