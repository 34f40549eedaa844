"""LightHamHead, the SegNeXt decoder, and its NMF "hamburger".

SegNeXt (arXiv 2209.08575) decodes stages 2-4 of MSCAN with the light Hamburger head of
"Is Attention Better Than Matrix Decomposition?" (Geng et al., ICLR 2021, arXiv 2109.04553):
concatenate the stride-8/16/32 maps at stride 8, squeeze them with a 1x1 conv, replace the
features by a rank-R non-negative matrix factorisation of themselves (NMF2D), align with a
1x1 conv and classify with a 1x1 conv at stride 8.

Attribute names equal the PyTorch checkpoint keys (`squeeze.conv`, `squeeze.gn`,
`hamburger.ham_in.conv`, `hamburger.ham_out.gn`, `align.conv`, `conv_seg`); never rename them.
A changed module changes with it: its ONNX writer (jseg.export.onnx.ONNX_FORMS), its CPU fast
form if it has one (jseg.ops.accelerate: NMF2D.bmm, LightHamHead.resize) and the key table
(jseg.checkpoint.mapping); tests/models/test_forms.py and the ONNX tests fail otherwise.
"""
import jittor as jt
import numpy as np
from jittor import nn

from jseg.utils.inference import L2_EPS, seeded_bases

from .layers import ConvModule, PointwiseConv2d, normal_init_, resize
from .losses import CrossEntropyLoss

__all__ = ["NMF2D", "Hamburger", "LightHamHead", "seeded_bases", "ImageBases"]

# Multiplicative-update denominators get this added (as in all references).
NMF_EPS = 1e-6


