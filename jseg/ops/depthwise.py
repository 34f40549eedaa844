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
# buffer of H + 2 PH rows, WP wide (>= W + 2 PW), so that no loop needs a border test.
_DEPTHWISE_HEADER = r"""
#include <vector>
#include <algorithm>
template <typename T>
static inline void jseg_pad_plane(const T* src, int H, int W, int PH, int PW, float* dst,
                                  float add = 0.f, int WP = 0) {
    if (WP == 0) WP = W + 2 * PW;
    std::fill(dst, dst + (size_t)(H + 2 * PH) * WP, 0.f);
    for (int h = 0; h < H; h++) {
        const T* __restrict__ row = src + (size_t)h * W;
        float* __restrict__ out = dst + (size_t)(h + PH) * WP + PW;
        #pragma omp simd
        for (int w = 0; w < W; w++) out[w] = row[w] + add;
    }
}
// Row width of the buffer jseg_correlate reads: tiles of JSEG_TILE outputs along w read
// JSEG_TILE + KW - 1 inputs, so the last tile of a row may read past W + 2 PW.
#define JSEG_TILE 32
static inline int jseg_padded_width(int W, int KW) {
    return (W + JSEG_TILE - 1) / JSEG_TILE * JSEG_TILE + KW - 1;
}
// acc[h, w0 + j] = bias + sum_t k[t] * xp[h + t / KW, w0 + j + t % KW] for a tile of
// JSEG_TILE outputs along w, kept in 8-float registers over every tap (one load per
// multiply-add, one store per output); store(h, w0, n, acc) writes the first n.
typedef float jseg_v8 __attribute__((vector_size(32)));
typedef float jseg_v8u __attribute__((vector_size(32), aligned(4)));  // unaligned loads
template <typename Store>
static inline void jseg_correlate(const float* xp, int WP, int H, int W, int KH, int KW,
                                  const float* k, float bias, Store store) {
    const int T = KH * KW;
    std::vector<int> offsets(T);
    for (int t = 0; t < T; t++) offsets[t] = (t / KW) * WP + t % KW;
    const int* off = offsets.data();
    alignas(32) float acc[JSEG_TILE];
    for (int h = 0; h < H; h++) {
        const float* base = xp + (size_t)h * WP;
        for (int w0 = 0; w0 < W; w0 += JSEG_TILE) {
            // even taps into a*, odd ones into b*: eight independent chains of
            // multiply-adds hide the FMA latency
            jseg_v8 a0 = bias - (jseg_v8){}, a1 = a0, a2 = a0, a3 = a0;
            jseg_v8 b0 = (jseg_v8){}, b1 = b0, b2 = b0, b3 = b0;
            const float* row = base + w0;
            int t = 0;
            for (; t + 2 <= T; t += 2) {
                const float ka = k[t], kb = k[t + 1];
                const float* p = row + off[t];
                const float* q = row + off[t + 1];
                a0 += ka * *(const jseg_v8u*)p;
                b0 += kb * *(const jseg_v8u*)q;
                a1 += ka * *(const jseg_v8u*)(p + 8);
                b1 += kb * *(const jseg_v8u*)(q + 8);
                a2 += ka * *(const jseg_v8u*)(p + 16);
                b2 += kb * *(const jseg_v8u*)(q + 16);
                a3 += ka * *(const jseg_v8u*)(p + 24);
                b3 += kb * *(const jseg_v8u*)(q + 24);
            }
            if (t < T) {
                const float ka = k[t];
                const float* p = row + off[t];
                a0 += ka * *(const jseg_v8u*)p;
                a1 += ka * *(const jseg_v8u*)(p + 8);
                a2 += ka * *(const jseg_v8u*)(p + 16);
                a3 += ka * *(const jseg_v8u*)(p + 24);
            }
            *(jseg_v8*)acc = a0 + b0;
            *(jseg_v8*)(acc + 8) = a1 + b1;
            *(jseg_v8*)(acc + 16) = a2 + b2;
            *(jseg_v8*)(acc + 24) = a3 + b3;
            store(h, w0, std::min(JSEG_TILE, W - w0), acc);
        }
    }
}
"""

