"""Bilinear resize with PyTorch's arithmetic, on OpenMP kernels, with gradients.

Jittor's interpolate builds the four-neighbour gather from generic index ops (about
190 ms of a 600 ms SegNeXt-T forward at 512x512 on 2 cores).
"""
import jittor as jt

from . import enabled

__all__ = ["applies", "bilinear_resize"]

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
// one source row r (W values) interpolated along W into b (OW values): the first half of
// every bilinear output, shared by the resize kernel and jseg.ops.loss's resized loss
template <typename T>
static inline void jseg_resize_row(const T* r, const JsegResizeTables& t, float* b) {
    const int OW = (int)t.w0.size();
    const int *w0 = t.w0.data(), *w1 = t.w1.data();
    const float *lw0 = t.lw0.data(), *lw1 = t.lw1.data();
    for (int ow = 0; ow < OW; ow++) b[ow] = lw0[ow] * r[w0[ow]] + lw1[ow] * r[w1[ow]];
}
"""

_RESIZE_FORWARD = r"""
const int NC = in0_shape0 * in0_shape1, H = in0_shape2, W = in0_shape3;
const int OH = out_shape2, OW = out_shape3;
const JsegResizeTables t(H, W, OH, OW);
const int *h0 = t.h0.data(), *h1 = t.h1.data();
const float *lh0 = t.lh0.data(), *lh1 = t.lh1.data();
// Each source row is interpolated along W once (into a row buffer) and reused by every
// output row that reads it (4 of them when upscaling 4x), instead of gathering its two
// columns again per output row: the same products, about half the work.
#pragma omp parallel
{
    std::vector<float> buf0(OW), buf1(OW);
    #pragma omp for schedule(static)
    for (int p = 0; p < NC; p++) {
        const in0_type* x = in0_p + (size_t)p * H * W;
        out_type* y = out_p + (size_t)p * OH * OW;
        int row0 = -1, row1 = -1;  // the source rows buf0 / buf1 hold
        for (int oh = 0; oh < OH; oh++) {
            const int s0 = h0[oh], s1 = h1[oh];
            if (s0 != row0) {
                if (s0 == row1) { std::swap(buf0, buf1); std::swap(row0, row1); }
                else { jseg_resize_row(x + (size_t)s0 * W, t, buf0.data()); row0 = s0; }
            }
            if (s1 != row1) { jseg_resize_row(x + (size_t)s1 * W, t, buf1.data()); row1 = s1; }
            const float a0 = lh0[oh], a1 = lh1[oh];
            const float *b0 = buf0.data(), *b1 = buf1.data();
            out_type* yr = y + (size_t)oh * OW;
            #pragma omp simd
            for (int ow = 0; ow < OW; ow++) yr[ow] = a0 * b0[ow] + a1 * b1[ow];
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


def applies(x):
    """True when `bilinear_resize` stands in for Jittor's interpolate on `x`."""
    return enabled(x) and x.ndim == 4


def bilinear_resize(x, size, align_corners=False):
    """Bilinear resize of (N, C, H, W) float32 to `size` = (OH, OW), PyTorch's arithmetic."""
    return _BilinearResize.apply(x, (int(size[0]), int(size[1])), bool(align_corners))
