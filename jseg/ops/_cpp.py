"""C++ pieces shared by several kernel families (Jittor `jt.code` headers and sources).

The strings are what the kernels compile; changing a byte recompiles every kernel that
includes it (Jittor caches compiled kernels by their source).
"""

__all__ = ["FAST_EXP", "FAST_ERF", "GELU_HEADER", "GELU_FORWARD", "GELU_GRAD", "CHANNEL_SUM"]

# expf that vectorises (glibc's does not without -ffast-math): Cephes' range reduction
# x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial for e^r, 2^n from the exponent
# bits. Relative error ~2e-7 (1-2 ulp), like the SIMD exp PyTorch uses.
FAST_EXP = r"""
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

# erf(x) as a rational function of x (Eigen's float erf, clamped to [-4, 4] where
# erf is +-1 in float); a few ulp, and it vectorises, unlike std::erf. GELU and its
# derivative on top; needs FAST_EXP before it (see GELU_HEADER).
FAST_ERF = r"""
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

GELU_HEADER = FAST_EXP + FAST_ERF

# x -> gelu(x)
GELU_FORWARD = r"""
const size_t n = in0->num;
#pragma omp parallel for simd schedule(static)
for (size_t i = 0; i < n; i++) out_p[i] = jseg_gelu(in0_p[i]);
"""

# x, dy -> dy gelu'(x)
GELU_GRAD = r"""
const size_t n = in0->num;
#pragma omp parallel for simd schedule(static)
for (size_t i = 0; i < n; i++) out_p[i] = in1_p[i] * jseg_gelu_grad(in0_p[i]);
"""

# dy (N, C, L) -> dbias (C,): row sums in float (vectorised), totals in double
CHANNEL_SUM = r"""
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