# x (N, C, H, W), weight (C, 1, KH, KW), bias (C,), input bias (C,) -> out0 (N, C, H, W):
# per (n, c) plane, pad x + input bias, then correlate with the channel's kernel. With
# HAS_ADDEND, in4 (N, C, H, W) is added to the result; with GELU_EPILOGUE, out0 =
# gelu(result), and with KEEP_PRE out1 keeps the result before GELU (for the gradient).
_FORWARD = r"""
const int N = in0_shape0, C = in0_shape1, H = in0_shape2, W = in0_shape3;
const int KH = in1_shape2, KW = in1_shape3, PH = (KH - 1) / 2, PW = (KW - 1) / 2;
const int WP = jseg_padded_width(W, KW);
#pragma omp parallel
{
    std::vector<float> xp((size_t)(H + 2 * PH) * WP);
    #pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; nc++) {
        const int c = nc % C;
        const size_t plane = (size_t)nc * H * W;
        jseg_pad_plane(in0_p + plane, H, W, PH, PW, xp.data(), in3_p[c], WP);
        jseg_correlate(xp.data(), WP, H, W, KH, KW, in1_p + (size_t)c * KH * KW, in2_p[c],
                       [&](int h, int w0, int n, const float* acc) {
            const size_t o = plane + (size_t)h * W + w0;
            float* __restrict__ y = out0_p + o;
#if HAS_ADDEND
            const in4_type* __restrict__ extra = in4_p + o;
#endif
            #pragma omp simd
            for (int j = 0; j < n; j++) {
                float v = acc[j];
#if HAS_ADDEND
                v += extra[j];
#endif
#if GELU_EPILOGUE
#if KEEP_PRE
                out1_p[o + j] = v;
#endif
                y[j] = jseg_gelu(v);
#else
                y[j] = v;
#endif
            }
        });
    }
}
"""

# dy (N, C, H, W), weight -> dx: the same correlation with the kernel flipped
# (dx[h, w] = sum dy[h - kh + PH, w - kw + PW] k[kh, kw]).
_GRAD_INPUT = r"""
const int N = in0_shape0, C = in0_shape1, H = in0_shape2, W = in0_shape3;
const int KH = in1_shape2, KW = in1_shape3, PH = (KH - 1) / 2, PW = (KW - 1) / 2;
const int WP = jseg_padded_width(W, KW);
#pragma omp parallel
{
    std::vector<float> dyp((size_t)(H + 2 * PH) * WP);
    std::vector<float> flipped((size_t)KH * KW);
    #pragma omp for schedule(static)
    for (int nc = 0; nc < N * C; nc++) {
        const in1_type* k = in1_p + (size_t)(nc % C) * KH * KW;
        for (int t = 0; t < KH * KW; t++) flipped[t] = k[KH * KW - 1 - t];
        jseg_pad_plane(in0_p + (size_t)nc * H * W, H, W, PH, PW, dyp.data(), 0.f, WP);
        out_type* dx = out_p + (size_t)nc * H * W;
        jseg_correlate(dyp.data(), WP, H, W, KH, KW, flipped.data(), 0.f,
                       [&](int h, int w0, int n, const float* acc) {
            out_type* __restrict__ row = dx + (size_t)h * W + w0;
            #pragma omp simd
            for (int j = 0; j < n; j++) row[j] = acc[j];
        });
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
        keep_pre = with_gelu and not jt.flags.no_grad  # GELU's gradient needs its input
        header = (GELU_HEADER + f"#define GELU_EPILOGUE {int(with_gelu)}\n"
                  f"#define KEEP_PRE {int(keep_pre)}\n"
                  f"#define HAS_ADDEND {int(addend is not None)}\n" + _DEPTHWISE_HEADER)
        inputs = [x, weight, bias, in_bias] + ([addend] if addend is not None else [])
        if keep_pre:
            y, pre = jt.code([x.shape, x.shape], [x.dtype, x.dtype], inputs, cpu_header=header,
                             cpu_src=_FORWARD)
        else:
            y, pre = jt.code(x.shape, x.dtype, inputs, cpu_header=header, cpu_src=_FORWARD), None
        self.saved = (x, weight, in_bias, pre, addend is not None)
        self.with_gelu = with_gelu
        return y

    def grad(self, grad_out):
        x, weight, in_bias, pre, has_addend = self.saved
        if self.with_gelu and pre is None:
            raise RuntimeError("depthwise_conv2d(gelu=True) ran under jt.no_grad(), which "
                               "drops what its gradient needs; run the forward outside it")
        if pre is not None:
            grad_out = jt.code(pre.shape, pre.dtype, [pre, grad_out], cpu_header=GELU_HEADER,
                               cpu_src=GELU_GRAD)
        header = (GELU_HEADER + "#define GELU_EPILOGUE 0\n#define KEEP_PRE 0\n"
                  "#define HAS_ADDEND 0\n" + _DEPTHWISE_HEADER)
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
