"""Pixel-wise cross-entropy and accuracy in single passes over the logits.

No one-hot or log-probability tensor of the logits' size: the forward sums the weighted
per-pixel losses, the backward recomputes the softmax (saves 660 ms of a 3.3 s SegNeXt-T
training step at 512x512, and memory).

`resized_cross_entropy_sum` goes one step further for the decode head's loss, where the
stride-8 logits are first resized bilinearly to the label size: it interpolates each
output row's logits on the fly (the resize kernel's arithmetic, jseg.ops.resize) and never
holds the full-size logits or their gradient, (B, C, H, W) each: 2 x 315 MB for SegNeXt's
150 classes, batch 2, 512x512.
"""
import jittor as jt

from . import enabled
from ._cpp import FAST_EXP
from .resize import _resize_header

__all__ = ["applies", "cross_entropy_sum", "accuracy_counts", "resized_cross_entropy_sum"]

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
    return f"#define IGNORE_INDEX {int(ignore_index)}\n" + FAST_EXP


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


def applies(logits, label):
    """True when the fused kernels stand in for the generic cross-entropy and accuracy."""
    return (enabled(logits) and logits.ndim == 4 and label.ndim == 3
            and not label.dtype.is_float())


def cross_entropy_sum(logits, label, weight, ignore_index):
    """sum_pixels weight[y] * -log softmax(logits)[y] over labelled pixels.

    logits (B, C, H, W) float32, label (B, H, W) integers, weight (C,) float32.
    """
    return _CrossEntropySum.apply(logits, label, weight, int(ignore_index))


def accuracy_counts(logits, label, ignore_index):
    """(2,) float64 Var: pixels whose argmax equals the label, and labelled pixels."""
    return jt.code((2,), "float64", [logits.detach(), label], cpu_header=_ce_header(ignore_index),
                   cpu_src=_ACCURACY)


# Shared by the resized loss kernels. Output rows are taken in groups: group r holds the
# rows whose upper source row is r (their lower one is r + 1, or r at the bottom edge),
# rows [first[r], first[r + 1]). Per group both source rows are interpolated along W
# once for every class (hb0, hb1: (C, OW)); row oh's logits are then a0 hb0 + a1 hb1,
# the resize kernel's arithmetic (jseg.ops.resize).
_RESIZED_HEADER = r"""
struct JsegResizedGroups {
    JsegResizeTables t;
    std::vector<int> first;
    JsegResizedGroups(int h, int w, int OH, int OW) : t(h, w, OH, OW), first(h + 1, OH) {
        for (int oh = OH - 1; oh >= 0; oh--) first[t.h0[oh]] = oh;
        for (int r = h - 1; r >= 0; r--) first[r] = std::min(first[r], first[r + 1]);
    }
    int lower(int r, int h) const { return r < h - 1 ? r + 1 : r; }
};
// source row `row` of every class of x (C, h, w), interpolated along W: hb (C, OW)
static inline void jseg_resized_hrow(const float* x, int C, int h, int w, int OW,
                                     const JsegResizeTables& t, int row, float* hb) {
    for (int c = 0; c < C; c++)
        jseg_resize_row(x + ((size_t)c * h + row) * w, t, hb + (size_t)c * OW);
}
// v (C, OW) = a0 hb0 + a1 hb1; m, arg: per pixel maximum over classes and its first
// index; s: sum of exp(v - m)
static inline void jseg_resized_softmax_row(const float* hb0, const float* hb1, float a0,
                                            float a1, int C, int OW, float* v, float* m,
                                            int* arg, float* s) {
    const size_t n = (size_t)C * OW;
    #pragma omp simd
    for (size_t i = 0; i < n; i++) v[i] = a0 * hb0[i] + a1 * hb1[i];
    for (int i = 0; i < OW; i++) { m[i] = v[i]; s[i] = 0; arg[i] = 0; }
    for (int c = 1; c < C; c++) {
        const float* vr = v + (size_t)c * OW;
        for (int i = 0; i < OW; i++)
            if (vr[i] > m[i]) { m[i] = vr[i]; arg[i] = c; }
    }
    for (int c = 0; c < C; c++) {
        const float* vr = v + (size_t)c * OW;
        #pragma omp simd
        for (int i = 0; i < OW; i++) s[i] += jseg_exp(vr[i] - m[i]);
    }
}
"""

