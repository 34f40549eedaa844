"""Depthwise convolution on OpenMP kernels: stride 1, "same" padding, with gradients.

Jittor lowers a depthwise convolution (groups == channels) to generated loops on one
core, and oneDNN only takes dense convolutions; SegNeXt has eight depthwise convs per
block (5x5, three 1xk/kx1 strip pairs, the MLP's 3x3), so they dominate CPU time. These
kernels cover the shapes SegNeXt uses: stride 1, padding (k - 1) / 2 per side, odd k.
"""
import jittor as jt

from . import enabled
from ._cpp import GELU_GRAD, GELU_HEADER
from .elementwise import channel_sum

__all__ = ["applies", "depthwise_conv2d"]

# Shared by the three depthwise kernels: a (H, W) plane copied into a zero-bordered
# (H + 2 PH, W + 2 PW) buffer, so that no loop needs a border test.
_DEPTHWISE_HEADER = r"""
#include <vector>
#include <algorithm>
template <typename T>
static inline void jseg_pad_plane(const T* src, int H, int W, int PH, int PW, float* dst,
                                  float add = 0.f) {
    const int WP = W + 2 * PW;
    std::fill(dst, dst + (size_t)(H + 2 * PH) * WP, 0.f);
    for (int h = 0; h < H; h++) {
        const T* __restrict__ row = src + (size_t)h * W;
        float* __restrict__ out = dst + (size_t)(h + PH) * WP + PW;
        #pragma omp simd
        for (int w = 0; w < W; w++) out[w] = row[w] + add;
    }
}
// y[h, w] = bias + sum_{kh, kw} k[kh, kw] * xp[h + kh, w + kw], one output row at a
// time; taps go four at a time (four shifted input rows per pass over the output row,
// so five loads and one store per four multiply-adds), vectorised over w.
static inline void jseg_correlate(const float* xp, int H, int W, int KH, int KW,
                                  const float* k, float bias, float* y) {
    const int WP = W + KW - 1, T = KH * KW;
    for (int h = 0; h < H; h++) {
        float* __restrict__ yr = y + (size_t)h * W;
        const float* base = xp + (size_t)h * WP;
        int t = 0;
        for (; t + 4 <= T; t += 4) {
            const float* __restrict__ p0 = base + (size_t)(t / KW) * WP + t % KW;
            const float* __restrict__ p1 = base + (size_t)((t + 1) / KW) * WP + (t + 1) % KW;
            const float* __restrict__ p2 = base + (size_t)((t + 2) / KW) * WP + (t + 2) % KW;
            const float* __restrict__ p3 = base + (size_t)((t + 3) / KW) * WP + (t + 3) % KW;
            const float k0 = k[t], k1 = k[t + 1], k2 = k[t + 2], k3 = k[t + 3];
            if (t == 0) {
                #pragma omp simd
                for (int w = 0; w < W; w++)
                    yr[w] = bias + k0 * p0[w] + k1 * p1[w] + k2 * p2[w] + k3 * p3[w];
            } else {
                #pragma omp simd
                for (int w = 0; w < W; w++)
                    yr[w] += k0 * p0[w] + k1 * p1[w] + k2 * p2[w] + k3 * p3[w];
            }
        }
        if (t == 0) {
            #pragma omp simd
            for (int w = 0; w < W; w++) yr[w] = bias;
        }
        for (; t < T; t++) {
            const float* __restrict__ p0 = base + (size_t)(t / KW) * WP + t % KW;
            const float k0 = k[t];
            #pragma omp simd
            for (int w = 0; w < W; w++) yr[w] += k0 * p0[w];
        }
    }
}
"""

