"""Is a resumed run the run it claims to be? Compare the checkpoint's config with today's.

A checkpoint holds the resolved config its run trained with (meta.config). On resume,
every key that changes what is trained (the model, the training data and pipeline, the
optimiser, the schedule, the loss, the seed) must be equal, unless the user names it with
--resume-changed. Keys that only steer the run's bookkeeping or evaluation are free
(`FREE_KEYS`): the length of the run (train.max_iters, which also moves the poly
schedule's end), log / evaluation / checkpoint intervals, the validation split, the test
pipeline, the work dir, the device. Every accepted change is logged, and the earlier
segment's config is kept beside config.yaml (`keep_earlier_config`).
"""
import logging
import os

import yaml

from jseg.checkpoint import checkpoint_iteration
from jseg.config import Config
from jseg.data.loader import random_seed
from jseg.utils.atomic import atomic_write

__all__ = ["FREE_KEYS", "ResumeConfigError", "config_changes", "check_resume_config",
           "keep_earlier_config", "resolve_seed", "resume_lineage"]

logger = logging.getLogger(__name__)

# Dotted keys, or whole sections, that may change on resume without a word.
FREE_KEYS = (
    "name", "work_dir", "device",
    "train.max_iters", "train.log_interval", "train.eval_interval",
    "train.checkpoint_interval", "train.keep_checkpoints", "train.tensorboard",
    "train.tensorboard_samples",
    "evaluation", "model.test_cfg", "data.val", "data.num_workers", "data.test_scale",
    "data.test_keep_ratio", "data.size_divisor", "data.size_divisor_mode", "data.palette",
    # read only when a run starts from scratch
    "model.backbone.pretrained", "model.backbone.pretrained_strict",
)


class ResumeConfigError(ValueError):
    """The resumed checkpoint was trained with another config; the message lists the keys."""


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _matches(key, names):
    """Is `key` one of `names`, or inside a section named there?"""
    return any(key == n or key.startswith(n + ".") for n in names)


def config_changes(saved_yaml, cfg):
    """[(dotted key, old, new)] where the config saved as YAML text and `cfg` differ.

    Keys the saved config does not have (written by an older jseg) are not compared."""
    old = _flat(yaml.safe_load(saved_yaml) or {})
    new = _flat(Config.unwrap(cfg))
    return [(k, old[k], v) for k, v in new.items() if k in old and old[k] != v]


def _show(value):
    """A value as it is written in an override: 0.005, [512, 512], null."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10 ** 6).strip()
    return text[:-3].strip() if text.endswith("...") else text


def check_resume_config(checkpoint, cfg, source, allowed=(), seed=None):
    """Refuse (ResumeConfigError) a resume whose config changes what is trained.

    checkpoint: the read training checkpoint (its meta.config, meta.seed); cfg: today's
    config; allowed: keys or section names the user accepts changing (--resume-changed);
    seed: the seed asked for today (--seed, else cfg.seed; None: the run's own). Returns
    the accepted changes [(key, old, new)], each logged."""
    meta = checkpoint["meta"]
    changes = []
    if meta.get("config"):
        changes = [c for c in config_changes(meta["config"], cfg) if c[0] != "seed"]
    else:
        logger.warning("%s holds no config (written by an old version): the config cannot "
                       "be compared with the one it trained with", source)
    if seed is not None and meta.get("seed") is not None and seed != meta["seed"]:
        changes.append(("seed", meta["seed"], seed))
    refused = [c for c in changes if not (_matches(c[0], FREE_KEYS) or _matches(c[0], allowed))]
    if refused:
        listed = "; ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, a, b in refused)
        keys = ",".join(k for k, _, _ in refused)
        raise ResumeConfigError(
            f"{source} was trained with another config ({listed}); resume with the config it "
            f"was trained with, or accept the change with --resume-changed {keys}")
    for key, old, new in changes:
        logger.info("resume: %s changed %s -> %s", key, _show(old), _show(new))
    return changes


def keep_earlier_config(work_path, saved_yaml, iteration, new_yaml):
    """Before config.yaml is rewritten on resume with `new_yaml`: if that differs from the
    checkpoint's `saved_yaml`, keep the latter (the earlier segment's config) as
    config.iter_<iteration, 8 digits>.yaml, on a free name. Returns its path, or None."""
    if not saved_yaml or saved_yaml == new_yaml:
        return None
    stem = os.path.join(work_path, f"config.iter_{iteration:08d}")
    path, n = f"{stem}.yaml", 2
    while os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == saved_yaml:
                return path  # kept by an earlier resume from the same checkpoint
        path, n = f"{stem}_{n}.yaml", n + 1
    with atomic_write(path, "w") as f:
        f.write(saved_yaml)
    logger.info("config.yaml changes; the config of iterations 1-%d is kept as %s",
                iteration, path)
    return path


def resolve_seed(seed, cfg, checkpoint, world):
    """The run's seed, decided once: a resumed run's own (unless a change of it was
    accepted, see check_resume_config), else `seed`, else cfg.seed, else a random one (rank
    0's under MPI), logged so that the run can be repeated."""
    if checkpoint is not None:
        asked = seed if seed is not None else cfg.seed
        return asked if asked is not None else checkpoint["meta"]["seed"]
    if seed is None:
        seed = cfg.seed
    if seed is None:
        seed = random_seed(world)
        logger.info("no seed given; using seed %d (set seed=%d to repeat this run)", seed, seed)
    return seed


def resume_lineage(resume, ckpt, work):
    """Checkpoint names in this work dir that the resumed run's lineage wrote."""
    if os.path.realpath(os.path.dirname(os.path.abspath(resume))) != \
            os.path.realpath(work.ckpt_dir):
        return []  # resumed from elsewhere: nothing here is ours
    names = ckpt["meta"].get("checkpoints")
    if names is None:  # written before lineages were recorded: the folder was the run's
        k = ckpt["meta"]["iter"]
        names = [os.path.basename(p) for p in work.checkpoints() if checkpoint_iteration(p) <= k]
    return names
