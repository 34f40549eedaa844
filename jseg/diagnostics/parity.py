"""Numerical parity with the PyTorch reference, mmsegmentation 1.2.2's SegNeXt.

Shared by `tools/parity.py` and `tests/diagnostics/test_parity.py`; the reference stack is optional
(`pip install -e .[parity]`) and runs in this same process. Compared, with the same weights
and the same NMF bases on both sides (`PinnedBases`: NMF2D draws new random bases in every
forward, so only pinned bases compare):
- eval mode: the four backbone stage outputs and the seg logits of `inference` (whole or
  slide, as the config's test_cfg says), and the pixel agreement of their argmax;
- one training step: the loss, every parameter's gradient, the BatchNorm running statistics.

Relative errors of outputs are rel = max|ours - reference| / max|reference|; of gradients
||ours - reference|| / ||reference|| per parameter. Measured values and the protocol in
full: docs/performance.md.
"""
import contextlib
import importlib
import importlib.util
import io
import logging
import os
import sys
import tempfile
import types
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["INSTALL_HINT", "ReferenceUnavailable", "TOLERANCES", "import_reference",
           "mmseg_model_dict", "build_reference_model", "randomize_reference_",
           "save_reference_checkpoint", "load_reference_checkpoint", "build_jseg_model",
           "PinnedBases", "pin_reference_bases", "pin_jseg_bases", "compare",
           "eval_parity", "train_parity", "HEAD_RELUS", "format_eval_report",
           "eval_within_tolerance"]

INSTALL_HINT = ("the PyTorch reference is not installed; install it into this environment with\n"
                "    pip install -e .[parity]\n"
                "(torch 2.13.0 CPU, mmcv-lite 2.1.0, mmengine 0.10.7, mmsegmentation 1.2.2, "
                "ftfy, regex)")

# What the parity tests demand (and tools/parity.py reports against).
TOLERANCES = {
    "rel": 1e-4,          # max|ours - ref| / max|ref|, every backbone stage and the logits
    "agreement": 0.999,   # share of pixels with the same argmax class
    "loss_rel": 1e-4,     # |loss_ours - loss_ref| / |loss_ref|
    "grad_rel": 1e-3,     # ||g_ours - g_ref|| / ||g_ref||, each parameter
    "running_rel": 1e-4,  # max|ours - ref| / max|ref|, each BN running_mean / running_var
}

# mmseg.models imports these from mmcv.ops (some behind try/except ImportError, which a
# present-but-incomplete module does not satisfy); SegNeXt never calls them.
_MMCV_OPS_NAMES = ("point_sample", "sigmoid_focal_loss", "CrissCrossAttention", "PSAMask")


class ReferenceUnavailable(ImportError):
    """torch / mmcv / mmengine / mmseg cannot be imported; the message says how to install."""


def _mmcv_ops_stand_in():
    module = types.ModuleType("mmcv.ops")
    module.__doc__ = "jseg stand-in for mmcv-lite's missing compiled ops (parity checks only)"

    def missing(name):
        def stand_in(*args, **kwargs):
            raise NotImplementedError(f"mmcv.ops.{name} is a stand-in (mmcv-lite has no "
                                      "compiled ops); SegNeXt does not use it")
        stand_in.__name__ = name
        return stand_in

    for name in _MMCV_OPS_NAMES:
        setattr(module, name, missing(name))
    return module