# x (N, C, H, W), weight (C, 1, KH, KW), bias (C,), input bias (C,) -> out0 (N, C, H, W):
# per (n, c) plane, pad x + input bias, then correlate with the channel's kernel. With
# HAS_ADDEND, in4 (N, C, H, W) is added to the result; with GELU_EPILOGUE, out1 keeps
# that pre-activation and out0 = gelu(out1).
_FORWARD = r"""
const int N = in0_shape0, C = in0_shape1, H = in0_shape2, W = in0_shape3;
const int KH = in1_shape2, KW = in1_shape3, PH = (KH - 1) / 2, PW = (KW - 1) / 2;
#pragma omp parallel
{
    std::vector<float> xp((size_t)(H + 2 * PH) * (W + 2 * PW));
    #pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; nc++) {
        const int c = nc % C;
        const size_t plane = (size_t)nc * H * W;
        jseg_pad_plane(in0_p + plane, H, W, PH, PW, xp.data(), in3_p[c]);
#if GELU_EPILOGUE
        jseg_correlate(xp.data(), H, W, KH, KW, in1_p + (size_t)c * KH * KW, in2_p[c],
                       out1_p + plane);
#if HAS_ADDEND
        for (int i = 0; i < H * W; i++) out1_p[plane + i] += in4_p[plane + i];
#endif
        const float* __restrict__ pre = out1_p + plane;
        float* __restrict__ y = out0_p + plane;
        #pragma omp simd
        for (int i = 0; i < H * W; i++) y[i] = jseg_gelu(pre[i]);
#else
        jseg_correlate(xp.data(), H, W, KH, KW, in1_p + (size_t)c * KH * KW, in2_p[c],
                       out0_p + plane);
#if HAS_ADDEND
        float* __restrict__ y = out0_p + plane;
        const in4_type* __restrict__ extra = in4_p + plane;
        #pragma omp simd
        for (int i = 0; i < H * W; i++) y[i] += extra[i];
#endif
#endif
    }
}
"""

# dy (N, C, H, W), weight -> dx: the same correlation with the kernel flipped
# (dx[h, w] = sum dy[h - kh + PH, w - kw + PW] k[kh, kw]).
_GRAD_INPUT = r"""
const int N = in0_shape0, C = in0_shape1, H = in0_shape2, W = in0_shape3;
const int KH = in1_shape2, KW = in1_shape3, PH = (KH - 1) / 2, PW = (KW - 1) / 2;
#pragma omp parallel
{
    std::vector<float> dyp((size_t)(H + 2 * PH) * (W + 2 * PW));
    std::vector<float> flipped((size_t)KH * KW);
    #pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; nc++) {
        const in1_type* k = in1_p + (size_t)(nc % C) * KH * KW;
        for (int t = 0; t < KH * KW; t++) flipped[t] = k[KH * KW - 1 - t];
        jseg_pad_plane(in0_p + (size_t)nc * H * W, H, W, PH, PW, dyp.data());
        jseg_correlate(dyp.data(), H, W, KH, KW, flipped.data(), 0.f,
                       out_p + (size_t)nc * H * W);
    }
}
"""

# dy (N, C, H, W), x (N, C, H, W), input bias (C,) -> out0 dweight (C, 1, KH, KW),
# out1 dbias (C,).
# One channel per task: dw[kh, kw] = sum dy[h, w] xp[h + kh, w + kw]; per row, every tap's
# dot product reads the same dy row (kept in L1); row sums in float, totals in double.
_GRAD_WEIGHT = r"""
const int N = in0_shape0, C = in0_shape1, H = in0_shape2, W = in0_shape3;
const int KH = out0_shape2, KW = out0_shape3, PH = (KH - 1) / 2, PW = (KW - 1) / 2;
const int WP = W + 2 * PW;
#pragma omp parallel
{
    std::vector<float> xp((size_t)(H + 2 * PH) * WP);
    std::vector<double> total((size_t)KH * KW);
    #pragma omp for schedule(dynamic)
    for (int c = 0; c < C; c++) {
        std::fill(total.begin(), total.end(), 0.0);
        double bias_total = 0;
        for (int n = 0; n < N; n++) {
            const size_t plane = ((size_t)n * C + c) * H * W;
            jseg_pad_plane(in1_p + plane, H, W, PH, PW, xp.data(), in2_p[c]);
            for (int h = 0; h < H; h++) {
                const in0_type* __restrict__ dyr = in0_p + plane + (size_t)h * W;
                float sb = 0;
                #pragma omp simd reduction(+:sb)
                for (int w = 0; w < W; w++) sb += dyr[w];
                bias_total += sb;
                for (int kh = 0; kh < KH; kh++) {
                    const float* __restrict__ xr = xp.data() + (size_t)(h + kh) * WP;
                    for (int kw = 0; kw < KW; kw++) {
                        float s = 0;
                        #pragma omp simd reduction(+:s)
                        for (int w = 0; w < W; w++) s += dyr[w] * xr[w + kw];
                        total[kh * KW + kw] += s;
                    }
                }
            }
        }
        for (int t = 0; t < KH * KW; t++) out0_p[(size_t)c * KH * KW + t] = total[t];
        out1_p[c] = bias_total;
    }
}
"""


