"""Multi-threaded CPU kernels for the ops Jittor runs slowly on CPU.

Jittor lowers a depthwise convolution (groups == channels) to generated loops that
run on one core; oneDNN only takes dense convolutions. SegNeXt has eight depthwise
convs per block (5x5, three 1xk/kx1 strip pairs, the MLP's 3x3), so they dominate
CPU time. `depthwise_conv2d` computes the same thing with OpenMP kernels written
for the shapes SegNeXt uses: stride 1, "same" padding ((k - 1) / 2 per side). `bilinear_resize`
replaces Jittor's interpolate, which builds the four-neighbour gather from generic
index ops (about 190 ms of a 600 ms SegNeXt-T forward at 512x512).

Every kernel here has a backward pass (a `jt.Function`); without one Jittor would
silently give zero gradients. On CUDA, or for shapes these kernels do not cover,
callers keep Jittor's own implementation.
"""
import jittor as jt

__all__ = ["depthwise_conv2d", "depthwise_supported", "bilinear_resize", "resize_supported",
           "cross_entropy_sum", "cross_entropy_supported", "accuracy_counts", "gelu",
           "add_channel_bias", "batched_weight_matmul", "group_norm", "group_norm_supported",
           "slide_merge", "slide_merge_supported"]

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
        header = (_GELU_HEADER + f"#define GELU_EPILOGUE {int(with_gelu)}\n"
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
            grad_out = jt.code(pre.shape, pre.dtype, [pre, grad_out], cpu_header=_GELU_HEADER,
                               cpu_src=_GELU_GRAD)
        header = (_GELU_HEADER + "#define GELU_EPILOGUE 0\n#define HAS_ADDEND 0\n"
                  + _DEPTHWISE_HEADER)
        grad_x = jt.code(x.shape, x.dtype, [grad_out, weight], cpu_header=header,
                         cpu_src=_GRAD_INPUT)
        grad_w, grad_b = jt.code([weight.shape, (weight.shape[0],)], [weight.dtype, weight.dtype],
                                 [grad_out, x, in_bias], cpu_header=header,
                                 cpu_src=_GRAD_WEIGHT)
        grad_in_bias = channel_sum(grad_x) if self.input_bias_used else None
        return (grad_x, grad_w, grad_b, grad_in_bias, None) + ((grad_out,) if has_addend else ())


def depthwise_supported(conv, x):
    """True when `depthwise_conv2d` can stand in for `conv(x)` (an nn.Conv2d) here."""
    kh, kw = conv.kernel_size
    return (not jt.flags.use_cuda and x.dtype == "float32" and conv.bias is not None
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


# Bilinear resize as PyTorch's upsample_bilinear2d computes it on CPU (float math):
# scale = in / out (align_corners: (in - 1) / (out - 1)), source = scale * (dst + 0.5) - 0.5
# clamped at 0 (align_corners: scale * dst), i0 = floor, i1 = i0 + 1 unless at the edge,
# out = l0h * (l0w * x00 + l1w * x01) + l1h * (l0w * x10 + l1w * x11).
_RESIZE_HEADER = r"""
#include <vector>
#include <cmath>
#include <algorithm>
static inline void jseg_linear_indices(int in, int out, bool align_corners,
                                       std::vector<int>& i0, std::vector<int>& i1,
                                       std::vector<float>& l0, std::vector<float>& l1) {
    i0.resize(out); i1.resize(out); l0.resize(out); l1.resize(out);
    float scale = align_corners ? (out > 1 ? (float)(in - 1) / (out - 1) : 0.f)
                                : (float)in / out;
    for (int d = 0; d < out; d++) {
        float src = align_corners ? scale * d : scale * (d + 0.5f) - 0.5f;
        if (src < 0) src = 0;
        int lo = std::min((int)std::floor(src), in - 1);
        float lambda = std::min(std::max(src - lo, 0.f), 1.f);
        i0[d] = lo;
        i1[d] = lo + (lo < in - 1 ? 1 : 0);
        l1[d] = lambda;
        l0[d] = 1.f - lambda;
    }
}
// index and weight tables of both axes, (H, W) <-> (OH, OW)
struct JsegResizeTables {
    std::vector<int> h0, h1, w0, w1;
    std::vector<float> lh0, lh1, lw0, lw1;
    JsegResizeTables(int H, int W, int OH, int OW) {
        jseg_linear_indices(H, OH, ALIGN_CORNERS, h0, h1, lh0, lh1);
        jseg_linear_indices(W, OW, ALIGN_CORNERS, w0, w1, lw0, lw1);
    }
};
"""

_RESIZE_FORWARD = r"""
const int NC = in0_shape0 * in0_shape1, H = in0_shape2, W = in0_shape3;
const int OH = out_shape2, OW = out_shape3;
const JsegResizeTables t(H, W, OH, OW);
const int *h0 = t.h0.data(), *h1 = t.h1.data(), *w0 = t.w0.data(), *w1 = t.w1.data();
const float *lh0 = t.lh0.data(), *lh1 = t.lh1.data(), *lw0 = t.lw0.data(), *lw1 = t.lw1.data();
#pragma omp parallel for schedule(static)
for (int p = 0; p < NC; p++) {
    const in0_type* x = in0_p + (size_t)p * H * W;
    out_type* y = out_p + (size_t)p * OH * OW;
    for (int oh = 0; oh < OH; oh++) {
        const in0_type* r0 = x + (size_t)h0[oh] * W;
        const in0_type* r1 = x + (size_t)h1[oh] * W;
        const float a0 = lh0[oh], a1 = lh1[oh];
        out_type* yr = y + (size_t)oh * OW;
        for (int ow = 0; ow < OW; ow++) {
            const int c0 = w0[ow], c1 = w1[ow];
            const float b0 = lw0[ow], b1 = lw1[ow];
            yr[ow] = a0 * (b0 * r0[c0] + b1 * r0[c1]) + a1 * (b0 * r1[c0] + b1 * r1[c1]);
        }
    }
}
"""

# dy (N, C, OH, OW) -> dx (N, C, H, W): every output pixel scatters its four weights.
_RESIZE_GRAD = r"""
const int NC = in0_shape0 * in0_shape1, OH = in0_shape2, OW = in0_shape3;
const int H = out_shape2, W = out_shape3;
const JsegResizeTables t(H, W, OH, OW);
const int *h0 = t.h0.data(), *h1 = t.h1.data(), *w0 = t.w0.data(), *w1 = t.w1.data();
const float *lh0 = t.lh0.data(), *lh1 = t.lh1.data(), *lw0 = t.lw0.data(), *lw1 = t.lw1.data();
#pragma omp parallel for schedule(static)
for (int p = 0; p < NC; p++) {
    const in0_type* dy = in0_p + (size_t)p * OH * OW;
    out_type* dx = out_p + (size_t)p * H * W;
    for (int i = 0; i < H * W; i++) dx[i] = 0;
    for (int oh = 0; oh < OH; oh++) {
        out_type* r0 = dx + (size_t)h0[oh] * W;
        out_type* r1 = dx + (size_t)h1[oh] * W;
        const float a0 = lh0[oh], a1 = lh1[oh];
        const in0_type* dyr = dy + (size_t)oh * OW;
        for (int ow = 0; ow < OW; ow++) {
            const int c0 = w0[ow], c1 = w1[ow];
            const float g = dyr[ow], b0 = lw0[ow], b1 = lw1[ow];
            r0[c0] += a0 * b0 * g;
            r0[c1] += a0 * b1 * g;
            r1[c0] += a1 * b0 * g;
            r1[c1] += a1 * b1 * g;
        }
    }
}
"""


def _resize_header(align_corners):
    return f"#define ALIGN_CORNERS {int(bool(align_corners))}\n" + _RESIZE_HEADER


class _BilinearResize(jt.Function):
    """(N, C, H, W) -> (N, C, OH, OW), bilinear, with gradients."""

    def execute(self, x, size, align_corners):
        self.saved = (x.shape, x.dtype, align_corners)  # the backward needs no values of x
        n, c = x.shape[:2]
        return jt.code((n, c, *size), x.dtype, [x], cpu_header=_resize_header(align_corners),
                       cpu_src=_RESIZE_FORWARD)

    def grad(self, grad_out):
        shape, dtype, align_corners = self.saved
        return jt.code(shape, dtype, [grad_out], cpu_header=_resize_header(align_corners),
                       cpu_src=_RESIZE_GRAD), None, None


def resize_supported(x):
    """True when `bilinear_resize` can stand in for Jittor's interpolate on `x`."""
    return not jt.flags.use_cuda and x.dtype == "float32" and x.ndim == 4


def bilinear_resize(x, size, align_corners=False):
    """Bilinear resize of (N, C, H, W) float32 to `size` = (OH, OW), PyTorch's arithmetic."""
    return _BilinearResize.apply(x, (int(size[0]), int(size[1])), bool(align_corners))


# expf that vectorises (glibc's does not without -ffast-math): Cephes' range reduction
# x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r, 2^n from the exponent
# bits. Relative error ~2e-7 (1-2 ulp), like the SIMD exp PyTorch uses.
_FAST_EXP = r"""
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
static inline float jseg_exp(float x) {
    x = std::min(std::max(x, -87.3f), 88.7f);
    float n = std::floor(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}
#define JSEG_BLOCK 64
// a label that carries loss: not ignored and one of the C classes
#define JSEG_COUNTS(y, C) ((y) != IGNORE_INDEX && (y) >= 0 && (y) < (C))
// Jittor compiles kernels with -Ofast, which assumes no NaN or inf and may fold
// x != x away; test the exponent bits instead.
#include <limits>
static inline int jseg_not_finite(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    return (bits & 0x7f800000u) == 0x7f800000u;
}
"""

# logits (B, C, H, W), label (B, H, W) ints, class weights (C,) -> out (1,) float64:
# sum over pixels of w[y] * (logsumexp(x) - x[y]), 0 for ignored or out-of-range labels;
# NaN if any logit is NaN or infinite (so a diverged run is caught).
# Pixels go in blocks of 64 so every class row is read contiguously.
_CE_FORWARD = r"""
const int B = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3;
const int blocks = (HW + JSEG_BLOCK - 1) / JSEG_BLOCK;
double total = 0;
int not_finite = 0;
#pragma omp parallel for reduction(+:total) reduction(|:not_finite) schedule(static)
for (int t = 0; t < B * blocks; t++) {
    const int b = t / blocks, p0 = (t % blocks) * JSEG_BLOCK;
    const int n = std::min(JSEG_BLOCK, HW - p0);
    const in0_type* x = in0_p + (size_t)b * C * HW + p0;
    float m[JSEG_BLOCK], s[JSEG_BLOCK];
    for (int i = 0; i < n; i++) { m[i] = x[i]; s[i] = 0; }
    for (int c = 0; c < C; c++) {
        const in0_type* row = x + (size_t)c * HW;
        for (int i = 0; i < n; i++) {
            m[i] = std::max(m[i], (float)row[i]);
            not_finite |= jseg_not_finite(row[i]);
        }
    }
    for (int c = 0; c < C; c++) {
        const in0_type* row = x + (size_t)c * HW;
        #pragma omp simd
        for (int i = 0; i < n; i++) s[i] += jseg_exp(row[i] - m[i]);
    }
    for (int i = 0; i < n; i++) {
        const int y = (int)in1_p[(size_t)b * HW + p0 + i];
        if (!JSEG_COUNTS(y, C)) continue;
        total += (double)in2_p[y] * ((double)m[i] + std::log((double)s[i]) - x[(size_t)y * HW + i]);
    }
}
out_p[0] = not_finite ? std::numeric_limits<double>::quiet_NaN() : total;
"""

# dlogits = scale * w[y] * (softmax(x) - onehot(y)), 0 for ignored pixels;
# in3 holds the upstream gradient of the summed loss (times 1 / pixels).
_CE_GRAD = r"""
const int B = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3;
const int blocks = (HW + JSEG_BLOCK - 1) / JSEG_BLOCK;
const float scale = in3_p[0];
#pragma omp parallel for schedule(static)
for (int t = 0; t < B * blocks; t++) {
    const int b = t / blocks, p0 = (t % blocks) * JSEG_BLOCK;
    const int n = std::min(JSEG_BLOCK, HW - p0);
    const in0_type* x = in0_p + (size_t)b * C * HW + p0;
    out_type* g = out_p + (size_t)b * C * HW + p0;
    float m[JSEG_BLOCK], s[JSEG_BLOCK], f[JSEG_BLOCK];
    int y[JSEG_BLOCK];
    for (int i = 0; i < n; i++) {
        m[i] = x[i]; s[i] = 0;
        y[i] = (int)in1_p[(size_t)b * HW + p0 + i];
        f[i] = JSEG_COUNTS(y[i], C) ? scale * in2_p[y[i]] : 0.f;
    }
    for (int c = 1; c < C; c++) {
        const in0_type* row = x + (size_t)c * HW;
        for (int i = 0; i < n; i++) m[i] = std::max(m[i], (float)row[i]);
    }
    for (int c = 0; c < C; c++) {
        const in0_type* row = x + (size_t)c * HW;
        #pragma omp simd
        for (int i = 0; i < n; i++) s[i] += jseg_exp(row[i] - m[i]);
    }
    for (int i = 0; i < n; i++) f[i] /= s[i];
    for (int c = 0; c < C; c++) {
        const in0_type* row = x + (size_t)c * HW;
        out_type* grow = g + (size_t)c * HW;
        #pragma omp simd
        for (int i = 0; i < n; i++) grow[i] = f[i] * jseg_exp(row[i] - m[i]);
    }
    for (int i = 0; i < n; i++)
        if (JSEG_COUNTS(y[i], C)) g[(size_t)y[i] * HW + i] -= scale * in2_p[y[i]];
}
"""

# logits (B, C, H, W), label (B, H, W) -> out (2,) float64: [correct, labelled] pixels,
# prediction = first index of the maximum over C.
_ACCURACY = r"""
const int B = in0_shape0, C = in0_shape1, HW = in0_shape2 * in0_shape3;
const int blocks = (HW + JSEG_BLOCK - 1) / JSEG_BLOCK;
double correct = 0, labelled = 0;
#pragma omp parallel for reduction(+:correct, labelled) schedule(static)
for (int t = 0; t < B * blocks; t++) {
    const int b = t / blocks, p0 = (t % blocks) * JSEG_BLOCK;
    const int n = std::min(JSEG_BLOCK, HW - p0);
    const in0_type* x = in0_p + (size_t)b * C * HW + p0;
    float m[JSEG_BLOCK];
    int arg[JSEG_BLOCK];
    for (int i = 0; i < n; i++) { m[i] = x[i]; arg[i] = 0; }
    for (int c = 1; c < C; c++) {
        const in0_type* row = x + (size_t)c * HW;
        for (int i = 0; i < n; i++)
            if (row[i] > m[i]) { m[i] = row[i]; arg[i] = c; }
    }
    for (int i = 0; i < n; i++) {
        const int y = (int)in1_p[(size_t)b * HW + p0 + i];
        if (y == IGNORE_INDEX) continue;
        labelled += 1;
        correct += (arg[i] == y);
    }
}
out_p[0] = correct;
out_p[1] = labelled;
"""


def _ce_header(ignore_index):
    return f"#define IGNORE_INDEX {int(ignore_index)}\n" + _FAST_EXP


class _CrossEntropySum(jt.Function):
    """Sum over pixels of the weighted per-pixel cross-entropy, as a (1,) float32 Var."""

    def execute(self, logits, label, weight, ignore_index):
        self.saved = (logits, label, weight, ignore_index)
        total = jt.code((1,), "float64", [logits, label, weight],
                        cpu_header=_ce_header(ignore_index), cpu_src=_CE_FORWARD)
        return total.float32()

    def grad(self, grad_total):
        logits, label, weight, ignore_index = self.saved
        grad = jt.code(logits.shape, logits.dtype, [logits, label, weight, grad_total.float32()],
                       cpu_header=_ce_header(ignore_index), cpu_src=_CE_GRAD)
        return grad, None, None, None


def cross_entropy_supported(logits, label):
    """True when the fused kernels can stand in for the generic cross-entropy."""
    return (not jt.flags.use_cuda and logits.dtype == "float32" and logits.ndim == 4
            and label.ndim == 3 and not label.dtype.is_float())


def cross_entropy_sum(logits, label, weight, ignore_index):
    """sum_pixels weight[y] * -log softmax(logits)[y] over labelled pixels.

    logits (B, C, H, W) float32, label (B, H, W) integers, weight (C,) float32.
    """
    return _CrossEntropySum.apply(logits, label, weight, int(ignore_index))


def accuracy_counts(logits, label, ignore_index):
    """(2,) float64 Var: pixels whose argmax equals the label, and labelled pixels."""
    return jt.code((2,), "float64", [logits.detach(), label], cpu_header=_ce_header(ignore_index),
                   cpu_src=_ACCURACY)


# erf(x) as a rational function of x (Eigen's float erf, clamped to [-4, 4] where
# erf is +-1 in float); a few ulp, and it vectorises, unlike std::erf. GELU and its
# derivative on top; needs _FAST_EXP before it (see _GELU_HEADER).
_FAST_ERF = r"""
static inline float jseg_erf(float x) {
    x = std::min(std::max(x, -4.f), 4.f);
    const float x2 = x * x;
    float p = -2.72614225801306e-10f;
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    float q = -1.45660718464996e-05f;
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return x * p / q;
}
// gelu(x) = x / 2 * (1 + erf(x / sqrt 2)) (PyTorch's default, not the tanh form) and
// d gelu / dx = (1 + erf(x / sqrt 2)) / 2 + x exp(-x^2 / 2) / sqrt(2 pi)
static inline float jseg_gelu(float x) {
    return 0.5f * x * (1.f + jseg_erf(x * 0.70710678118654752f));
}
static inline float jseg_gelu_grad(float x) {
    return 0.5f * (1.f + jseg_erf(x * 0.70710678118654752f))
        + x * 0.39894228040143268f * jseg_exp(-0.5f * x * x);
}
"""

_GELU_HEADER = _FAST_EXP + _FAST_ERF

# x -> gelu(x)
_GELU_FORWARD = r"""
const size_t n = in0->num;
#pragma omp parallel for simd schedule(static)
for (size_t i = 0; i < n; i++) out_p[i] = jseg_gelu(in0_p[i]);
"""

# x, dy -> dy gelu'(x)
_GELU_GRAD = r"""
const size_t n = in0->num;
#pragma omp parallel for simd schedule(static)
for (size_t i = 0; i < n; i++) out_p[i] = in1_p[i] * jseg_gelu_grad(in0_p[i]);
"""


class _GELU(jt.Function):
    def execute(self, x):
        self.saved = x
        return jt.code(x.shape, x.dtype, [x], cpu_header=_GELU_HEADER, cpu_src=_GELU_FORWARD)

    def grad(self, grad_out):
        return jt.code(self.saved.shape, self.saved.dtype, [self.saved, grad_out],
                       cpu_header=_GELU_HEADER, cpu_src=_GELU_GRAD)


def gelu(x):
    """Exact-erf GELU on the multi-threaded CPU kernel, else Jittor's `nn.gelu`."""
    if jt.flags.use_cuda or x.dtype != "float32":
        return jt.nn.gelu(x)
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

# dy (N, C, L) -> dbias (C,): row sums in float (vectorised), totals in double
_BIAS_GRAD = r"""
const int N = in0_shape0, C = in0_shape1, L = in0_shape2;
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    double total = 0;
    for (int n = 0; n < N; n++) {
        const in0_type* g = in0_p + ((size_t)n * C + c) * L;
        for (int i0 = 0; i0 < L; i0 += 1024) {
            const int i1 = std::min(L, i0 + 1024);
            float s = 0;
            #pragma omp simd reduction(+:s)
            for (int i = i0; i < i1; i++) s += g[i];
            total += s;
        }
    }
    out_p[c] = total;
}
"""


class _AddChannelBias(jt.Function):
    def execute(self, x, bias):
        return jt.code(x.shape, x.dtype, [x, bias], cpu_src=_BIAS_FORWARD)

    def grad(self, grad_out):
        return grad_out, channel_sum(grad_out)


def add_channel_bias(x, bias):
    """(N, C, L) + bias (C,) broadcast over N and L, multi-threaded on CPU."""
    if jt.flags.use_cuda or x.dtype != "float32" or x.ndim != 3:
        return x + bias.reshape((1, -1, 1))
    return _AddChannelBias.apply(x, bias)


def _per_sample(fn, n):
    """Stack fn(0), ..., fn(n - 1) along a new first axis (no copy when n == 1)."""
    return fn(0).unsqueeze(0) if n == 1 else jt.stack([fn(i) for i in range(n)])


class _BatchedWeightMatmul(jt.Function):
    """weight (O, C) @ x[n] (C, L) for every n, as 2-D matmuls in both directions.

    Slicing x per sample under autograd would add a zero-filled scatter and a sum per
    sample in the backward; here the backward is the matmuls and one stack.
    """

    def execute(self, x, weight):
        self.saved = (x, weight)
        return _per_sample(lambda i: jt.nn.matmul(weight, x[i]), x.shape[0])

    def grad(self, grad_out):
        x, weight = self.saved
        n = x.shape[0]
        weight_t = weight.transpose()
        grad_x = _per_sample(lambda i: jt.nn.matmul(weight_t, grad_out[i]), n)
        grad_w = jt.nn.matmul_transpose(grad_out[0], x[0])
        for i in range(1, n):
            grad_w = grad_w + jt.nn.matmul_transpose(grad_out[i], x[i])
        return grad_x, grad_w


def batched_weight_matmul(weight, x):
    """(O, C) @ (N, C, L) -> (N, O, L) on oneDNN's sgemm, with gradients."""
    return _BatchedWeightMatmul.apply(x, weight)


# x (N, C, L), weight (C,), bias (C,) -> out0 y (N, C, L), out1 mean (N, G), out2 rstd (N, G).
# One (n, group) block of C/G contiguous channel rows per task; two-pass variance (biased,
# as PyTorch and Jittor), sums in double.
_GROUP_NORM_FORWARD = r"""
const int N = in0_shape0, C = in0_shape1, L = in0_shape2, G = out1_shape1, CG = C / G;
#pragma omp parallel for schedule(static)
for (int ng = 0; ng < N * G; ng++) {
    const int n = ng / G, g = ng % G;
    const size_t offset = ((size_t)n * C + (size_t)g * CG) * L, count = (size_t)CG * L;
    const in0_type* x = in0_p + offset;
    double sum = 0;
    for (size_t i0 = 0; i0 < count; i0 += 1024) {
        const size_t i1 = std::min(count, i0 + 1024);
        float s = 0;
        #pragma omp simd reduction(+:s)
        for (size_t i = i0; i < i1; i++) s += x[i];
        sum += s;
    }
    const float mean = sum / count;
    double sq = 0;
    for (size_t i0 = 0; i0 < count; i0 += 1024) {
        const size_t i1 = std::min(count, i0 + 1024);
        float s = 0;
        #pragma omp simd reduction(+:s)
        for (size_t i = i0; i < i1; i++) s += (x[i] - mean) * (x[i] - mean);
        sq += s;
    }
    const float rstd = 1.0 / std::sqrt(sq / count + EPS);
    out1_p[ng] = mean;
    out2_p[ng] = rstd;
    for (int c = 0; c < CG; c++) {
        const int ch = g * CG + c;
        const float a = rstd * in1_p[ch], b = in2_p[ch] - mean * a;
        const in0_type* xr = x + (size_t)c * L;
        out0_type* yr = out0_p + offset + (size_t)c * L;
        #pragma omp simd
        for (int i = 0; i < L; i++) yr[i] = xr[i] * a + b;
    }
}
"""

# dy, x, weight, mean, rstd -> out0 dx (N, C, L), out1 dweight partials (N, C),
# out2 dbias partials (N, C). With xhat = (x - mean) rstd and g = dy weight:
# dx = rstd (g - mean(g) - xhat mean(g xhat)) over the group.
_GROUP_NORM_GRAD = r"""
const int N = in0_shape0, C = in0_shape1, L = in0_shape2, G = in3_shape1, CG = C / G;
#pragma omp parallel for schedule(static)
for (int ng = 0; ng < N * G; ng++) {
    const int n = ng / G, g = ng % G;
    const size_t offset = ((size_t)n * C + (size_t)g * CG) * L, count = (size_t)CG * L;
    const float mean = in3_p[ng], rstd = in4_p[ng];
    double sum_g = 0, sum_gx = 0;
    for (int c = 0; c < CG; c++) {
        const int ch = g * CG + c;
        const in0_type* dy = in0_p + offset + (size_t)c * L;
        const in1_type* x = in1_p + offset + (size_t)c * L;
        float sdy = 0, sdyx = 0;
        #pragma omp simd reduction(+:sdy, sdyx)
        for (int i = 0; i < L; i++) {
            sdy += dy[i];
            sdyx += dy[i] * (x[i] - mean);
        }
        out1_p[(size_t)n * C + ch] = sdyx * rstd;
        out2_p[(size_t)n * C + ch] = sdy;
        sum_g += (double)sdy * in2_p[ch];
        sum_gx += (double)sdyx * rstd * in2_p[ch];
    }
    const float mean_g = sum_g / count, mean_gx = sum_gx / count;
    for (int c = 0; c < CG; c++) {
        const int ch = g * CG + c;
        const float w = in2_p[ch];
        const in0_type* dy = in0_p + offset + (size_t)c * L;
        const in1_type* x = in1_p + offset + (size_t)c * L;
        out0_type* dx = out0_p + offset + (size_t)c * L;
        #pragma omp simd
        for (int i = 0; i < L; i++)
            dx[i] = rstd * (dy[i] * w - mean_g - (x[i] - mean) * rstd * mean_gx);
    }
}
"""


def _group_norm_header(eps):
    return f"#include <algorithm>\n#include <cmath>\n#define EPS {float(eps)!r}\n"


class _GroupNorm(jt.Function):
    def execute(self, x, weight, bias, groups, eps):
        n = x.shape[0]
        y, mean, rstd = jt.code([x.shape, (n, groups), (n, groups)],
                                [x.dtype, "float32", "float32"],
                                [x, weight, bias], cpu_header=_group_norm_header(eps),
                                cpu_src=_GROUP_NORM_FORWARD)
        self.saved = (x, weight, mean, rstd, eps)
        return y

    def grad(self, grad_out):
        x, weight, mean, rstd, eps = self.saved
        grad_x, grad_w, grad_b = jt.code(
            [x.shape, (x.shape[0], x.shape[1]), (x.shape[0], x.shape[1])],
            [x.dtype, "float32", "float32"], [grad_out, x, weight, mean, rstd],
            cpu_header=_group_norm_header(eps), cpu_src=_GROUP_NORM_GRAD)
        return grad_x, grad_w.sum(0), grad_b.sum(0), None, None


def group_norm_supported(x):
    return not jt.flags.use_cuda and x.dtype == "float32" and x.ndim >= 3


def group_norm(x, weight, bias, groups, eps=1e-5):
    """GroupNorm of (N, C, ...) with affine weight and bias (C,), multi-threaded on CPU."""
    shape = x.shape
    flat = x.reshape((shape[0], shape[1], -1))
    return _GroupNorm.apply(flat, weight, bias, int(groups), float(eps)).reshape(shape)


def channel_sum(x):
    """(N, C, ...) -> (C,): sum over every axis but the channels, multi-threaded."""
    flat = x.reshape((x.shape[0], x.shape[1], -1))
    return jt.code((x.shape[1],), x.dtype, [flat], cpu_header="#include <algorithm>",
                   cpu_src=_BIAS_GRAD)


def _slide_merge_source(k):
    """Kernel for k windows in0..in{k-1} (B, C, h, w) and boxes in{k} (k, 4) int32."""
    windows = ", ".join(f"in{i}_p" for i in range(k))
    return f"""
const int K = {k};
const float* windows[K] = {{{windows}}};
const int* box = in{k}_p;
const int BC = out_shape0 * out_shape1, H = out_shape2, W = out_shape3;
std::vector<float> count((size_t)H * W, 0.f);
for (int i = 0; i < K; i++)
    for (int y = box[4 * i]; y < box[4 * i + 1]; y++)
        for (int x = box[4 * i + 2]; x < box[4 * i + 3]; x++) count[(size_t)y * W + x] += 1.f;
#pragma omp parallel for schedule(static)
for (int p = 0; p < BC; p++) {{
    float* o = out_p + (size_t)p * H * W;
    std::fill(o, o + (size_t)H * W, 0.f);
    for (int i = 0; i < K; i++) {{
        const int y1 = box[4 * i], y2 = box[4 * i + 1], x1 = box[4 * i + 2], x2 = box[4 * i + 3];
        const int w = x2 - x1;
        const float* src = windows[i] + (size_t)p * (y2 - y1) * w;
        for (int y = y1; y < y2; y++) {{
            float* __restrict__ row = o + (size_t)y * W + x1;
            const float* __restrict__ in = src + (size_t)(y - y1) * w;
            #pragma omp simd
            for (int x = 0; x < w; x++) row[x] += in[x];
        }}
    }}
    #pragma omp simd
    for (size_t q = 0; q < (size_t)H * W; q++) o[q] /= count[q];
}}
"""


class _SlideMerge(jt.Function):
    def execute(self, size, boxes, *windows):
        b, c = windows[0].shape[:2]
        self.boxes, self.size = boxes, size
        box_var = jt.array(boxes, "int32").reshape((-1, 4))
        return jt.code((b, c, *size), "float32", [*windows, box_var],
                       cpu_header="#include <vector>\n#include <algorithm>",
                       cpu_src=_slide_merge_source(len(windows)))

    def grad(self, grad_out):
        height, width = self.size
        count = jt.zeros((1, 1, height, width), "float32")
        for y1, y2, x1, x2 in self.boxes:
            count[:, :, y1:y2, x1:x2] += 1
        share = grad_out / count
        return (None, None) + tuple(share[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in self.boxes)


def slide_merge(windows, boxes, size):
    """Mean of overlapping window logits: (B, C, H, W) = per pixel, the sum of the windows
    covering it (in order) divided by their number. windows[i] (B, C, y2 - y1, x2 - x1) is
    placed at boxes[i] = (y1, y2, x1, x2); every pixel must be covered."""
    return _SlideMerge.apply((int(size[0]), int(size[1])), [list(map(int, b)) for b in boxes],
                             *windows)


def slide_merge_supported(windows):
    return not jt.flags.use_cuda and all(w.dtype == "float32" for w in windows)
