"""Matmuls as per-sample 2-D matmuls: OpenBLAS's sgemm where one was found
(`jseg.ops.sgemm`), else Jittor's, which is oneDNN's sgemm on CPU.

- `batched_weight_matmul`: a 1x1 convolution as weight (O, C) @ x[n] (C, H*W): an sgemm
  works on NCHW data as it is, oneDNN's convolution reorders to NHWC and back per call.
- `batched_matmul`: (B, n, k) @ (B, k, m) as B 2-D matmuls (the transpose of b as a
  flag, not a copy); Jittor's batched matmul runs as generated single-core loops (about
  4x slower for the NMF's shapes).
"""
import jittor as jt

from . import enabled, sgemm

__all__ = ["applies", "mm", "pointwise_applies", "batched_weight_matmul", "pointwise",
           "batched_matmul"]


def applies(*tensors):
    """True when the per-sample 2-D matmuls stand in for Jittor's conv / batched matmul."""
    return enabled(*tensors)


def mm(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) of 2-D Vars, op = transpose where asked, without gradient: OpenBLAS
    where one was found (jseg.platform.openblas), else Jittor's matmul."""
    if sgemm.available():
        return sgemm.matmul(a, b, trans_a, trans_b)
    if trans_a:
        a = a.transpose()
    return jt.nn.matmul_transpose(a, b) if trans_b else jt.nn.matmul(a, b)


class _Matmul(jt.Function):
    """a @ b (2-D) with its gradient, through `mm`."""

    def execute(self, a, b):
        self.saved = (a, b)
        return mm(a, b)

    def grad(self, grad_out):
        a, b = self.saved
        return mm(grad_out, b, trans_b=True), mm(a, grad_out, trans_a=True)


class _MatmulTransposeB(jt.Function):
    """a @ b^T (2-D) with its gradient, through `mm`."""

    def execute(self, a, b):
        self.saved = (a, b)
        return mm(a, b, trans_b=True)

    def grad(self, grad_out):
        a, b = self.saved
        return mm(grad_out, b), mm(grad_out, a, trans_a=True)


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
        return _per_sample(lambda i: mm(weight, x[i]), x.shape[0])

    def grad(self, grad_out):
        x, weight = self.saved
        n = x.shape[0]
        grad_x = _per_sample(lambda i: mm(weight, grad_out[i], trans_a=True), n)
        grad_w = mm(grad_out[0], x[0], trans_b=True)
        for i in range(1, n):
            grad_w = grad_w + mm(grad_out[i], x[i], trans_b=True)
        return grad_x, grad_w


def batched_weight_matmul(weight, x):
    """(O, C) @ (N, C, L) -> (N, O, L) as N sgemm calls, with gradients."""
    return _BatchedWeightMatmul.apply(x, weight)



def pointwise_applies(x):
    """True when `pointwise` stands in for a 1x1 convolution of `x` (N, C, H, W)."""
    return applies(x) and x.ndim == 4


def pointwise(x, weight):
    """A 1x1 convolution without its bias: weight (O, C, 1, 1), x (N, C, H, W) -> (N, O, H, W)."""
    n, c, h, w = x.shape
    y = batched_weight_matmul(weight.reshape((weight.shape[0], c)), x.reshape((n, c, h * w)))
    return y.reshape((n, weight.shape[0], h, w))


def _sample(a, i):
    """a[i] of a (B, n, m) Var; a free reshape when B == 1."""
    return a.reshape(a.shape[1:]) if a.shape[0] == 1 else a[i]


def batched_matmul(a, b, transpose_b=False):
    """(B, n, k) @ (B, k, m) -> (B, n, m); b is (B, m, k) if transpose_b. As B 2-D matmuls."""
    op = _MatmulTransposeB.apply if transpose_b else _Matmul.apply
    if a.shape[0] == 1:
        return op(_sample(a, 0), _sample(b, 0)).unsqueeze(0)
    return jt.stack([op(a[i], b[i]) for i in range(a.shape[0])])
