"""Mixed-precision training (`train.amp: true`, CUDA only): fp16 compute, fp32 weights.

Jittor's automatic mixed precision (`jt.flags.auto_mixed_precision_level = 5`) runs ops in
float16 where it can and keeps the parameters, and so the AdamW update and its moments, in
float32. Small fp16 gradients underflow, so the loss is multiplied by a scale before the
backward pass and the gradients divided by it after, as PyTorch's GradScaler and mmseg's
AmpOptimWrapper (loss_scale='dynamic') do, with their defaults:

- start at 2**16; if any gradient is inf or NaN, skip that optimizer step and halve the scale;
- after 2000 consecutive good steps, double it.

The scaler's state is saved in training checkpoints, so a resumed run continues exactly.
"""
import math

import jittor as jt

__all__ = ["DynamicLossScaler", "AMP_LEVEL", "amp_scope"]

# Jittor's level 5: prefer fp16 for ops and for arrays created from numpy input
AMP_LEVEL = 5


class DynamicLossScaler:
    """Loss scale with PyTorch GradScaler's dynamic rule (see the module docstring)."""

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000):
        self.scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.good_steps = 0

    def update(self, found_inf: bool):
        """After a step: back off on overflow, grow after `growth_interval` good steps."""
        if found_inf:
            self.scale *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])

    def backward(self, optimizer, loss):
        """optimizer.backward(loss * scale): gradients of the scaled loss."""
        optimizer.backward(loss * self.scale)

    def unscale(self, optimizer):
        """Divide the stored gradients by the scale, then `update`; returns found_inf.

        On found_inf the caller must skip `optimizer.step()` (the gradients are dropped
        here; the AdamW moments and step count stay as they were).
        """
        total = None
        for group in optimizer.param_groups:
            for param, grad in zip(group["params"], group.get("grads", [])):
                if param.is_stop_grad():
                    continue
                grad.update(grad.float32() / self.scale)
                part = grad.abs().sum()  # inf or NaN exactly when some element is
                total = part if total is None else total + part
        found_inf = total is not None and not math.isfinite(float(total.item()))
        self.update(found_inf)
        if found_inf:
            optimizer.zero_grad()
            optimizer.n_step -= 1  # Jittor counts the step in backward(); AdamW's bias
            # correction must not count a skipped one
        return found_inf


def amp_scope(enabled: bool):
    """Context manager: Jittor's mixed precision on (level 5) inside, restored after."""
    return jt.flag_scope(auto_mixed_precision_level=AMP_LEVEL if enabled else
                         jt.flags.auto_mixed_precision_level)
