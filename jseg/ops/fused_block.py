"""The MSCAN block with its biases and element-wise steps folded into neighbouring kernels.

Each 1x1 conv's bias rides along with the step that follows it, instead of a pass over
memory of its own (plus one per element-wise step, on one core in Jittor's loops):

- `bias_gelu(m, b)` = gelu(m + b)                        (proj_1 -> GELU)
- `bias_gate(m, b, u)` = (m + b) * u                     (conv3 -> gating by u)
- `scaled_residual(x, m, b, scale, s)` = x + scale * (m + b + s) [* DropPath mask]
  (proj_2 + shortcut, layer scale, DropPath, residual; fc2 without s)
- `mlp_hidden`: fc1 -> depthwise 3x3 -> GELU, with fc1's bias and the GELU in the depthwise
  kernel (`jseg.ops.depthwise`, which also sums the strip branches).

`mscan_block(parts, x)` is jseg.models.mscan.MSCABlock (the reference) on these kernels.
Tensors are (N, C, L) float32 with per-channel (C,) vectors; every kernel has a backward
that also gives the per-channel gradients; tests/ops/test_ops.py checks both.
"""
from dataclasses import dataclass

import jittor as jt

from . import depthwise, matmul
from ._cpp import GELU_HEADER
from .depthwise import depthwise_conv2d
from .matmul import pointwise

__all__ = ["MSCABlockParts", "applies", "mscan_block", "mlp_applies", "mlp_hidden",
           "bias_gelu", "bias_gate", "scaled_residual"]

_HEADER = GELU_HEADER + r"""
#define JSEG_PLANES const int N = in0_shape0, C = in0_shape1, L = in0_shape2;
"""

# in0 m, in1 b -> gelu(m + b)
_BIAS_GELU = r"""
JSEG_PLANES
#pragma omp parallel for schedule(static)
for (int nc = 0; nc < N * C; nc++) {
    const float b = in1_p[nc % C];
    const in0_type* __restrict__ m = in0_p + (size_t)nc * L;
    out_type* __restrict__ y = out_p + (size_t)nc * L;
    #pragma omp simd
    for (int i = 0; i < L; i++) y[i] = jseg_gelu(m[i] + b);
}
"""

# in0 m, in1 b, in2 dy -> out0 dm = dy gelu'(m + b), out1 db = sum dm
_BIAS_GELU_GRAD = r"""
JSEG_PLANES
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const float b = in1_p[c];
    double total = 0;
    for (int n = 0; n < N; n++) {
        const size_t o = ((size_t)n * C + c) * L;
        const in0_type* __restrict__ m = in0_p + o;
        const in2_type* __restrict__ dy = in2_p + o;
        out0_type* __restrict__ dm = out0_p + o;
        float s = 0;
        #pragma omp simd reduction(+:s)
        for (int i = 0; i < L; i++) {
            dm[i] = dy[i] * jseg_gelu_grad(m[i] + b);
            s += dm[i];
        }
        total += s;
    }
    out1_p[c] = total;
}
"""

# in0 m, in1 b, in2 u -> (m + b) * u
_BIAS_GATE = r"""
JSEG_PLANES
#pragma omp parallel for schedule(static)
for (int nc = 0; nc < N * C; nc++) {
    const float b = in1_p[nc % C];
    const size_t o = (size_t)nc * L;
    const in0_type* __restrict__ m = in0_p + o;
    const in2_type* __restrict__ u = in2_p + o;
    out_type* __restrict__ y = out_p + o;
    #pragma omp simd
    for (int i = 0; i < L; i++) y[i] = (m[i] + b) * u[i];
}
"""

# in0 m, in1 b, in2 u, in3 dy -> out0 dm = dy u, out1 du = dy (m + b), out2 db = sum dm
_BIAS_GATE_GRAD = r"""
JSEG_PLANES
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const float b = in1_p[c];
    double total = 0;
    for (int n = 0; n < N; n++) {
        const size_t o = ((size_t)n * C + c) * L;
        const in0_type* __restrict__ m = in0_p + o;
        const in2_type* __restrict__ u = in2_p + o;
        const in3_type* __restrict__ dy = in3_p + o;
        out0_type* __restrict__ dm = out0_p + o;
        out1_type* __restrict__ du = out1_p + o;
        float s = 0;
        #pragma omp simd reduction(+:s)
        for (int i = 0; i < L; i++) {
            dm[i] = dy[i] * u[i];
            du[i] = dy[i] * (m[i] + b);
            s += dm[i];
        }
        total += s;
    }
    out2_p[c] = total;
}
"""

