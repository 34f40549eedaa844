"""GroupNorm, and LayerNorm over the channels of NCHW data, on OpenMP kernels, with
gradients.

MSCAN ends each stage with a LayerNorm over channels; done as Jittor's LayerNorm it is a
permute to channels-last and back (two transposes) plus Jittor's reductions, 7% of
SegNeXt-S's CPU time at 512x512. `channel_layer_norm` normalises the (N, C, H, W) data
where it is: pixels in blocks, channels strided.
"""
import jittor as jt

from . import enabled

__all__ = ["applies", "group_norm", "channel_layer_norm"]

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


def applies(x):
    """True when `group_norm` stands in for Jittor's GroupNorm on `x` (N, C, ...)."""
    return enabled(x) and x.ndim >= 3

def group_norm(x, weight, bias, groups, eps=1e-5):
    """GroupNorm of (N, C, ...) with affine weight and bias (C,), multi-threaded on CPU."""
    shape = x.shape
    flat = x.reshape((shape[0], shape[1], -1))
    return _GroupNorm.apply(flat, weight, bias, int(groups), float(eps)).reshape(shape)


# x (N, C, L), weight (C,), bias (C,) -> out0 y (N, C, L), out1 mean (N, L), out2 rstd
# (N, L): each pixel normalised over its C channels (two-pass, biased variance, as
# PyTorch's LayerNorm); blocks of JSEG_LN_BLOCK pixels, channel rows read contiguously.
_LN_BLOCK = 64
_LN_HEADER = f"""
#include <algorithm>
#include <cmath>
#define JSEG_LN_BLOCK {_LN_BLOCK}
"""

_CHANNEL_LN_FORWARD = r"""
const int N = in0_shape0, C = in0_shape1, L = in0_shape2;
const int blocks = (L + JSEG_LN_BLOCK - 1) / JSEG_LN_BLOCK;
#pragma omp parallel for schedule(static)
for (int task = 0; task < N * blocks; task++) {
    const int n = task / blocks, p0 = (task % blocks) * JSEG_LN_BLOCK;
    const int m = std::min(JSEG_LN_BLOCK, L - p0);
    const in0_type* x = in0_p + (size_t)n * C * L + p0;
    out0_type* y = out0_p + (size_t)n * C * L + p0;
    float mean[JSEG_LN_BLOCK], rstd[JSEG_LN_BLOCK];
    for (int i = 0; i < m; i++) { mean[i] = 0; rstd[i] = 0; }
    for (int c = 0; c < C; c++) {
        const in0_type* xr = x + (size_t)c * L;
        #pragma omp simd
        for (int i = 0; i < m; i++) mean[i] += xr[i];
    }
    for (int i = 0; i < m; i++) mean[i] /= C;
    for (int c = 0; c < C; c++) {
        const in0_type* xr = x + (size_t)c * L;
        #pragma omp simd
        for (int i = 0; i < m; i++) rstd[i] += (xr[i] - mean[i]) * (xr[i] - mean[i]);
    }
    for (int i = 0; i < m; i++) rstd[i] = 1.f / std::sqrt(rstd[i] / C + EPS);
    for (int c = 0; c < C; c++) {
        const in0_type* xr = x + (size_t)c * L;
        out0_type* yr = y + (size_t)c * L;
        const float w = in1_p[c], b = in2_p[c];
        #pragma omp simd
        for (int i = 0; i < m; i++) yr[i] = (xr[i] - mean[i]) * rstd[i] * w + b;
    }
    for (int i = 0; i < m; i++) {
        out1_p[(size_t)n * L + p0 + i] = mean[i];
        out2_p[(size_t)n * L + p0 + i] = rstd[i];
    }
}
"""

