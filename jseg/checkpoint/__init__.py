"""Checkpoints: reading them safely, loading weights strictly, writing them atomically,
and converting the PyTorch and Jittor/JSeg layouts to ours.

    safe_pickle   read torch zip / legacy / pickle files without torch and without running
                  code from them (an allow-list of globals)
    writer        our format (a pickle + SHA1 + Jittor's magic), written atomically
    weights       load_state_dict (strict, finite floats only), backbone initialisation,
                  training checkpoints (read, write), checkpoint names
    zoo           zoo:NAME and URLs: download, check, convert once, cache
    mapping       the SegNeXt layouts (mmseg 1.x, official, Jittor/JSeg, ImageNet MSCAN): rename
                  tables, drop lists, key patterns and shapes
    convert       one source checkpoint -> our format (weights_convert/convert.py's engine)
"""
from .safe_pickle import CheckpointError, load_checkpoint_file, unwrap_state_dict
from .weights import (NonFiniteError, WeightsMismatchError, check_optimizer_state,
                      checkpoint_iteration, checkpoint_name, find_checkpoints,
                      load_backbone_init, load_state_dict, load_weights, read_checkpoint,
                      read_training_checkpoint, save_training_checkpoint, write_checkpoint)
from .writer import save_checkpoint_file

__all__ = ["CheckpointError", "WeightsMismatchError", "NonFiniteError", "load_checkpoint_file",
           "unwrap_state_dict", "save_checkpoint_file", "load_state_dict", "load_weights",
           "load_backbone_init", "read_checkpoint", "read_training_checkpoint",
           "save_training_checkpoint", "check_optimizer_state", "write_checkpoint",
           "find_checkpoints", "checkpoint_name", "checkpoint_iteration"]
