"""jseg.ops.accelerate: jseg.models is the reference maths only, and the CPU kernels are put
under a built model once, module by module, keeping every parameter and state-dict key."""
import ast
import importlib
from pathlib import Path

import numpy as np

import jseg  # noqa: F401  (configures Jittor before it is imported)
import jittor as jt

from jseg import ops
from jseg.ops.fast_forms import FAST_FORMS

ROOT = Path(__file__).resolve().parents[2]


def _resolve(qualified):
    module, name = qualified.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def test_every_fast_form_names_a_model_class_and_its_methods():
    for qualified, forms in FAST_FORMS.items():
        assert qualified.startswith("jseg.models."), qualified
        cls = _resolve(qualified)
        for method in forms:
            assert callable(getattr(cls, method, None)), f"{qualified} has no method {method}"


def test_models_hold_no_kernel_dispatch():
    """jseg.models imports nothing from jseg.ops but `accelerate`, in the builder."""
    found = []
    for path in sorted((ROOT / "jseg" / "models").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jseg.ops"):
                found.append((path.name, node.module, sorted(a.name for a in node.names)))
            elif isinstance(node, ast.Import):
                found += [(path.name, a.name, []) for a in node.names
                          if a.name.startswith("jseg.ops")]
    assert found == [("builder.py", "jseg.ops", ["accelerate"])], found


def test_build_model_accelerates_every_module_with_a_fast_form():
    from conftest import DEMO_CONFIG, TINY_OVERRIDES
    from jseg.config import load_config
    from jseg.models import build_model
    model = build_model(load_config(DEMO_CONFIG, TINY_OVERRIDES).model)
    names = {type(m).__name__ for m in model.modules()}
    for qualified in FAST_FORMS:
        short = qualified.rsplit(".", 1)[1]
        assert short not in names, f"{short} was not accelerated"
        assert f"Fast{short}" in names, f"the tiny model has no {short}: test it elsewhere"


def test_accelerate_keeps_parameters_keys_and_the_reference_maths():
    from jseg.models.mscan import MSCAN
    jt.set_global_seed(0)
    model = MSCAN(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1)).eval()
    assert not any(type(m).__name__.startswith("Fast") for m in model.modules())
    x = jt.randn(1, 3, 32, 32)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    reference = [y.numpy() for y in model(x)]
    classes = [type(m) for m in model.modules()]
    assert ops.accelerate(model) is model
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(np.array_equal(before[k], after[k].numpy()) for k in before)
    for old, module in zip(classes, model.modules()):
        assert isinstance(module, old)
        assert type(module) is old or type(module).reference_class is old
    fast_classes = [type(m) for m in model.modules()]
    ops.accelerate(model)  # idempotent: no Fast of a Fast
    assert [type(m) for m in model.modules()] == fast_classes
    accelerated = [y.numpy() for y in model(x)]
    with ops.disabled():  # switched off, the fast classes run the reference methods
        off = [y.numpy() for y in model(x)]
    for r, a, o in zip(reference, accelerated, off):
        np.testing.assert_array_equal(o, r)
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5 * np.abs(r).max())
        assert not np.array_equal(a, r)  # the kernels really ran