# in0 x, in1 m, in2 b, in3 scale, in4 per-sample factor g (N,), [in5 s]
# -> x + scale * (m + b [+ s]) * g   (g: DropPath's keep mask / keep probability, or 1)
_RESIDUAL = r"""
JSEG_PLANES
#pragma omp parallel for schedule(static)
for (int nc = 0; nc < N * C; nc++) {
    const int c = nc % C;
    const float b = in2_p[c], k = in3_p[c], g = in4_p[nc / C];
    const size_t o = (size_t)nc * L;
    const in0_type* __restrict__ x = in0_p + o;
    const in1_type* __restrict__ m = in1_p + o;
    out_type* __restrict__ y = out_p + o;
#if HAS_SHORTCUT
    const in5_type* __restrict__ s = in5_p + o;
    #pragma omp simd
    for (int i = 0; i < L; i++) y[i] = x[i] + k * (m[i] + b + s[i]) * g;
#else
    #pragma omp simd
    for (int i = 0; i < L; i++) y[i] = x[i] + k * (m[i] + b) * g;
#endif
}
"""

# in0 dy, in1 m, in2 b, in3 scale, in4 g, [in5 s] -> out0 dm = scale g dy (also ds),
# out1 dscale = sum g dy (m + b [+ s]), out2 db = scale sum g dy
_RESIDUAL_GRAD = r"""
JSEG_PLANES
#pragma omp parallel for schedule(static)
for (int c = 0; c < C; c++) {
    const float b = in2_p[c], k = in3_p[c];
    double total_dy = 0, total_scale = 0;
    for (int n = 0; n < N; n++) {
        const size_t o = ((size_t)n * C + c) * L;
        const float g = in4_p[n], kg = k * g;
        const in0_type* __restrict__ dy = in0_p + o;
        const in1_type* __restrict__ m = in1_p + o;
        out0_type* __restrict__ dm = out0_p + o;
#if HAS_SHORTCUT
        const in5_type* __restrict__ s = in5_p + o;
#endif
        float sdy = 0, sk = 0;
        #pragma omp simd reduction(+:sdy, sk)
        for (int i = 0; i < L; i++) {
            dm[i] = kg * dy[i];
            sdy += dy[i];
#if HAS_SHORTCUT
            sk += dy[i] * (m[i] + b + s[i]);
#else
            sk += dy[i] * (m[i] + b);
#endif
        }
        total_dy += (double)g * sdy;
        total_scale += (double)g * sk;
    }
    out1_p[c] = total_scale;
    out2_p[c] = k * total_dy;
}
"""


def _flat(x):
    return x.reshape((x.shape[0], x.shape[1], -1))


class _BiasGELU(jt.Function):
    def execute(self, m, b):
        self.saved = (m, b)
        return jt.code(m.shape, m.dtype, [m, b], cpu_header=_HEADER, cpu_src=_BIAS_GELU)

    def grad(self, dy):
        m, b = self.saved
        dm, db = jt.code([m.shape, b.shape], [m.dtype, b.dtype], [m, b, dy], cpu_header=_HEADER,
                         cpu_src=_BIAS_GELU_GRAD)
        return dm, db


class _BiasGate(jt.Function):
    def execute(self, m, b, u):
        self.saved = (m, b, u)
        return jt.code(m.shape, m.dtype, [m, b, u], cpu_header=_HEADER, cpu_src=_BIAS_GATE)

    def grad(self, dy):
        m, b, u = self.saved
        dm, du, db = jt.code([m.shape, m.shape, b.shape], [m.dtype, m.dtype, b.dtype],
                             [m, b, u, dy], cpu_header=_HEADER, cpu_src=_BIAS_GATE_GRAD)
        return dm, db, du


class _ScaledResidual(jt.Function):
    def execute(self, x, m, b, scale, factor, s=None):
        inputs = [x, m, b, scale, factor] + ([s] if s is not None else [])
        self.header = _HEADER + f"#define HAS_SHORTCUT {int(s is not None)}\n"
        self.saved = (m, b, scale, factor, s)
        return jt.code(x.shape, x.dtype, inputs, cpu_header=self.header, cpu_src=_RESIDUAL)

    def grad(self, dy):
        m, b, scale, factor, s = self.saved
        inputs = [dy, m, b, scale, factor] + ([s] if s is not None else [])
        dm, dscale, db = jt.code([m.shape, scale.shape, b.shape], [m.dtype] * 3, inputs,
                                 cpu_header=self.header, cpu_src=_RESIDUAL_GRAD)
        return (dy, dm, db, dscale, None) + ((dm,) if s is not None else ())


