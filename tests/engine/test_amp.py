"""Dynamic loss scaling for mixed precision (the fp16 compute itself needs a GPU)."""
import numpy as np

import jseg  # noqa: F401
import jittor as jt
from jittor import nn

from jseg.engine.amp import DynamicLossScaler


def test_scale_backs_off_on_overflow_and_grows_after_good_steps():
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    scaler.update(found_inf=True)
    assert scaler.scale == 4.0 and scaler.good_steps == 0
    for _ in range(2):
        scaler.update(found_inf=False)
    assert scaler.scale == 4.0
    scaler.update(found_inf=False)
    assert scaler.scale == 8.0 and scaler.good_steps == 0
    restored = DynamicLossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == {"scale": 8.0, "good_steps": 0}


def _model_and_optimizer():
    jt.set_seed(0)
    model = nn.Linear(3, 2)
    return model, jt.optim.AdamW(model.parameters(), lr=0.1)


def test_scaled_step_equals_the_plain_step():
    x = jt.array(np.arange(12, dtype="float32").reshape(4, 3) / 10)
    plain, plain_opt = _model_and_optimizer()
    plain_opt.step(plain(x).sqr().sum())
    scaled, scaled_opt = _model_and_optimizer()
    scaler = DynamicLossScaler(init_scale=1024.0)
    scaler.backward(scaled_opt, scaled(x).sqr().sum())
    assert not scaler.unscale(scaled_opt)
    scaled_opt.step()
    np.testing.assert_allclose(scaled.weight.numpy(), plain.weight.numpy(), rtol=1e-6)
    assert scaler.good_steps == 1


def test_overflow_skips_the_step_and_keeps_the_weights():
    model, optimizer = _model_and_optimizer()
    before = model.weight.numpy().copy()
    scaler = DynamicLossScaler(init_scale=1024.0)
    x = jt.array(np.array([[1.0, float("inf"), 0.0]], "float32"))
    scaler.backward(optimizer, model(x).sum())
    assert scaler.unscale(optimizer)  # inf gradient found
    assert scaler.scale == 512.0
    np.testing.assert_array_equal(model.weight.numpy(), before)
    assert optimizer.n_step == 0
    # the next, finite step works from clean gradients
    scaler.backward(optimizer, model(jt.ones((1, 3))).sum())
    assert not scaler.unscale(optimizer)
    optimizer.step()
    assert optimizer.n_step == 1 and np.isfinite(model.weight.numpy()).all()