# logits x (B, C, h, w), label (B, H, W), class weights (C,) -> out (3,) float64:
# [sum over pixels of w[y] * (logsumexp(v) - v[y]), pixels whose argmax is the label,
# labelled pixels], v the logits resized to (H, W); the loss is NaN if a logit is not finite.
_RESIZED_FORWARD = r"""
const int B = in0_shape0, C = in0_shape1, h = in0_shape2, w = in0_shape3;
const int OH = in1_shape1, OW = in1_shape2;
const JsegResizedGroups groups(h, w, OH, OW);
const JsegResizeTables& t = groups.t;
int not_finite = 0;
for (size_t i = 0; i < (size_t)B * C * h * w; i++) not_finite |= jseg_not_finite(in0_p[i]);
double total = 0, correct = 0, labelled = 0;
#pragma omp parallel reduction(+:total, correct, labelled)
{
    const size_t n = (size_t)C * OW;
    std::vector<float> hb0(n), hb1(n), v(n), m(OW), s(OW);
    std::vector<int> arg(OW);
    #pragma omp for schedule(dynamic)
    for (int task = 0; task < B * h; task++) {
        const int b = task / h, r = task % h;
        if (groups.first[r] == groups.first[r + 1]) continue;
        const float* x = in0_p + (size_t)b * C * h * w;
        jseg_resized_hrow(x, C, h, w, OW, t, r, hb0.data());
        jseg_resized_hrow(x, C, h, w, OW, t, groups.lower(r, h), hb1.data());
        for (int oh = groups.first[r]; oh < groups.first[r + 1]; oh++) {
            jseg_resized_softmax_row(hb0.data(), hb1.data(), t.lh0[oh], t.lh1[oh], C, OW,
                                     v.data(), m.data(), arg.data(), s.data());
            const in1_type* y = in1_p + ((size_t)b * OH + oh) * OW;
            for (int i = 0; i < OW; i++) {
                const int yi = (int)y[i];
                if (yi != IGNORE_INDEX) { labelled += 1; correct += (arg[i] == yi); }
                if (!JSEG_COUNTS(yi, C)) continue;
                total += (double)in2_p[yi] * ((double)m[i] + std::log((double)s[i])
                                              - v[(size_t)yi * OW + i]);
            }
        }
    }
}
out_p[0] = not_finite ? std::numeric_limits<double>::quiet_NaN() : total;
out_p[1] = correct;
out_p[2] = labelled;
"""