def import_reference():
    """Import the reference stack; returns a namespace with torch and the mmseg pieces used.

    mmcv-lite has no compiled ops, yet importing `mmseg.models` imports four names from
    `mmcv.ops`: a stand-in module goes there, whose members raise if used (SegNeXt uses
    none of them). Raises ReferenceUnavailable (with INSTALL_HINT) when a package is missing.
    """
    for name in ("torch", "mmcv", "mmengine", "mmseg"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ReferenceUnavailable(f"cannot import {name} ({e}); {INSTALL_HINT}") from None
    if "mmcv.ops" not in sys.modules and importlib.util.find_spec("mmcv._ext") is None:
        sys.modules["mmcv.ops"] = _mmcv_ops_stand_in()

    import torch
    with warnings.catch_warnings():
        # mmcv-lite warns that its transformer bricks lack MultiScaleDeformableAttention
        warnings.simplefilter("ignore", UserWarning)
        import mmseg
        from mmengine.config import ConfigDict
        from mmengine.logging import MMLogger
        from mmengine.structures import PixelData
        from mmseg.models.segmentors import EncoderDecoder
        from mmseg.structures import SegDataSample
    return types.SimpleNamespace(torch=torch, EncoderDecoder=EncoderDecoder, PixelData=PixelData,
                                 SegDataSample=SegDataSample, ConfigDict=ConfigDict,
                                 MMLogger=MMLogger, mmseg_version=mmseg.__version__)


# ---------------------------------------------------------------------------
# The reference model

def mmseg_model_dict(model_cfg):
    """mmseg 1.x `model` dict (without type/data_preprocessor) equal to our `model` section.

    As mmseg's SegNeXt configs: BN in the backbone, GN in the head, GELU, the standard MSCA
    kernels, CrossEntropyLoss with avg_non_ignore False. Raises ValueError for settings that
    mmseg cannot express (grad_mode "one_step").
    """
    backbone, head = model_cfg["backbone"], model_cfg["decode_head"]
    ham = dict(head.get("ham") or {})
    if ham.get("grad_mode", "full") != "full":
        raise ValueError(f"model.decode_head.ham.grad_mode {ham['grad_mode']!r} has no mmseg "
                         "equivalent (mmseg backpropagates through every NMF step: 'full')")
    test_cfg = model_cfg.get("test_cfg") or {}
    loss = dict(type="CrossEntropyLoss", use_sigmoid=False,
                loss_weight=float(head.get("loss_weight", 1.0)), avg_non_ignore=False)
    if head.get("class_weight") is not None:
        loss["class_weight"] = list(head["class_weight"])
    mm_test_cfg = dict(mode=test_cfg.get("mode", "whole"))
    if mm_test_cfg["mode"] == "slide":
        mm_test_cfg.update(crop_size=tuple(test_cfg["crop_size"]), stride=tuple(test_cfg["stride"]))
    return dict(
        backbone=dict(
            type="MSCAN",
            in_channels=backbone.get("in_channels", 3),
            embed_dims=list(backbone["embed_dims"]),
            depths=list(backbone["depths"]),
            mlp_ratios=list(backbone["mlp_ratios"]),
            drop_rate=float(backbone.get("drop_rate", 0.0)),
            drop_path_rate=float(backbone.get("drop_path_rate", 0.1)),
            attention_kernel_sizes=[5, [1, 7], [1, 11], [1, 21]],
            attention_kernel_paddings=[2, [0, 3], [0, 5], [0, 10]],
            act_cfg=dict(type="GELU"),
            norm_cfg=dict(type="BN", requires_grad=True)),
        decode_head=dict(
            type="LightHamHead",
            in_channels=list(head["in_channels"]),
            in_index=list(head["in_index"]),
            channels=head["channels"],
            ham_channels=head["ham_channels"],
            dropout_ratio=float(head.get("dropout_ratio", 0.1)),
            num_classes=head["num_classes"],
            norm_cfg=dict(type="GN", num_groups=head.get("norm_groups", 32), requires_grad=True),
            align_corners=bool(head.get("align_corners", False)),
            ignore_index=head.get("ignore_index", 255),
            loss_decode=loss,
            ham_kwargs=dict(MD_S=ham.get("md_s", 1), MD_R=ham.get("md_r", 64),
                            train_steps=ham.get("train_steps", 6),
                            eval_steps=ham.get("eval_steps", 7),
                            inv_t=ham.get("inv_t", 100), rand_init=ham.get("rand_init", True))),
        train_cfg=dict(),
        test_cfg=mm_test_cfg)


def build_reference_model(ref, model_cfg, seed=0):
    """mmseg's EncoderDecoder for our `model` section, initialised by mmseg (torch seeded)."""
    ref.torch.manual_seed(seed)
    logger = ref.MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # init_weights logs every parameter at INFO
    try:
        # quiet: deprecation / avg_non_ignore warnings, MSCAN's print of its init_cfg
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore", UserWarning)
            model = ref.EncoderDecoder(**ref.ConfigDict(mmseg_model_dict(model_cfg)))
            model.init_weights()
    finally:
        logger.setLevel(level)
    return model.eval()


def randomize_reference_(ref, model, seed=0, calibration_shape=(2, 3, 64, 64)):
    """Perturb every parameter and buffer with seeded noise, in place.

    mmseg's init leaves conv biases 0, norms 1/0, BN running stats 0/1 and layer scales 1e-2:
    a test with those would not see a swapped bias, a wrong running statistic or a misplaced
    layer scale. Norm weights become U(0.5, 1.5), biases N(0, 0.1^2), layer scales
    U(0.1, 0.6), conv weights w * (1 + 0.2 N(0, 1)).

    BN running statistics are calibrated, as training would leave them: they are set to the
    batch statistics of a seeded N(0, 1) input of `calibration_shape` (the backbone alone,
    BN layers in training mode with momentum 1, everything else in eval mode), then perturbed
    (mean + 0.1 std N(0, 1), var * U(0.8, 1.25)). Arbitrary running statistics would not do:
    eval-mode BN would then scale the residual stream up block after block, and MSCA's
    multiplicative gating makes that growth doubly exponential (inf / NaN by the 7th block of
    a stage, i.e. in MSCAN-B and -L).
    """
    torch = ref.torch
    gen = torch.Generator().manual_seed(seed)

    def normal(t, std):
        return torch.randn(t.shape, generator=gen, dtype=t.dtype) * std

    def uniform(t, low, high):
        return low + (high - low) * torch.rand(t.shape, generator=gen, dtype=t.dtype)

    with torch.no_grad():
        for name, t in sorted(model.state_dict(keep_vars=True).items()):
            leaf = name.rsplit(".", 1)[-1]
            if not t.dtype.is_floating_point or leaf.startswith("running_"):
                continue  # num_batches_tracked; running statistics: calibrated below
            if leaf == "bias":
                t.copy_(normal(t, 0.1))
            elif leaf.startswith("layer_scale"):
                t.copy_(uniform(t, 0.1, 0.6))
            elif t.ndim == 1:  # BN / LN / GN weight
                t.copy_(uniform(t, 0.5, 1.5))
            else:  # conv weight
                t.mul_(1.0 + normal(t, 0.2))

        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        was_training = model.training
        model.eval()
        saved = [m.momentum for m in norms]
        for m in norms:
            m.train()
            m.momentum = 1.0
        calib = torch.randn(calibration_shape, generator=gen)
        try:
            model.backbone(calib)
        finally:
            for m, momentum in zip(norms, saved):
                m.momentum = momentum
            model.train(was_training)
        for m in norms:
            std = m.running_var.sqrt()
            m.running_mean.add_(normal(m.running_mean, 1.0) * 0.1 * std)
            m.running_var.mul_(uniform(m.running_var, 0.8, 1.25))
    return model


def save_reference_checkpoint(ref, model, path, naming="mmseg"):
    """torch.save {'state_dict', 'meta'} like mmengine; naming 'official' nests mlp.dwconv."""
    torch = ref.torch
    state = model.state_dict()  # an OrderedDict with _metadata, as mmengine saves it
    if naming == "official":
        renamed = type(state)()
        renamed._metadata = getattr(state, "_metadata", None)
        for key, value in state.items():
            renamed[key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.")] = value
        state = renamed
    elif naming != "mmseg":
        raise ValueError(f"naming must be 'mmseg' or 'official', got {naming!r}")
    meta = {"mmengine_version": "0.10.7", "mmseg_version": ref.mmseg_version,
            "iter": 0, "seed": 0, "note": "random weights for jseg parity tests"}
    torch.save({"state_dict": state, "meta": meta}, os.fspath(path))


def load_reference_checkpoint(ref, model, path):
    """Load a PyTorch checkpoint into mmseg's model with torch itself, strictly.

    Accepts mmseg 1.x and official key names (official's `mlp.dwconv.dwconv.*` is mmseg's
    `mlp.dwconv.*`). Raises ValueError with the mismatching keys.
    """
    torch = ref.torch
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a file it cannot read
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        reason = reason if len(reason) <= 120 else reason[:117] + "..."
        raise ValueError(f"torch cannot read {path} as a checkpoint (torch.load with "
                         f"weights_only=True: {reason})") from None
    state = obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                state = obj[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    state = {k.replace(".mlp.dwconv.dwconv.", ".mlp.dwconv."): v for k, v in state.items()}
    own = model.state_dict()
    # files made from Jittor models lack num_batches_tracked; every other key must match
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    misshaped = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                 for k, v in state.items()
                 if k in own and tuple(getattr(v, "shape", ())) != tuple(own[k].shape)]
    if missing or unexpected or misshaped:
        parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("with another shape", misshaped)) if keys]
        raise ValueError(f"{path} does not fit mmseg's model of this config: "
                         + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model


def build_jseg_model(model_cfg, checkpoint, fmt="auto"):
    """Our model for `model_cfg`, with `checkpoint` converted by weights_convert and loaded
    strictly (jseg.checkpoint.load_weights); eval mode."""
    from jseg.checkpoint import load_weights
    from jseg.models import build_model
    from jseg.checkpoint.convert import convert_checkpoint

    model = build_model(model_cfg)
    with tempfile.TemporaryDirectory(prefix="jseg-parity-") as tmp:
        converted = os.path.join(tmp, "converted.pkl")
        convert_checkpoint(checkpoint, converted, fmt=fmt, log=lambda *a: None)
        load_weights(model, converted, strict=True)
    model.eval()
    return model


# ---------------------------------------------------------------------------
# Pinned NMF bases

class PinnedBases:
    """The k-th call returns the same (B*S, D, R) float32 array on every instance of one seed:
    `seeded_bases(shape, seed, k)` (jseg.models.ham_head), U[0, 1) values from numpy's
    generator seeded with (seed, k), L2-normalised over D (as both NMF2D implementations
    normalise their random draw). mmseg's `NMF2D._build_bases` and our NMF2D's `bases_fn`
    each ask exactly once per head forward, so slide inference gets one array per window,
    in window order on both sides."""

    def __init__(self, seed=0):
        self.seed = int(seed)
        self.calls = 0
        self.shapes = []

    def __call__(self, shape):
        from jseg.models.ham_head import seeded_bases

        bases = seeded_bases(shape, self.seed, self.calls)
        self.calls += 1
        self.shapes.append(tuple(shape))
        return bases


def pin_reference_bases(ref, model, seed=0):
    """Make mmseg's NMF2D take its bases from a fresh PinnedBases(seed); returns it."""
    pins = PinnedBases(seed)
    ham = model.decode_head.hamburger.ham

    def build_bases(B, S, D, R, device=None):
        return ref.torch.from_numpy(pins((B * S, D, R))).to(device or "cpu")

    ham._build_bases = build_bases  # instance attribute: shadows the method
    return pins


def pin_jseg_bases(model, seed=0):
    """Make our NMF2D take its bases from a fresh PinnedBases(seed); returns it."""
    import jittor as jt

    pins = PinnedBases(seed)
    model.decode_head.hamburger.ham.bases_fn = lambda B, S, D, R: jt.array(pins((B * S, D, R)))
    return pins


# ---------------------------------------------------------------------------
# Comparisons

@dataclass
class Diff:
    max_abs: float
    ref_max: float

    @property
    def rel(self):
        return self.max_abs / self.ref_max if self.ref_max > 0 else self.max_abs


def compare(ours, reference):
    """Diff of two same-shaped arrays (or lists of them, pooled): max|a - b| and max|b|."""
    if isinstance(reference, (list, tuple)):
        diffs = [compare(a, b) for a, b in zip(ours, reference)]
        if len(ours) != len(reference):
            raise AssertionError(f"{len(ours)} arrays vs {len(reference)} in the reference")
        return Diff(max(d.max_abs for d in diffs), max(d.ref_max for d in diffs))
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        raise AssertionError(f"shape {ours.shape} vs reference {reference.shape}")
    return Diff(float(np.abs(ours - reference).max()), float(np.abs(reference).max()))


def _image_metas(height, width, batch):
    shape = (height, width)
    return [dict(ori_shape=shape, img_shape=shape, pad_shape=shape,
                 padding_size=[0, 0, 0, 0])] * batch


def eval_parity(ref, ref_model, model, img, seed=0):
    """Eval-mode `inference` of both models on `img` (B, C, H, W) float32 with pinned bases.

    Returns {"stages": [Diff] * 4 (pooled over slide windows), "logits": Diff,
    "agreement": share of pixels with equal argmax, "windows": backbone passes,
    "bases_calls": (ours, reference)}.
    """
    import jittor as jt
    torch = ref.torch
    img = np.ascontiguousarray(img, dtype=np.float32)
    batch, _, height, width = img.shape

    ref_feats, our_feats = [], []
    ref_model.eval()
    ref_pins = pin_reference_bases(ref, ref_model, seed)
    hook = ref_model.backbone.register_forward_hook(
        lambda m, args, out: ref_feats.append([t.detach().numpy().copy() for t in out]))
    try:
        with torch.no_grad():
            ref_logits = ref_model.inference(torch.from_numpy(img),
                                             _image_metas(height, width, batch)).numpy()
    finally:
        hook.remove()

    model.eval()
    our_pins = pin_jseg_bases(model, seed)
    model.backbone.register_forward_hook(
        lambda m, args, out: our_feats.append([f.numpy() for f in out]))
    try:
        with jt.no_grad():
            logits = model.inference(jt.array(img)).numpy()
    finally:
        model.backbone.remove_forward_hook()

    if len(our_feats) != len(ref_feats) or our_pins.shapes != ref_pins.shapes:
        raise AssertionError(f"{len(our_feats)} backbone passes and NMF bases {our_pins.shapes} "
                             f"vs {len(ref_feats)} and {ref_pins.shapes} in mmseg")
    stages = [compare([f[i] for f in our_feats], [f[i] for f in ref_feats])
              for i in range(len(ref_feats[0]))]
    agreement = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    return {"stages": stages, "logits": compare(logits, ref_logits), "agreement": agreement,
            "windows": len(ref_feats), "bases_calls": (our_pins.calls, ref_pins.calls)}


# The decode head's ReLUs, as (module path, "input" or "output" of it, what it is). The MSCAN
# encoder has none (GELU). relu(x) > 0 exactly where x > 0, so a post-ReLU map shows the
# ReLU's decisions.
HEAD_RELUS = (("squeeze", "output", "squeeze ReLU"),
              ("hamburger.ham", "input", "ReLU after ham_in"),
              ("hamburger", "output", "ReLU after the residual sum"),
              ("align", "output", "align ReLU"))


def _submodule(module, path):
    for name in path.split("."):
        module = getattr(module, name)
    return module


def train_parity(ref, ref_model, model, img, label, seed=0):
    """One training forward + backward of both models (train mode, pinned bases).

    The models should be built without drop path and dropout. Returns
    {"loss": (ours, ref), "acc": (ours, ref), "grads": {name: (rel, ||g_ref||, ||g_ours||)},
    "running": {name: Diff}, "relu_flips": {head ReLU: count}}, where
    rel = ||g_ours - g_ref|| / ||g_ref||, "running" covers every BN running_mean /
    running_var after the step, and "relu_flips" counts the elements that one framework's
    ReLU lets through and the other's does not.

    Why count ReLU flips: a pre-activation within rounding distance of 0 (say 4e-6 on one
    side, -1e-7 on the other) is a kink that float32 cannot place consistently; the two
    frameworks then differ in which gradient passes, and one such element was seen to move
    every upstream gradient of SegNeXt-S by 1e-3 relative while the loss agreed to 3e-7.
    Gradient parity is only meaningful at a point without flips.
    """
    import jittor as jt
    torch = ref.torch
    img = np.ascontiguousarray(img, dtype=np.float32)
    label = np.ascontiguousarray(label, dtype=np.int64)
    batch, _, height, width = img.shape

    def recorder(masks, site, where):
        def hook(module, args, output):
            value = args[0] if where == "input" else output
            masks[site] = (value.detach() if hasattr(value, "detach") else value).numpy() > 0
        return hook

    ref_model.train()
    pin_reference_bases(ref, ref_model, seed)
    samples = []
    for i in range(batch):
        sample = ref.SegDataSample(metainfo=_image_metas(height, width, 1)[0])
        sample.gt_sem_seg = ref.PixelData(data=torch.from_numpy(label[i][None]))
        samples.append(sample)
    ref_masks, our_masks = {}, {}
    hooks = [_submodule(ref_model.decode_head, path).register_forward_hook(
        recorder(ref_masks, site, where)) for path, where, site in HEAD_RELUS]
    try:
        ref_model.zero_grad(set_to_none=True)
        losses = ref_model.loss(torch.from_numpy(img), samples)
        losses["decode.loss_ce"].backward()
    finally:
        for hook in hooks:
            hook.remove()
    ref_grads = {k: p.grad.numpy().copy() for k, p in ref_model.named_parameters()
                 if p.grad is not None}
    ref_missing = [k for k, p in ref_model.named_parameters() if p.grad is None]
    ref_state = {k: v.detach().numpy().copy() for k, v in ref_model.state_dict().items()}

    model.train()
    pin_jseg_bases(model, seed)
    hooked = [_submodule(model.decode_head, path) for path, _, _ in HEAD_RELUS]
    for module, (_, where, site) in zip(hooked, HEAD_RELUS):
        module.register_forward_hook(recorder(our_masks, site, where))
    try:
        out = model(jt.array(img), jt.array(label.astype(np.int32)))
        params = [(k, v) for k, v in model.named_parameters() if not v.is_stop_grad()]
        grads = jt.grad(out["loss_ce"], [v for _, v in params])
        our_grads = {k: g.numpy() for (k, _), g in zip(params, grads)}
    finally:
        for module in hooked:
            module.remove_forward_hook()
    our_state = {k: v.numpy() for k, v in model.state_dict().items()}

    if ref_missing:
        raise AssertionError(f"mmseg parameters without gradient: {ref_missing[:8]}")
    if set(our_grads) != set(ref_grads):
        raise AssertionError("parameter sets differ: only ours "
                             f"{sorted(set(our_grads) - set(ref_grads))[:8]}, only mmseg "
                             f"{sorted(set(ref_grads) - set(our_grads))[:8]}")
    grad_rel = {}
    for k, g_ref in ref_grads.items():
        ref_norm = float(np.linalg.norm(g_ref.astype(np.float64)))
        diff = float(np.linalg.norm(our_grads[k].astype(np.float64) - g_ref))
        our_norm = float(np.linalg.norm(our_grads[k].astype(np.float64)))
        grad_rel[k] = (diff / ref_norm if ref_norm > 0 else diff, ref_norm, our_norm)
    running = {k: compare(our_state[k], ref_state[k]) for k in our_state
               if k.endswith(("running_mean", "running_var"))}
    flips = {site: int((our_masks[site] != ref_masks[site]).sum()) for _, _, site in HEAD_RELUS}
    return {"loss": (float(out["loss_ce"].item()), float(losses["decode.loss_ce"].item())),
            "acc": (float(out["acc_seg"].item()), float(losses["decode.acc_seg"].item())),
            "grads": grad_rel, "running": running, "relu_flips": flips}


def format_eval_report(result, tolerances=TOLERANCES):
    """Lines of a table: max abs / rel error per stage and for the logits, then agreement."""
    lines = [f"{'output':<10}{'max|ours-ref|':>15}{'max|ref|':>12}{'rel':>12}  (tolerance "
             f"rel <= {tolerances['rel']:g})"]
    rows = [(f"stage{i + 1}", d) for i, d in enumerate(result["stages"])]
    rows.append(("logits", result["logits"]))
    for name, d in rows:
        flag = "" if d.rel <= tolerances["rel"] else "  FAIL"
        lines.append(f"{name:<10}{d.max_abs:>15.3e}{d.ref_max:>12.3e}{d.rel:>12.3e}{flag}")
    flag = "" if result["agreement"] >= tolerances["agreement"] else "  FAIL"
    lines.append(f"argmax pixel agreement: {100 * result['agreement']:.4f}% "
                 f"(tolerance >= {100 * tolerances['agreement']:g}%){flag}")
    return lines


def eval_within_tolerance(result, tolerances=TOLERANCES):
    return (all(d.rel <= tolerances["rel"] for d in result["stages"])
            and result["logits"].rel <= tolerances["rel"]
            and result["agreement"] >= tolerances["agreement"])