def bias_gelu(m, b):
    """gelu(m + b[c]) for m (N, C, ...) and b (C,)."""
    return _BiasGELU.apply(_flat(m), b).reshape(m.shape)


def bias_gate(m, b, u):
    """(m + b[c]) * u for m, u (N, C, ...) and b (C,)."""
    return _BiasGate.apply(_flat(m), b, _flat(u)).reshape(m.shape)


def scaled_residual(x, m, b, scale, s=None, drop_path=None):
    """x + scale[c] * (m + b[c] (+ s)) for x, m, s (N, C, ...) and b, scale (C,).

    drop_path: a jittor nn.DropPath; when it is active (training, p > 0) the branch of
    each sample is kept with probability 1 - p and then divided by it, as DropPath does.
    """
    n = x.shape[0]
    if drop_path is not None and drop_path.is_train and drop_path.p > 0:
        keep = 1.0 - drop_path.p
        factor = ((keep + jt.rand((n,), dtype="float32")).floor() / keep).stop_grad()
    else:
        factor = jt.ones((n,), "float32").stop_grad()
    args = [_flat(x), _flat(m), b, scale, factor] + ([_flat(s)] if s is not None else [])
    return _ScaledResidual.apply(*args).reshape(x.shape)


@dataclass(frozen=True)
class MSCABlockParts:
    """The modules and tensors of one MSCAN block, by role (jseg.ops.fast_forms.block_parts).

    Convs are nn.Conv2d (1x1 ones, and depthwise ones with odd kernels); norms are called
    as they are (BatchNorm updates its statistics in training); the layer scales are (C,).
    """
    norm1: object
    proj_1: object
    conv0: object
    strips: tuple  # ((1xk conv, kx1 conv), ...), one pair per branch
    conv3: object
    proj_2: object
    layer_scale_1: object
    norm2: object
    fc1: object
    dwconv: object
    fc2: object
    layer_scale_2: object
    drop_path: object  # a jittor nn.DropPath
    dropout: bool  # the MLP's dropout is active: not fused, the modules run instead


def applies(parts, x):
    """True when `mscan_block(parts, x)` stands in for the block's modules."""
    convs = [parts.conv0, parts.dwconv] + [c for pair in parts.strips for c in pair]
    return (not parts.dropout and matmul.pointwise_applies(x)
            and all(depthwise.applies(c, x) for c in convs))


def mscan_block(parts, x):
    """x + DropPath(ls1 * attn(BN1(x))), then x + DropPath(ls2 * mlp(BN2(x))): the block of
    jseg.models.mscan on the fused kernels (same arithmetic; see the module docstring)."""
    normed = parts.norm1(x)
    u = bias_gelu(pointwise(normed, parts.proj_1.weight), parts.proj_1.bias)
    a = depthwise_conv2d(u, parts.conv0.weight, parts.conv0.bias)
    total = a
    for first, second in parts.strips:
        branch = depthwise_conv2d(a, first.weight, first.bias)
        total = depthwise_conv2d(branch, second.weight, second.bias, addend=total)
    gated = bias_gate(pointwise(total, parts.conv3.weight), parts.conv3.bias, u)
    x = scaled_residual(x, pointwise(gated, parts.proj_2.weight), parts.proj_2.bias,
                        parts.layer_scale_1, normed, drop_path=parts.drop_path)
    hidden = mlp_hidden(parts.fc1, parts.dwconv, parts.norm2(x))
    return scaled_residual(x, pointwise(hidden, parts.fc2.weight), parts.fc2.bias,
                           parts.layer_scale_2, drop_path=parts.drop_path)


def mlp_applies(fc1, dwconv, x):
    """True when `mlp_hidden` stands in for gelu(dwconv(fc1(x)))."""
    return matmul.pointwise_applies(x) and depthwise.applies(dwconv, x)


def mlp_hidden(fc1, dwconv, x):
    """gelu(dwconv(fc1(x))) with fc1's bias and the GELU inside the depthwise kernel."""
    return depthwise_conv2d(pointwise(x, fc1.weight), dwconv.weight, dwconv.bias,
                            input_bias=fc1.bias, gelu=True)