# The gradient of the summed loss (in3: its upstream gradient) with respect to the
# stride-8 logits: per output row, dv = scale * w[y] * (softmax(v) - onehot(y)); a group
# sums a0 dv and a1 dv over its rows, then spreads the two sums along W onto source rows
# r and r + 1 with the resize's weights. Groups with even r run in parallel, then the
# odd ones, so no two threads write one row and the sums do not depend on the threads.
_RESIZED_GRAD = r"""
const int B = in0_shape0, C = in0_shape1, h = in0_shape2, w = in0_shape3;
const int OH = in1_shape1, OW = in1_shape2;
const JsegResizedGroups groups(h, w, OH, OW);
const JsegResizeTables& t = groups.t;
const float scale = in3_p[0];
const int *w0 = t.w0.data(), *w1 = t.w1.data();
const float *lw0 = t.lw0.data(), *lw1 = t.lw1.data();
for (size_t i = 0; i < (size_t)B * C * h * w; i++) out_p[i] = 0;
const int half = (h + 1) / 2;
for (int parity = 0; parity < 2; parity++) {
    #pragma omp parallel
    {
        const size_t n = (size_t)C * OW;
        std::vector<float> hb0(n), hb1(n), v(n), sum0(n), sum1(n), m(OW), s(OW), f(OW);
        std::vector<int> arg(OW);
        #pragma omp for schedule(dynamic)
        for (int task = 0; task < B * half; task++) {
            const int b = task / half, r = 2 * (task % half) + parity;
            if (r >= h || groups.first[r] == groups.first[r + 1]) continue;
            const float* x = in0_p + (size_t)b * C * h * w;
            const int r1 = groups.lower(r, h);
            jseg_resized_hrow(x, C, h, w, OW, t, r, hb0.data());
            jseg_resized_hrow(x, C, h, w, OW, t, r1, hb1.data());
            std::fill(sum0.begin(), sum0.end(), 0.f);
            std::fill(sum1.begin(), sum1.end(), 0.f);
            for (int oh = groups.first[r]; oh < groups.first[r + 1]; oh++) {
                const float a0 = t.lh0[oh], a1 = t.lh1[oh];
                jseg_resized_softmax_row(hb0.data(), hb1.data(), a0, a1, C, OW, v.data(),
                                         m.data(), arg.data(), s.data());
                const in1_type* yr = in1_p + ((size_t)b * OH + oh) * OW;
                for (int i = 0; i < OW; i++) {
                    const int yi = (int)yr[i];
                    f[i] = JSEG_COUNTS(yi, C) ? scale * in2_p[yi] / s[i] : 0.f;
                }
                for (int c = 0; c < C; c++) {
                    float* vr = v.data() + (size_t)c * OW;
                    #pragma omp simd
                    for (int i = 0; i < OW; i++) vr[i] = f[i] * jseg_exp(vr[i] - m[i]);
                }
                for (int i = 0; i < OW; i++) {
                    const int yi = (int)yr[i];
                    if (JSEG_COUNTS(yi, C)) v[(size_t)yi * OW + i] -= scale * in2_p[yi];
                }
                float *p0 = sum0.data(), *p1 = sum1.data();
                const float* dv = v.data();
                #pragma omp simd
                for (size_t i = 0; i < n; i++) { p0[i] += a0 * dv[i]; p1[i] += a1 * dv[i]; }
            }
            out_type* g = out_p + (size_t)b * C * h * w;
            for (int c = 0; c < C; c++) {
                out_type* g0 = g + ((size_t)c * h + r) * w;
                out_type* g1 = g + ((size_t)c * h + r1) * w;
                const float* q0 = sum0.data() + (size_t)c * OW;
                const float* q1 = sum1.data() + (size_t)c * OW;
                for (int ow = 0; ow < OW; ow++) {
                    g0[w0[ow]] += lw0[ow] * q0[ow];
                    g0[w1[ow]] += lw1[ow] * q0[ow];
                    g1[w0[ow]] += lw0[ow] * q1[ow];
                    g1[w1[ow]] += lw1[ow] * q1[ow];
                }
            }
        }
    }
}
"""


def _resized_header(ignore_index, align_corners):
    return _ce_header(ignore_index) + _resize_header(align_corners) + _RESIZED_HEADER


class _ResizedCrossEntropySum(jt.Function):
    """(summed loss (1,) float32, [correct, labelled] (2,) float64) of logits resized to
    the label's size; the gradient goes to the small logits."""

    def execute(self, logits, label, weight, ignore_index, align_corners):
        header = _resized_header(ignore_index, align_corners)
        self.saved = (logits, label, weight, header)
        stats = jt.code((3,), "float64", [logits, label, weight], cpu_header=header,
                        cpu_src=_RESIZED_FORWARD)
        return stats[:1].float32(), stats[1:]

    def grad(self, grad_total, grad_counts=None):
        logits, label, weight, header = self.saved
        grad = jt.code(logits.shape, logits.dtype, [logits, label, weight, grad_total.float32()],
                       cpu_header=header, cpu_src=_RESIZED_GRAD)
        return grad, None, None, None, None


def resized_applies(logits, label):
    """True when `resized_cross_entropy_sum` stands in for resize + the loss + accuracy."""
    return applies(logits, label) and logits.shape[0] == label.shape[0]


def resized_cross_entropy_sum(logits, label, weight, ignore_index, align_corners=False):
    """The loss and accuracy counts of `logits` bilinearly resized to the label's size,
    without the resized logits: (summed weighted cross-entropy (1,) float32 with its
    gradient, (2,) float64 [pixels whose argmax is the label, labelled pixels]).

    logits (B, C, h, w) float32, label (B, H, W) integers, weight (C,) float32.
    """
    total, counts = _ResizedCrossEntropySum.apply(logits, label, weight, int(ignore_index),
                                                  bool(align_corners))
    return total, counts.stop_grad()
