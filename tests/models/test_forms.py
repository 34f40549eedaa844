"""The network's other forms follow its modules: every module class of a built SegNeXt has
an ONNX writer that reads each of its children (jseg.export.onnx.ONNX_FORMS), and every
state-dict key has its checkpoint mapping (jseg.checkpoint.mapping's key patterns and the
mmseg export; its shape table is checked against built models in
tests/checkpoint/test_convert.py). Change a module without its forms and this fails."""
import re

import pytest

from conftest import DEMO_CONFIG, TINY_OVERRIDES, shipped_model


def _models():
    from jseg.config import load_config
    from jseg.models import build_model
    tiny = build_model(load_config(DEMO_CONFIG, TINY_OVERRIDES).model)
    return {"tiny": tiny, "t": build_model(shipped_model("t")),
            "t-fixed-bases": build_model(load_config(
                DEMO_CONFIG, TINY_OVERRIDES + ["model.decode_head.ham.rand_init=false"]).model)}


@pytest.fixture(scope="module")
def models():
    return _models()


def _children(module):
    return [name for name, _ in module.named_modules() if name and "." not in name]


def test_every_module_has_an_onnx_form_that_reads_each_child(models):
    from jseg.export import onnx as writer
    for label, model in models.items():
        for path, module in model.named_modules():
            form = writer.onnx_form(module)
            assert form is not None, (f"{label}: {path or 'the model'} "
                                      f"({type(module).__name__}) has no ONNX form: add its "
                                      "writer to jseg.export.onnx.ONNX_FORMS")
            name, children = form
            assert name is None or callable(getattr(writer, name, None)), (path, name)
            for child in _children(module):
                assert re.fullmatch(children, child), (
                    f"{label}: {path}.{child} ({type(module).__name__}) is not read by its ONNX "
                    f"writer {name}: teach {name} the new child and add it to ONNX_FORMS")


def test_a_new_child_or_class_is_caught(models):
    """The check above is not vacuous: a block with an extra child, or a class the table
    does not know, is found."""
    from jittor import nn
    from jseg.export import onnx as writer

    block = models["tiny"].backbone.block1[0]
    name, children = writer.onnx_form(block)
    assert not re.fullmatch(children, "extra_norm")

    class Unknown(nn.Module):
        def execute(self, x):
            return x
    assert writer.onnx_form(Unknown()) is None


def test_every_state_dict_key_has_its_checkpoint_mapping(models):
    from jseg.checkpoint.mapping import is_our_key, to_mmseg_state_dict
    for label, model in models.items():
        state = {k: v.numpy() for k, v in model.state_dict().items()}
        unknown = [k for k in state if not is_our_key(k)]
        assert not unknown, (f"{label}: keys without a pattern in "
                             f"jseg.checkpoint.mapping.OUR_KEY_PATTERNS: {unknown[:5]}")
        mmseg, report = to_mmseg_state_dict(state)  # raises on a key it cannot map
        assert report["mapped"] > 0 and set(state) <= set(mmseg), label

