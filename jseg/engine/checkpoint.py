"""Loading weights into a model: strict by default, with errors that list every mismatch.

Jittor's own `Module.load_parameters` only logs unknown keys and shape
mismatches; a checkpoint that does not fit must instead stop the user, so all
loading goes through `load_state_dict` here.
"""
import glob
import os

import numpy as np

__all__ = ["WeightsMismatchError", "load_state_dict", "load_weights", "read_checkpoint",
           "write_checkpoint", "find_checkpoints"]


class WeightsMismatchError(ValueError):
    """A state dict does not fit the model; the message lists every bad key."""


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
    import jittor as jt
    for key, value in state_dict.items():
        if key in own:
            var = own[key]
            var.update(jt.array(np.asarray(value).astype(str(var.dtype), copy=False)))
    return missing, unexpected


def read_checkpoint(path, full=False):
    """Read a checkpoint safely (no code in it runs); returns (state_dict, whole object).

    `state_dict` is the flat name -> array dict (from `state_dict`, `model` or a flat file);
    the whole object is returned too when full=True (training checkpoints hold more).
    """
    from jseg.utils.safe_pickle import load_checkpoint_file, unwrap_state_dict

    obj = load_checkpoint_file(path)
    state_dict, _ = unwrap_state_dict(obj)
    return state_dict, (obj if full else None)


def write_checkpoint(path, obj):
    """Write `obj` (plain data and numpy arrays) atomically in our checkpoint format."""
    from jseg.utils.atomic import save_checkpoint_file

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_checkpoint_file(path, obj)


def find_checkpoints(directory):
    """Training checkpoints `iter_XXXXXXXX.pkl` in `directory`, oldest first."""
    return sorted(glob.glob(os.path.join(directory, "iter_*.pkl")))


def load_weights(model, path, strict=True):
    """Load a weights file (our checkpoint format, or anything `safe_pickle` can read
    that holds a state dict in our key layout) into `model`; see load_state_dict."""
    state_dict, _ = read_checkpoint(path)
    return load_state_dict(model, state_dict, strict=strict, source=str(path))
