"""Fast CPU implementations of the ops SegNeXt spends its time in, behind one switch.

Jittor runs depthwise convolutions, resizes, GELU, GroupNorm, the loss and element-wise
steps as generated loops on one core, and hands 1x1 convolutions to oneDNN with layout
reorders around each call. The modules here do the same maths as multi-threaded OpenMP
kernels (with their backward passes) or as 2-D sgemm calls:

    depthwise     depthwise convolution (stride 1, "same" padding)
    resize        bilinear resize with PyTorch's arithmetic
    elementwise   exact-erf GELU, per-channel bias, per-channel sums
    norm          GroupNorm
    matmul        1x1 convolutions and batched matmuls as per-sample 2-D matmuls
    sgemm         those 2-D matmuls on OpenBLAS (scipy-openblas32, else numpy's bundled
                  one; faster than oneDNN 2.2's sgemm that Jittor uses)
    loss          cross-entropy and accuracy without one-hot or log-probability tensors
    slide_merge   the mean of overlapping slide-inference windows
    fused_block   the MSCAN block with its biases and element-wise steps folded into
                  the neighbouring kernels

`enabled(*tensors)` is the one rule for whether they run: on CPU, for float32 tensors,
unless switched off by `JSEG_CPU_KERNELS=0` in the environment (read when jseg.ops is
first imported) or inside `with jseg.ops.disabled():`. Each family's `applies(...)` is
`enabled()` plus the shapes its kernels cover. Switched off, the model runs exactly as
on CUDA: the reference maths of jseg.models on Jittor's own ops.
"""
import contextlib
import os

import jittor as jt

__all__ = ["enabled", "disabled", "ENV"]

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