class _DepthwiseConv2d(jt.Function):
    """y = [gelu](depthwise_conv(x + in_bias, weight) + bias [+ addend]), stride 1, "same"."""

    def execute(self, x, weight, bias, in_bias, with_gelu, addend=None):
        self.input_bias_used = in_bias is not None
        if in_bias is None:
            in_bias = jt.zeros((x.shape[1],), "float32")
        header = (GELU_HEADER + f"#define GELU_EPILOGUE {int(with_gelu)}\n"
                  f"#define HAS_ADDEND {int(addend is not None)}\n" + _DEPTHWISE_HEADER)
        inputs = [x, weight, bias, in_bias] + ([addend] if addend is not None else [])
        if with_gelu:
            y, pre = jt.code([x.shape, x.shape], [x.dtype, x.dtype], inputs, cpu_header=header,
                             cpu_src=_FORWARD)
        else:
            y, pre = jt.code(x.shape, x.dtype, inputs, cpu_header=header, cpu_src=_FORWARD), None
        self.saved = (x, weight, in_bias, pre, addend is not None)
        return y

    def grad(self, grad_out):
        x, weight, in_bias, pre, has_addend = self.saved
        if pre is not None:
            grad_out = jt.code(pre.shape, pre.dtype, [pre, grad_out], cpu_header=GELU_HEADER,
                               cpu_src=GELU_GRAD)
        header = (GELU_HEADER + "#define GELU_EPILOGUE 0\n#define HAS_ADDEND 0\n"
                  + _DEPTHWISE_HEADER)
        grad_x = jt.code(x.shape, x.dtype, [grad_out, weight], cpu_header=header,
                         cpu_src=_GRAD_INPUT)
        grad_w, grad_b = jt.code([weight.shape, (weight.shape[0],)], [weight.dtype, weight.dtype],
                                 [grad_out, x, in_bias], cpu_header=header,
                                 cpu_src=_GRAD_WEIGHT)
        grad_in_bias = channel_sum(grad_x) if self.input_bias_used else None
        return (grad_x, grad_w, grad_b, grad_in_bias, None) + ((grad_out,) if has_addend else ())


def applies(conv, x):
    """True when `depthwise_conv2d` stands in for `conv(x)` (an nn.Conv2d) here: the kernels
    are on (jseg.ops.enabled) and the conv is depthwise, stride 1, "same" padding, odd kernel."""
    kh, kw = conv.kernel_size
    return (enabled(x) and conv.bias is not None
            and conv.groups == conv.in_channels == conv.out_channels
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
            and kh % 2 == 1 and kw % 2 == 1
            and tuple(conv.padding) == ((kh - 1) // 2, (kw - 1) // 2))


def depthwise_conv2d(x, weight, bias, input_bias=None, gelu=False, addend=None):
    """Depthwise conv, stride 1, padding (k - 1) / 2: (N, C, H, W) -> (N, C, H, W).

    weight: (C, 1, KH, KW) with odd KH and KW; bias: (C,). float32, CPU.
    input_bias (C,): added to x before the convolution (inside the zero padding), i.e.
    conv(x + input_bias), the bias of a preceding 1x1 conv without a pass of its own.
    addend (N, C, H, W): added to the result (before GELU), e.g. a running branch sum.
    gelu: apply GELU to the result in the same pass.
    """
    if addend is None:
        return _DepthwiseConv2d.apply(x, weight, bias, input_bias, bool(gelu))
    return _DepthwiseConv2d.apply(x, weight, bias, input_bias, bool(gelu), addend)
