"""Loading weights (jseg/engine/checkpoint.py): strict shapes, and only finite floating-point
values; resuming needs a real training checkpoint."""
import numpy as np
import pytest

from jseg.config import load_config
from jseg.checkpoint import (WeightsMismatchError, checkpoint_iteration, checkpoint_name,
                                    find_checkpoints, load_state_dict, read_training_checkpoint,
                                    write_checkpoint)
from jseg.checkpoint.safe_pickle import CheckpointError

from conftest import DEMO_CONFIG, TINY_OVERRIDES


@pytest.fixture(scope="module")
def model():
    from jseg.models import build_model
    return build_model(load_config(DEMO_CONFIG, TINY_OVERRIDES).model)


def weights(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_weights_are_refused_and_nothing_is_loaded(model, poison):
    state = weights(model)
    before = state["decode_head.conv_seg.bias"].copy()
    bad = {k: v + 1 for k, v in state.items()}
    bad["backbone.norm4.weight"][0] = poison
    with pytest.raises(WeightsMismatchError, match=r"1 of \d+ tensors hold NaN or infinite "
                                                   r"values \(backbone.norm4.weight\)"):
        load_state_dict(model, bad, source="diverged.pkl")
    np.testing.assert_array_equal(model.decode_head.conv_seg.bias.numpy(), before)


def test_non_float_weights_are_refused(model):
    bad = weights(model)
    bad["decode_head.conv_seg.weight"] = bad["decode_head.conv_seg.weight"].astype(np.int64)
    with pytest.raises(WeightsMismatchError, match="not floating point "
                                                   r"\(decode_head.conv_seg.weight: int64\)"):
        load_state_dict(model, bad, source="ints.pkl")


def test_fp16_weights_load(model):
    state = {k: v.astype(np.float16) for k, v in weights(model).items()}
    load_state_dict(model, state, source="half.pkl")


def test_resume_needs_a_training_checkpoint(model, tmp_path):
    path = str(tmp_path / "converted.pkl")
    write_checkpoint(path, {"state_dict": weights(model)})
    with pytest.raises(CheckpointError, match="is not a training checkpoint.*load_from"):
        read_training_checkpoint(path, model)


def test_checkpoint_names(tmp_path):
    for name in ("iter_00000002.pkl", "iter_00000010.pkl", "iter_final.pkl", "notes.txt",
                 ".iter_00000012.pkl.0123abcd.tmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.split("/")[-1] for p in find_checkpoints(str(tmp_path))] == \
        ["iter_00000002.pkl", "iter_00000010.pkl"]
    assert checkpoint_name(12) == "iter_00000012.pkl" and checkpoint_iteration("a/iter_00000012.pkl") == 12
    assert checkpoint_iteration("iter_final.pkl") is None
