"""Fast CPU implementations of the ops SegNeXt spends its time in, behind one switch.

The same maths as the layers of jseg.models, as multi-threaded OpenMP kernels (with their
backward passes) or 2-D sgemm calls, one module per op family: depthwise (stride 1, "same"
padding), resize (bilinear, PyTorch's arithmetic), elementwise (exact-erf GELU, per-channel
bias and sums), norm (GroupNorm, LayerNorm over the channels of NCHW data), matmul (1x1
convs and batched matmuls as per-sample 2-D matmuls), sgemm (those on OpenBLAS), loss
(cross-entropy and accuracy without one-hot or log-probability tensors), slide_merge,
fused_block (the MSCAN block's biases and element-wise steps inside its kernels).

`accelerate(model)` (jseg.ops.fast_forms) puts them under a built model once, module by
module; jseg.models itself is the reference maths only.

`enabled(*tensors)` is the one rule for whether they run: on CPU, for float32 tensors,
unless switched off by `JSEG_CPU_KERNELS=0` in the environment (read when jseg.ops is
first imported) or inside `with jseg.ops.disabled():`. Each family's `applies(...)` is
`enabled()` plus the shapes its kernels cover. Switched off, the model runs exactly as
on CUDA: the reference maths of jseg.models on Jittor's own ops. Why: docs/performance.md.
"""
import contextlib
import os

import jittor as jt

__all__ = ["enabled", "disabled", "accelerate", "ENV"]

ENV = "JSEG_CPU_KERNELS"

_switched_on = os.environ.get(ENV, "1").strip() != "0"


def enabled(*tensors):
    """True when jseg's CPU kernels run for these tensors (see the module docstring)."""
    return (_switched_on and not jt.flags.use_cuda
            and all(t.dtype == "float32" for t in tensors))


@contextlib.contextmanager
def disabled():
    """Inside, every kernel and the block fusion are off (e.g. to count FLOPs module by
    module, or to check the model against the kernels)."""
    global _switched_on
    previous, _switched_on = _switched_on, False
    try:
        yield
    finally:
        _switched_on = previous


from .fast_forms import accelerate  # noqa: E402  (its kernels import `enabled` from here)