# dy, x, weight, mean, rstd -> out0 dx (N, C, L), out1 dweight and out2 dbias partials
# (N * blocks, C). With xhat = (x - mean) rstd and g = dy weight, per pixel:
# dx = rstd (g - mean_c(g) - xhat mean_c(g xhat)).
_CHANNEL_LN_GRAD = r"""
const int N = in0_shape0, C = in0_shape1, L = in0_shape2;
const int blocks = (L + JSEG_LN_BLOCK - 1) / JSEG_LN_BLOCK;
#pragma omp parallel for schedule(static)
for (int task = 0; task < N * blocks; task++) {
    const int n = task / blocks, p0 = (task % blocks) * JSEG_LN_BLOCK;
    const int m = std::min(JSEG_LN_BLOCK, L - p0);
    const size_t base = (size_t)n * C * L + p0;
    const float* mean = in3_p + (size_t)n * L + p0;
    const float* rstd = in4_p + (size_t)n * L + p0;
    float sg[JSEG_LN_BLOCK], sgx[JSEG_LN_BLOCK];
    for (int i = 0; i < m; i++) { sg[i] = 0; sgx[i] = 0; }
    for (int c = 0; c < C; c++) {
        const in0_type* dy = in0_p + base + (size_t)c * L;
        const in1_type* x = in1_p + base + (size_t)c * L;
        const float w = in2_p[c];
        float sdy = 0, sdyx = 0;
        #pragma omp simd reduction(+:sdy, sdyx)
        for (int i = 0; i < m; i++) {
            const float xhat = (x[i] - mean[i]) * rstd[i];
            sg[i] += dy[i] * w;
            sgx[i] += dy[i] * w * xhat;
            sdy += dy[i];
            sdyx += dy[i] * xhat;
        }
        out1_p[(size_t)task * C + c] = sdyx;
        out2_p[(size_t)task * C + c] = sdy;
    }
    for (int i = 0; i < m; i++) { sg[i] /= C; sgx[i] /= C; }
    for (int c = 0; c < C; c++) {
        const in0_type* dy = in0_p + base + (size_t)c * L;
        const in1_type* x = in1_p + base + (size_t)c * L;
        out0_type* dx = out0_p + base + (size_t)c * L;
        const float w = in2_p[c];
        #pragma omp simd
        for (int i = 0; i < m; i++) {
            const float xhat = (x[i] - mean[i]) * rstd[i];
            dx[i] = rstd[i] * (dy[i] * w - sg[i] - xhat * sgx[i]);
        }
    }
}
"""


class _ChannelLayerNorm(jt.Function):
    def execute(self, x, weight, bias, eps):
        n, _, length = x.shape
        header = _LN_HEADER + f"#define EPS {float(eps)!r}f\n"
        y, mean, rstd = jt.code([x.shape, (n, length), (n, length)],
                                [x.dtype, "float32", "float32"], [x, weight, bias],
                                cpu_header=header, cpu_src=_CHANNEL_LN_FORWARD)
        self.saved = (x, weight, mean, rstd, header)
        return y

    def grad(self, grad_out):
        x, weight, mean, rstd, header = self.saved
        n, c, length = x.shape
        tasks = n * ((length + _LN_BLOCK - 1) // _LN_BLOCK)
        grad_x, grad_w, grad_b = jt.code(
            [x.shape, (tasks, c), (tasks, c)], [x.dtype, "float32", "float32"],
            [grad_out, x, weight, mean, rstd], cpu_header=header, cpu_src=_CHANNEL_LN_GRAD)
        return grad_x, grad_w.sum(0), grad_b.sum(0), None


def channel_layer_norm_applies(norm, x):
    """True when `channel_layer_norm` stands in for `norm` (a jittor nn.LayerNorm over
    the C channels) applied to x (N, C, H, W) moved to channels-last and back."""
    return (enabled(x) and x.ndim == 4 and norm.elementwise_affine
            and tuple(norm.normalized_shape) == (x.shape[1],))


def channel_layer_norm(x, weight, bias, eps=1e-5):
    """LayerNorm over the channels of (N, C, H, W): each pixel's C values normalised, then
    scaled by weight (C,) and shifted by bias (C,); no transposes."""
    shape = x.shape
    flat = x.reshape((shape[0], shape[1], -1))
    return _ChannelLayerNorm.apply(flat, weight, bias, float(eps)).reshape(shape)