class ImageBases:
    """An NMF2D `bases_fn` whose bases depend only on (seed, image key, call): the k-th head
    forward for an image gets seeded_bases(..., seed, (*key, k)), whatever ran before, in
    which process, list or order. The key is a digest of the image's decoded pixels
    (jseg.data.datasets.image_key), so the same image gets the same bases and the same
    prediction in any split, subset, order, MPI rank count, and through inference_model or
    tools/demo.py (slide windows and TTA views are the calls k = 0, 1, ... of their image,
    always in the same order). Training does not use it: its bases come from Jittor's RNG,
    seeded by (seed, iteration).

    seeds: one seed, or K seeds for a forward on K draws (EncoderDecoder.nmf_draws = K): a
    batch of K*B is draw-major, draw j's B images get the bases of seeds[j].
    key: an int or a tuple of ints (an `image_key`).
    """

    def __init__(self, seeds, key):
        self.seeds = [int(s) for s in (seeds if isinstance(seeds, (list, tuple)) else [seeds])]
        self.key = tuple(int(k) for k in key) if isinstance(key, (tuple, list)) else (int(key),)
        self.calls = 0

    def __call__(self, B: int, S: int, D: int, R: int):
        K = len(self.seeds)
        if B % K:
            raise ValueError(f"a batch of {B} cannot hold {K} NMF draws of equal size")
        draws = [seeded_bases((B // K * S, D, R), seed, (*self.key, self.calls))
                 for seed in self.seeds]
        self.calls += 1
        return jt.array(np.concatenate(draws, axis=0))  # (K * B/K * S, D, R), draw-major


class NMF2D(nn.Module):
    """Non-negative matrix factorisation of a feature map by multiplicative updates.

    The input x (B, C, H, W), non-negative (it follows a ReLU), is split into S groups and
    viewed as B*S matrices X (D = C/S, N = H*W). With bases (D, R) and coefficients (N, R):

    1. bases: `random_bases` draws U[0, 1) values and L2-normalises every column (over D);
       with `rand_init=False` one basis set (S, D, R) is drawn once, kept as the attribute
       `bases` (never trained) and repeated over the batch. `Hamburger` draws it at
       construction; a bare NMF2D draws it at its first forward.
    2. coef = softmax(inv_t * X^T bases) over R.
    3. `train_steps` (training) or `eval_steps` (eval) multiplicative updates
       coef <- coef * (X^T bases) / (coef bases^T bases + eps),
       bases <- bases * (X coef) / (bases coef^T coef + eps), eps = 1e-6.
    4. one more coef update with the final bases (`compute_coef`).
    5. output = bases coef^T, back to (B, C, H, W): the low-rank reconstruction only.

    Gradients (`grad_mode`):
      - "full" (default; the official SegNeXt code and mmseg 1.x): backpropagate through
        the initial softmax and every update step.
      - "one_step" (Jittor/JSeg and the original HamNet "one-step gradient"): steps 1-3 run without
        gradient; only step 4 and the reconstruction carry gradients back to x.

    With `rand_init=True` every forward (train and eval) draws new bases, so outputs vary run
    to run unless Jittor's RNG is seeded (`jt.set_global_seed`). To choose them instead (e.g.
    to compare with another implementation on the same bases), set `bases_fn`: it is called
    exactly once per forward, as bases_fn(B, S, D, R), and returns the (B*S, D, R) bases
    (`seeded_bases` makes reproducible ones from a seed).

    Args:
        md_s: number of groups S (C must be divisible by S).
        md_r: rank R.
        train_steps, eval_steps: update steps in training / eval mode.
        inv_t: softmax temperature of the coefficient init; accepted but forced to 1, see below.
        rand_init: new random bases every forward (True) or one fixed set (False).
        grad_mode: "full" or "one_step".
        bases_fn: None (random bases, `random_bases`), or a callable (B, S, D, R) ->
            (B*S, D, R) Var giving the initial bases; also settable later as an attribute.
    """

    GRAD_MODES = ("full", "one_step")

    def __init__(self, md_s: int = 1, md_r: int = 16, train_steps: int = 6, eval_steps: int = 7,
                 inv_t: float = 100, rand_init: bool = True, grad_mode: str = "full",
                 bases_fn=None):
        super().__init__()
        if grad_mode not in self.GRAD_MODES:
            raise ValueError(f"grad_mode must be one of {self.GRAD_MODES}, got {grad_mode!r}")
        self.S = md_s
        self.R = md_r
        self.train_steps = train_steps
        self.eval_steps = eval_steps
        # Upstream's NMF2D overwrites inv_t with 1 after the base class stored the argument,
        # so the configured 100 never takes effect. Trained checkpoints depend on that, so we
        # keep the keyword for config compatibility and ignore it the same way.
        self.inv_t = 1
        self.rand_init = rand_init
        self.grad_mode = grad_mode
        self.bases_fn = bases_fn

    def initial_bases(self, B: int, S: int, D: int, R: int):
        """The bases a forward starts from, (B*S, D, R): `bases_fn`'s, else random ones."""
        if self.bases_fn is not None:
            return self.bases_fn(B, S, D, R)
        return self.random_bases(B, S, D, R)

    @staticmethod
    def random_bases(B: int, S: int, D: int, R: int):
        """(B*S, D, R): U[0, 1) from Jittor's seeded RNG, L2-normalised over D."""
        bases = jt.rand(B * S, D, R, dtype="float32")
        # like torch.nn.functional.normalize(bases, dim=1): x / max(||x||_2, eps)
        norm = (bases * bases).sum(dim=1, keepdims=True).sqrt()
        return bases / jt.maximum(norm, L2_EPS)

    # The coefficients are kept transposed, coef_t = coef^T (B*S, R, N), so that no product
    # needs the (N, D) transpose of x: X^T bases = (bases^T X)^T, X coef = X coef_t^T.

    def bmm(self, a, b, transpose_b=False):
        """Batched matmul (B, n, k) @ (B, k, m) -> (B, n, m); b is (B, m, k) if transpose_b."""
        return nn.bmm_transpose(a, b) if transpose_b else nn.bmm(a, b)

    def _update_coef(self, x, bases, coef_t):
        """coef <- coef * (X^T bases) / (coef bases^T bases + eps), transposed."""
        bases_t = bases.permute(0, 2, 1)  # (B*S, R, D), small
        numerator = self.bmm(bases_t, x)  # (B*S, R, D) @ (B*S, D, N) -> (B*S, R, N)
        gram = self.bmm(bases_t, bases)  # (B*S, R, R), symmetric
        denominator = self.bmm(gram.permute(0, 2, 1), coef_t)  # (coef gram)^T = gram^T coef_t
        return coef_t * numerator / (denominator + NMF_EPS)

    def _update_bases(self, x, bases, coef_t):
        """bases <- bases * (X coef) / (bases coef^T coef + eps)."""
        numerator = self.bmm(x, coef_t, transpose_b=True)  # (B*S, D, N) @ (B*S, N, R)
        gram = self.bmm(coef_t, coef_t, transpose_b=True)  # (B*S, R, N) @ (B*S, N, R)
        denominator = self.bmm(bases, gram)  # (B*S, D, R)
        return bases * numerator / (denominator + NMF_EPS)

    def _local_inference(self, x, bases):
        """Coefficient init and the multiplicative-update loop (steps 2-3); coef transposed."""
        # softmax over R of X^T bases, computed as bases^T X (B*S, R, N), softmax over dim 1
        coef_t = nn.softmax(self.inv_t * self.bmm(bases.permute(0, 2, 1), x), dim=1)
        steps = self.train_steps if self.is_training() else self.eval_steps
        for _ in range(steps):
            coef_t = self._update_coef(x, bases, coef_t)
            bases = self._update_bases(x, bases, coef_t)
        return bases, coef_t

    def execute(self, x):
        B, C, H, W = x.shape
        S, R = self.S, self.R
        if C % S != 0:
            raise ValueError(f"NMF2D needs channels divisible by md_s, got {C} and {S}")
        D, N = C // S, H * W
        x = x.reshape((B * S, D, N))  # (B, C, H, W) -> (B*S, D, N)

        if self.rand_init:
            bases = self.initial_bases(B, S, D, R)
        else:
            if not hasattr(self, "bases"):
                # A fixed (S, D, R) basis, never trained (a buffer in PyTorch); saved in the
                # state dict as `hamburger.ham.bases` once it exists. Hamburger creates it at
                # construction, so all MPI ranks start from rank 0's broadcast copy.
                self.bases = self.initial_bases(1, S, D, R).stop_grad()
            bases = self.bases.repeat(B, 1, 1)  # (S, D, R) -> (B*S, D, R)

        if self.grad_mode == "one_step":
            with jt.no_grad():
                bases, coef_t = self._local_inference(x.detach(), bases.detach())
            bases, coef_t = bases.detach(), coef_t.detach()
        else:
            bases, coef_t = self._local_inference(x, bases)

        coef_t = self._update_coef(x, bases, coef_t)  # compute_coef, always with gradient
        # bases coef^T: (B*S, D, R) @ (B*S, R, N) -> (B*S, D, N) -> (B, C, H, W)
        return self.bmm(bases, coef_t).reshape((B, C, H, W))


class Hamburger(nn.Module):
    """ReLU(x + ham_out(NMF2D(ReLU(ham_in(x))))): 1x1 conv with bias, NMF, 1x1 conv + GN."""

    def __init__(self, ham_channels: int = 256, norm_groups: int = 32, ham_kwargs=None):
        super().__init__()
        self.ham_in = ConvModule(ham_channels, ham_channels, 1, bias=True, act=False)
        self.ham = NMF2D(**dict(ham_kwargs or {}))
        if not self.ham.rand_init:  # the fixed basis exists from the start (see NMF2D)
            S = self.ham.S
            self.ham.bases = self.ham.initial_bases(1, S, ham_channels // S,
                                                    self.ham.R).stop_grad()
        self.ham_out = ConvModule(ham_channels, ham_channels, 1, norm_groups=norm_groups,
                                  act=False)

    def execute(self, x):
        enjoy = nn.relu(self.ham_in(x))
        enjoy = self.ham_out(self.ham(enjoy))
        return nn.relu(x + enjoy)


class LightHamHead(nn.Module):
    """SegNeXt's decode head; `execute(feats)` returns logits (B, num_classes, H/8, W/8).

    Args:
        in_channels: channels of the selected stages (64, 160, 256 for MSCAN-T).
        in_index: which encoder outputs to use (stages 2-4).
        channels: width after `align` (input of `conv_seg`).
        ham_channels: width of `squeeze` and the hamburger.
        num_classes: output classes.
        dropout_ratio: channel-wise dropout (Dropout2d) before `conv_seg`.
        norm_groups: GroupNorm groups of squeeze / ham_out / align.
        align_corners: for every bilinear resize of this head (inputs and loss).
        ignore_index, loss_weight, class_weight: cross-entropy settings (see losses.py).
        ham_kwargs: keyword arguments of NMF2D (md_s, md_r, train_steps, eval_steps, inv_t,
            rand_init, grad_mode).

    Init as mmseg: ConvModule convs kaiming normal (fan_out, relu), GN 1/0, conv_seg N(0, 0.01)
    with bias 0.
    """

    def __init__(self, in_channels=(64, 160, 256), in_index=(1, 2, 3), channels: int = 256,
                 ham_channels: int = 256, num_classes: int = 150, dropout_ratio: float = 0.1,
                 norm_groups: int = 32, align_corners: bool = False, ignore_index: int = 255,
                 loss_weight: float = 1.0, class_weight=None, ham_kwargs=None):
        super().__init__()
        if len(in_channels) != len(in_index):
            raise ValueError(f"in_channels {tuple(in_channels)} and in_index {tuple(in_index)} "
                             "must have the same length")
        self.in_channels = tuple(in_channels)
        self.in_index = tuple(in_index)
        self.channels = channels
        self.num_classes = num_classes
        self.align_corners = align_corners
        self.squeeze = ConvModule(sum(in_channels), ham_channels, 1, norm_groups=norm_groups)
        self.hamburger = Hamburger(ham_channels, norm_groups, ham_kwargs)
        self.align = ConvModule(ham_channels, channels, 1, norm_groups=norm_groups)
        self.dropout = nn.Dropout2d(dropout_ratio, is_train=True) if dropout_ratio > 0 else None
        self.conv_seg = PointwiseConv2d(channels, num_classes)
        normal_init_(self.conv_seg, std=0.01)
        self.loss_decode = CrossEntropyLoss(loss_weight=loss_weight, class_weight=class_weight,
                                            ignore_index=ignore_index)

    def execute(self, inputs):
        feats = [inputs[i] for i in self.in_index]
        size = feats[0].shape[2:]
        feats = [self.resize(f, size, self.align_corners) for f in feats]
        x = jt.concat(feats, dim=1)  # (B, sum(in_channels), H/8, W/8)
        x = self.align(self.hamburger(self.squeeze(x)))
        return self.cls_seg(x)

    def resize(self, x, size, align_corners=False):
        """Bilinear resize of (B, C, H, W) to `size` (jseg.models.layers.resize)."""
        return resize(x, size, align_corners)

    def cls_seg(self, x):
        if self.dropout is not None:
            x = self.dropout(x)
        return self.conv_seg(x)

    def loss(self, seg_logits, label):
        """{'loss_ce', 'acc_seg'} of stride-8 logits against a (B, H, W) label map.

        The logits are resized bilinearly to the label size first, as mmseg does.
        """
        if label.ndim == 4:
            label = label.squeeze(1)  # (B, 1, H, W) -> (B, H, W)
        loss, acc = self.loss_decode.resized(seg_logits, label, self.align_corners)
        return {self.loss_decode.loss_name: loss, "acc_seg": acc}
