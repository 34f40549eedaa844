"""Element-wise kernels: exact-erf GELU, a per-channel bias, per-channel sums.

Jittor runs element-wise ops as generated loops on one core; these use every core and
vectorise (the GELU's erf and exp are polynomial, see jseg.ops._cpp).
"""
import jittor as jt

from . import enabled
from ._cpp import CHANNEL_SUM, GELU_FORWARD, GELU_GRAD, GELU_HEADER

__all__ = ["applies", "gelu", "add_channel_bias", "channel_sum"]


class _GELU(jt.Function):
    def execute(self, x):
        self.saved = x
        return jt.code(x.shape, x.dtype, [x], cpu_header=GELU_HEADER, cpu_src=GELU_FORWARD)

    def grad(self, grad_out):
        return jt.code(self.saved.shape, self.saved.dtype, [self.saved, grad_out],
                       cpu_header=GELU_HEADER, cpu_src=GELU_GRAD)


def applies(x):
    """True when `gelu` runs here (the kernel takes any shape)."""
    return enabled(x)


def gelu(x):
    """Exact-erf GELU, x / 2 (1 + erf(x / sqrt 2)), on the multi-threaded CPU kernel."""
    return _GELU.apply(x)



# x (N, C, L), bias (C,) -> x + bias[c]
_BIAS_FORWARD = r"""
const int N = in0_shape0, C = in0_shape1, L = in0_shape2;
#pragma omp parallel for schedule(static)
for (int nc = 0; nc < N * C; nc++) {
    const float b = in1_p[nc % C];
    const in0_type* x = in0_p + (size_t)nc * L;
    out_type* y = out_p + (size_t)nc * L;
    #pragma omp simd
    for (int i = 0; i < L; i++) y[i] = x[i] + b;
}
"""


class _AddChannelBias(jt.Function):
    def execute(self, x, bias):
        return jt.code(x.shape, x.dtype, [x, bias], cpu_src=_BIAS_FORWARD)

    def grad(self, grad_out):
        return grad_out, channel_sum(grad_out)


def add_channel_bias(x, bias):
    """(N, C, L) + bias (C,) broadcast over N and L, multi-threaded on CPU."""
    return _AddChannelBias.apply(x, bias)


def channel_sum(x):
    """(N, C, ...) -> (C,): sum over every axis but the channels, multi-threaded."""
    flat = x.reshape((x.shape[0], x.shape[1], -1))
    return jt.code((x.shape[1],), x.dtype, [flat], cpu_header="#include <algorithm>",
                   cpu_src=CHANNEL_SUM)
