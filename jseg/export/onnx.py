"""ONNX export of the whole SegNeXt segmentor, written node by node from our modules.

`export_onnx(model, path, shape)` walks an eval-mode EncoderDecoder (MSCAN + LightHamHead)
and writes the same maths as an ONNX graph with `onnx.helper`: no tracing, no torch.
`run_onnx` runs such a file with onnxruntime. Both import their package only when called
(`pip install onnx onnxruntime`).

The graph is `EncoderDecoder.encode_decode`, whole-image inference:

    input   image   float32 (1, C_in, H, W): the normalised network input
    input   bases   float32 (S, D, R): only with bases="input" (see below)
    output  logits  float32 (1, num_classes, H, W): stride-8 logits resized to the input
    output  pred    int64 (1, H, W): argmax over the classes (the first maximum on ties)

With dynamic=True the batch, H and W are symbolic ("batch", "height", "width") and `bases`
is (batch * S, D, R). Slide inference, multi-scale / flip test-time augmentation and
training are not part of the graph: for slide inference run the graph once per window and
average the window logits as `EncoderDecoder.slide_inference` does (a dynamic graph takes
the edge windows' sizes).

Module by module (eval mode; every value and weight is named after its module path):

    Conv2d               Conv with the module's kernel, stride, padding, dilation, groups
    BatchNorm2d          BatchNormalization: running statistics and the module's eps
    GELU                 x * (erf(x / sqrt 2) + 1) / 2, exact (opset 17 has no Gelu)
    stage-end LayerNorm  channels-last Transpose, LayerNormalization(axis -1, eps), back
    GroupNorm            Reshape to (B, G, -1), ReduceMean, (x - mean) / sqrt(var + eps),
                         affine; not GroupNormalization, whose scale and bias changed
                         meaning in opset 21
    bilinear resize      Resize(linear, half_pixel or align_corners, no antialias): PyTorch's
                         interpolation as `jseg.models.layers.resize`, downscales included
                         (two taps per axis, no area filter); skipped at equal sizes like it
    NMF2D                the `eval_steps` multiplicative updates unrolled, on (B, S, D, N)
                         tensors with MatMul's batch broadcasting, product by product as
                         NMF2D computes them
    DropPath, Dropout    the identity in eval mode: no node

Shapes: MSCAN's stride-2, pad-1 3x3 convs take any H >= 1 to ceil(H / 2), so stage i has
ceil(H / 2^(i+1)) rows and every input has stride-32 maps (of at least 1x1). Any H, W >= 1
therefore works, with the result our model gives on the same input; multiples of 32 (as
the training crops) make every stage exactly H / stride.

NMF bases: NMF2D starts from new random bases on every forward; the graph has them as a
constant or as an input.
    bases="seed"   the constant `graph_bases(model, seed)` = seeded_bases((S, D, R), seed)
                   (jseg.models.ham_head), the same for every image of a batch. Our model
                   gives the same logits with `ham.bases_fn` returning it (tiled over B).
    bases="input"  the input `bases`, (B*S, D, R) as NMF2D's `bases_fn` returns them.
A model built with rand_init=False has one fixed basis (`hamburger.ham.bases`, (S, D, R)):
in either mode it is a constant of the graph, which then has no `bases` input.
"""
import importlib
import math
import numbers
import os

import numpy as np
from jittor import nn

from jseg.models.ham_head import NMF_EPS, Hamburger, LightHamHead, NMF2D, seeded_bases
from jseg.models.layers import GELU, ChannelLayerNorm, ConvModule, GroupNorm
from jseg.models.losses import CrossEntropyLoss
from jseg.models.mscan import (MSCAN, MSCAAttention, MSCABlock, MSCASpatialAttention, Mlp,
                               OverlapPatchEmbed, StemConv)
from jseg.models.segmentor import EncoderDecoder
from jseg.deploy.onnx_segmentor import open_session
from jseg.utils.atomic import atomic_write

__all__ = ["MIN_OPSET", "BASES_MODES", "INSTALL_HINT", "ONNX_FORMS", "export_onnx",
           "graph_bases", "open_session", "run_onnx"]

MIN_OPSET = 17  # the first with LayerNormalization
BASES_MODES = ("seed", "input")
INSTALL_HINT = "pip install onnx onnxruntime"


def _require(name):
    """Import onnx or onnxruntime, or raise ImportError with the line that installs them."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"ONNX export needs the {name} package ({e}); install it with: "
                          f"{INSTALL_HINT}") from None


def _array(value, size=None):
    """A parameter as a float32 array; a plain number (a norm without affine) as `size` copies."""
    if isinstance(value, numbers.Number):
        return np.full((size,), value, np.float32)
    return np.asarray(value.numpy(), np.float32)


class _Graph:
    """The nodes and constants of one graph. Names come from module paths and are made
    unique with a suffix (_2, _3, ...); a node's name is its output's name."""

    def __init__(self, onnx, opset: int, dynamic: bool):
        self.onnx, self.opset, self.dynamic = onnx, opset, dynamic
        self.nodes, self.initializers = [], []
        self._taken = set()
        self._shared = {}

    def name(self, base):
        name, k = base, 1
        while name in self._taken:
            k += 1
            name = f"{base}_{k}"
        self._taken.add(name)
        return name

    def const(self, name, array):
        name = self.name(name)
        tensor = self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.initializers.append(tensor)
        return name

    def shared(self, name, array):
        """A constant made once per (name, value): scalars and shape vectors."""
        array = np.asarray(array)
        key = (name, array.dtype.str, array.shape, array.tobytes())
        if key not in self._shared:
            self._shared[key] = self.const(name, array)
        return self._shared[key]

    def scalar(self, value):
        return self.shared(f"scalar_{value:g}", np.array(value, np.float32))

    def ints(self, values):
        """A 1-D int64 constant (shapes, axes)."""
        values = [int(v) for v in values]
        return self.shared("ints_" + "_".join(str(v).replace("-", "m") for v in values),
                           np.array(values, np.int64))

    def op(self, op_type, inputs, name, **attrs):
        """Add one node; returns the name of its output."""
        out = self.name(name)
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), [out], name=out,
                                                     **attrs))
        return out

    def reduce_mean(self, x, axes, name):
        if self.opset >= 18:  # axes moved from an attribute to an input in opset 18
            return self.op("ReduceMean", [x, self.ints(axes)], name, keepdims=1)
        return self.op("ReduceMean", [x], name, axes=list(axes), keepdims=1)

    def channel_vector(self, name, values):
        """A per-channel (C,) parameter as a (C, 1, 1) constant (broadcasts over (B, C, H, W))."""
        return self.const(name, values.reshape((-1, 1, 1)))


def _unsupported(module, name):
    return NotImplementedError(f"no ONNX export for {name} ({type(module).__name__}); "
                               "jseg.export.onnx writes the modules of jseg.models only")


# ---------------------------------------------------------------------------
# Layers

def _conv(g, conv, x, name):
    """nn.Conv2d, DepthwiseConv2d and PointwiseConv2d alike."""
    inputs = [x, g.const(f"{name}.weight", _array(conv.weight))]
    if conv.bias is not None:
        inputs.append(g.const(f"{name}.bias", _array(conv.bias)))
    ph, pw = conv.padding
    return g.op("Conv", inputs, name, kernel_shape=list(conv.kernel_size),
                strides=list(conv.stride), pads=[ph, pw, ph, pw],
                dilations=list(conv.dilation), group=int(conv.groups))


def _batch_norm(g, bn, x, name):
    """Eval-mode BatchNorm: (x - running_mean) / sqrt(running_var + eps) * weight + bias."""
    c = bn.num_features
    inputs = [x, g.const(f"{name}.weight", _array(bn.weight, c)),
              g.const(f"{name}.bias", _array(bn.bias, c)),
              g.const(f"{name}.running_mean", _array(bn.running_mean)),
              g.const(f"{name}.running_var", _array(bn.running_var))]
    return g.op("BatchNormalization", inputs, name, epsilon=float(bn.eps))


def _gelu(g, x, name):
    """(erf(x / sqrt 2) + 1) * x * 0.5, in the order of jittor.nn.gelu."""
    erf = g.op("Erf", [g.op("Div", [x, g.scalar(math.sqrt(2.0))], f"{name}.div")],
               f"{name}.erf")
    erf = g.op("Add", [erf, g.scalar(1.0)], f"{name}.add")
    return g.op("Mul", [g.op("Mul", [erf, x], f"{name}.mul"), g.scalar(0.5)], name)


def _channel_layer_norm(g, norm, x, name):
    """LayerNorm over the channels of (B, C, H, W), as MSCAN's stage ends apply it."""
    if len(norm.normalized_shape) != 1:
        raise _unsupported(norm, name)
    c = norm.normalized_shape[0]
    x = g.op("Transpose", [x], f"{name}.channels_last", perm=[0, 2, 3, 1])  # (B, H, W, C)
    x = g.op("LayerNormalization", [x, g.const(f"{name}.weight", _array(norm.weight, c)),
                                    g.const(f"{name}.bias", _array(norm.bias, c))],
             name, axis=-1, epsilon=float(norm.eps))
    return g.op("Transpose", [x], f"{name}.channels_first", perm=[0, 3, 1, 2])


def _group_norm(g, gn, x, name):
    """GroupNorm (B, C, H, W): statistics per sample and group of C/G channels, then affine."""
    groups, c = gn.num_groups, gn.num_channels
    # (B, C, H, W) -> (B, G, C/G * H * W)
    grouped = g.op("Reshape", [x, g.ints([0, groups, -1])], f"{name}.grouped")
    mean = g.reduce_mean(grouped, [2], f"{name}.mean")
    centred = g.op("Sub", [grouped, mean], f"{name}.centred")
    var = g.reduce_mean(g.op("Mul", [centred, centred], f"{name}.square"), [2], f"{name}.var")
    std = g.op("Sqrt", [g.op("Add", [var, g.scalar(float(gn.eps))], f"{name}.var_eps")],
               f"{name}.std")
    normed = g.op("Div", [centred, std], f"{name}.normed")
    # (B, G, C/G * H * W) -> (B, C, H, W)
    normed = g.op("Reshape", [normed, g.op("Shape", [x], f"{name}.shape")], f"{name}.ungrouped")
    scaled = g.op("Mul", [normed, g.channel_vector(f"{name}.weight", _array(gn.weight, c))],
                  f"{name}.scaled")
    return g.op("Add", [scaled, g.channel_vector(f"{name}.bias", _array(gn.bias, c))], name)


def _layer(g, module, x, name):
    """One leaf module, or an nn.Sequential of them."""
    if isinstance(module, nn.Sequential):
        for key, child in module.items():
            x = _layer(g, child, x, f"{name}.{key}")
        return x
    if isinstance(module, nn.Conv2d):
        return _conv(g, module, x, name)
    if isinstance(module, nn.BatchNorm):
        return _batch_norm(g, module, x, name)
    if isinstance(module, (GELU, nn.GELU)):
        return _gelu(g, x, name)
    if isinstance(module, nn.ReLU):
        return g.op("Relu", [x], name)
    if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.DropPath)):
        return x  # the identity in eval mode
    raise _unsupported(module, name)


def _resize(g, x, sizes, align_corners, name):
    """Bilinear resize of (B, C, H, W) to `sizes`, an int64 (4,) value (B, C, H', W')."""
    mode = "align_corners" if align_corners else "half_pixel"
    return g.op("Resize", [x, "", "", sizes], name, mode="linear",
                coordinate_transformation_mode=mode)


def _resize_to(g, x, x_hw, channels, target, target_hw, align_corners, name):
    """`resize(x, target's H, W, align_corners)`. Static graphs know both sizes (`x_hw`,
    `target_hw`): constant sizes, and no node at equal sizes (as layers.resize). Dynamic
    graphs take the sizes from the tensors' shapes."""
    if not g.dynamic:
        if tuple(x_hw) == tuple(target_hw):
            return x
        return _resize(g, x, g.ints([1, channels, *target_hw]), align_corners, name)
    sizes = g.op("Concat", [g.op("Shape", [x], f"{name}.batch_channels", end=2),
                            g.op("Shape", [target], f"{name}.target_hw", start=2)],
                 f"{name}.sizes", axis=0)
    return _resize(g, x, sizes, align_corners, name)


# ---------------------------------------------------------------------------
# MSCAN

def _msca_attention(g, sgu, x, name):
    """conv3(conv0(x) + sum of the strip branches on it) * x."""
    if not isinstance(sgu, MSCAAttention):
        raise _unsupported(sgu, name)
    attn = _layer(g, sgu.conv0, x, f"{name}.conv0")
    total = attn
    for i in range(sgu.num_branches):
        branch = _layer(g, getattr(sgu, f"conv{i}_1"), attn, f"{name}.conv{i}_1")
        branch = _layer(g, getattr(sgu, f"conv{i}_2"), branch, f"{name}.conv{i}_2")
        total = g.op("Add", [total, branch], f"{name}.sum{i}")
    return g.op("Mul", [_layer(g, sgu.conv3, total, f"{name}.conv3"), x], f"{name}.gate")


def _spatial_attention(g, attn, x, name):
    """proj_2(MSCA(GELU(proj_1(x)))) + x."""
    if not isinstance(attn, MSCASpatialAttention):
        raise _unsupported(attn, name)
    h = _layer(g, attn.proj_1, x, f"{name}.proj_1")
    h = _layer(g, attn.activation, h, f"{name}.activation")
    h = _msca_attention(g, attn.spatial_gating_unit, h, f"{name}.spatial_gating_unit")
    h = _layer(g, attn.proj_2, h, f"{name}.proj_2")
    return g.op("Add", [h, x], f"{name}.shortcut")


def _mlp(g, mlp, x, name):
    """fc1 -> dwconv -> GELU -> (dropout) -> fc2 -> (dropout)."""
    if not isinstance(mlp, Mlp):
        raise _unsupported(mlp, name)
    for part in ("fc1", "dwconv", "act", "drop", "fc2", "drop"):
        x = _layer(g, getattr(mlp, part), x, f"{name}.{part}")
    return x


def _mscan_block(g, block, x, name):
    """x + layer_scale_1 * attn(norm1(x)), then x + layer_scale_2 * mlp(norm2(x))."""
    if not isinstance(block, MSCABlock):
        raise _unsupported(block, name)
    for k, norm, branch, emit in ((1, block.norm1, block.attn, _spatial_attention),
                                  (2, block.norm2, block.mlp, _mlp)):
        scale = getattr(block, f"layer_scale_{k}")
        h = _layer(g, norm, x, f"{name}.norm{k}")
        h = emit(g, branch, h, f"{name}.{'attn' if k == 1 else 'mlp'}")
        h = g.op("Mul", [h, g.channel_vector(f"{name}.layer_scale_{k}", _array(scale))],
                 f"{name}.scaled_{k}")
        h = _layer(g, block.drop_path, h, f"{name}.drop_path")
        x = g.op("Add", [x, h], f"{name}.residual_{k}")
    return x


def _patch_embed(g, embed, x, name):
    if isinstance(embed, StemConv):
        return _layer(g, embed.proj, x, f"{name}.proj")
    if isinstance(embed, OverlapPatchEmbed):
        return _layer(g, embed.norm, _layer(g, embed.proj, x, f"{name}.proj"), f"{name}.norm")
    raise _unsupported(embed, name)


def _mscan(g, backbone, x):
    """The four stage outputs (B, C_i, H_i, W_i)."""
    outs = []
    for i in range(1, backbone.num_stages + 1):
        x = _patch_embed(g, getattr(backbone, f"patch_embed{i}"), x,
                         f"backbone.patch_embed{i}")
        for j, block in enumerate(getattr(backbone, f"block{i}")):
            x = _mscan_block(g, block, x, f"backbone.block{i}.{j}")
        x = _channel_layer_norm(g, getattr(backbone, f"norm{i}"), x, f"backbone.norm{i}")
        outs.append(x)
    return outs


def _stage_sizes(backbone, hw):
    """(H_i, W_i) of every stage for an input of `hw`: the patch embeds' conv arithmetic
    (the blocks keep the size)."""
    sizes = []
    for i in range(1, backbone.num_stages + 1):
        for m in getattr(backbone, f"patch_embed{i}").modules():
            if isinstance(m, nn.Conv2d):
                hw = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                           zip(hw, m.kernel_size, m.stride, m.padding, m.dilation))
        sizes.append(hw)
    return sizes


# ---------------------------------------------------------------------------
# LightHamHead

def _conv_module(g, module, x, name):
    """conv -> GroupNorm (if any) -> ReLU (if any)."""
    if not isinstance(module, ConvModule):
        raise _unsupported(module, name)
    x = _layer(g, module.conv, x, f"{name}.conv")
    if module.gn is not None:
        x = _group_norm(g, module.gn, x, f"{name}.gn")
    if module.activate is not None:
        x = _layer(g, module.activate, x, f"{name}.activate")
    return x


def _update_coef(g, x, bases, coef_t, name):
    """NMF2D._update_coef: coef <- coef * (X^T bases) / (coef bases^T bases + eps), with
    coef kept transposed, coef_t (B, S, R, N)."""
    bases_t = g.op("Transpose", [bases], f"{name}.bases_t", perm=[0, 1, 3, 2])  # (., S, R, D)
    # (., S, R, D) @ (B, S, D, N) -> (B, S, R, N)
    numerator = g.op("MatMul", [bases_t, x], f"{name}.numerator")
    gram = g.op("MatMul", [bases_t, bases], f"{name}.gram")  # (., S, R, R)
    gram_t = g.op("Transpose", [gram], f"{name}.gram_t", perm=[0, 1, 3, 2])
    # (coef gram)^T = gram^T coef_t: (., S, R, R) @ (B, S, R, N) -> (B, S, R, N)
    denominator = g.op("MatMul", [gram_t, coef_t], f"{name}.denominator")
    denominator = g.op("Add", [denominator, g.scalar(NMF_EPS)], f"{name}.denominator_eps")
    return g.op("Div", [g.op("Mul", [coef_t, numerator], f"{name}.product"), denominator],
                name)


def _update_bases(g, x, bases, coef_t, name):
    """NMF2D._update_bases: bases <- bases * (X coef) / (bases coef^T coef + eps)."""
    coef = g.op("Transpose", [coef_t], f"{name}.coef", perm=[0, 1, 3, 2])  # (B, S, N, R)
    # (B, S, D, N) @ (B, S, N, R) -> (B, S, D, R)
    numerator = g.op("MatMul", [x, coef], f"{name}.numerator")
    # (B, S, R, N) @ (B, S, N, R) -> (B, S, R, R)
    gram = g.op("MatMul", [coef_t, coef], f"{name}.gram")
    denominator = g.op("MatMul", [bases, gram], f"{name}.denominator")  # (B, S, D, R)
    denominator = g.op("Add", [denominator, g.scalar(NMF_EPS)], f"{name}.denominator_eps")
    return g.op("Div", [g.op("Mul", [bases, numerator], f"{name}.product"), denominator],
                name)


def _nmf(g, ham, x, bases, channels, name):
    """NMF2D in eval mode on x (B, C, H, W) from bases (B or 1, S, D, R): the reconstruction.

    The B*S matrices of NMF2D are kept as (B, S, ...) so that no reshape needs N = H * W or
    B; MatMul broadcasts bases shared by the batch."""
    if not isinstance(ham, NMF2D):
        raise _unsupported(ham, name)
    S = ham.S
    # (B, C, H, W) -> (B, S, D, N)
    x4 = g.op("Reshape", [x, g.ints([0, S, channels // S, -1])], f"{name}.x")
    bases_t = g.op("Transpose", [bases], f"{name}.init.bases_t", perm=[0, 1, 3, 2])
    logits = g.op("MatMul", [bases_t, x4], f"{name}.init.logits")  # (B, S, R, N)
    if ham.inv_t != 1:
        logits = g.op("Mul", [logits, g.scalar(float(ham.inv_t))], f"{name}.init.inv_t")
    coef_t = g.op("Softmax", [logits], f"{name}.init.coef", axis=2)  # over R
    for step in range(ham.eval_steps):
        coef_t = _update_coef(g, x4, bases, coef_t, f"{name}.step{step}.coef")
        bases = _update_bases(g, x4, bases, coef_t, f"{name}.step{step}.bases")
    coef_t = _update_coef(g, x4, bases, coef_t, f"{name}.compute_coef")
    # bases coef^T: (B, S, D, R) @ (B, S, R, N) -> (B, S, D, N) -> (B, C, H, W)
    recon = g.op("MatMul", [bases, coef_t], f"{name}.reconstruction")
    return g.op("Reshape", [recon, g.op("Shape", [x], f"{name}.shape")], name)


def _hamburger(g, ham, x, bases, name):
    """ReLU(x + ham_out(NMF2D(ReLU(ham_in(x)))))."""
    if not isinstance(ham, Hamburger):
        raise _unsupported(ham, name)
    channels = ham.ham_in.conv.out_channels
    enjoy = g.op("Relu", [_conv_module(g, ham.ham_in, x, f"{name}.ham_in")], f"{name}.ham_in_relu")
    enjoy = _nmf(g, ham.ham, enjoy, bases, channels, f"{name}.ham")
    enjoy = _conv_module(g, ham.ham_out, enjoy, f"{name}.ham_out")
    return g.op("Relu", [g.op("Add", [x, enjoy], f"{name}.residual")], name)


def _light_ham_head(g, head, stages, stage_hw, bases):
    """Stride-8 logits (B, num_classes, H_2, W_2) from the stage outputs."""
    name = "decode_head"
    feats = [stages[i] for i in head.in_index]
    hws = [None if stage_hw is None else stage_hw[i] for i in head.in_index]
    resized = [feats[0]]  # the others go to its size
    for k in range(1, len(feats)):
        resized.append(_resize_to(g, feats[k], hws[k], head.in_channels[k], feats[0], hws[0],
                                  head.align_corners, f"{name}.resize{k}"))
    x = g.op("Concat", resized, f"{name}.concat", axis=1)  # (B, sum(in_channels), H_2, W_2)
    x = _conv_module(g, head.squeeze, x, f"{name}.squeeze")
    x = _hamburger(g, head.hamburger, x, bases, f"{name}.hamburger")
    x = _conv_module(g, head.align, x, f"{name}.align")
    if head.dropout is not None:
        x = _layer(g, head.dropout, x, f"{name}.dropout")
    return _layer(g, head.conv_seg, x, f"{name}.conv_seg")


# ---------------------------------------------------------------------------
# Each module class of the network -> (the name of the function here that writes it, the
# children that function reads: a regex over their attribute names). tests/export/test_export_onnx.py walks built
# models: a class missing here, or a child its writer does not read, fails it, so a module
# cannot change without its ONNX form (jseg.models.mscan / ham_head say the same).

ONNX_FORMS = {
    EncoderDecoder: ("export_onnx", r"backbone|decode_head"),
    MSCAN: ("_mscan", r"(patch_embed|block|norm)[1-4]"),
    StemConv: ("_patch_embed", r"proj"),
    OverlapPatchEmbed: ("_patch_embed", r"proj|norm"),
    MSCABlock: ("_mscan_block", r"norm[12]|attn|mlp|drop_path"),
    MSCASpatialAttention: ("_spatial_attention", r"proj_[12]|activation|spatial_gating_unit"),
    MSCAAttention: ("_msca_attention", r"conv0|conv\d+_[12]|conv3"),
    Mlp: ("_mlp", r"fc[12]|dwconv|act|drop"),
    LightHamHead: ("_light_ham_head", r"squeeze|hamburger|align|dropout|conv_seg|loss_decode"),
    Hamburger: ("_hamburger", r"ham_in|ham|ham_out"),
    NMF2D: ("_nmf", r""),
    ConvModule: ("_conv_module", r"conv|gn|activate"),
    nn.Sequential: ("_layer", r"\d+"),
    nn.Conv: ("_layer", r""),  # DepthwiseConv2d, PointwiseConv2d
    nn.BatchNorm: ("_layer", r""),
    GELU: ("_layer", r""),
    nn.GELU: ("_layer", r""),
    nn.ReLU: ("_layer", r""),
    nn.Identity: ("_layer", r""),
    nn.Dropout: ("_layer", r""),
    nn.Dropout2d: ("_layer", r""),
    nn.DropPath: ("_layer", r""),
    ChannelLayerNorm: ("_channel_layer_norm", r""),  # MSCAN's stage-end norms
    GroupNorm: ("_group_norm", r""),
    CrossEntropyLoss: (None, r""),  # training only: not part of the graph
}


def onnx_form(module):
    """(writer name, children regex) of `module`'s class or its nearest base in ONNX_FORMS;
    None when it has none."""
    return next((ONNX_FORMS[c] for c in type(module).__mro__ if c in ONNX_FORMS), None)


# ---------------------------------------------------------------------------
# The graph

def graph_bases(model, seed: int = 0):
    """The (S, D, R) float32 NMF bases a graph of `model` holds for one image with
    bases="seed": the fixed `hamburger.ham.bases` of a rand_init=False model, otherwise
    seeded_bases((S, D, R), seed). For a batch of B, np.tile(bases, (B, 1, 1)) is what
    NMF2D's bases_fn would return for the same logits."""
    hamburger = model.decode_head.hamburger
    ham = hamburger.ham
    if not ham.rand_init:
        return _array(ham.bases)
    S = ham.S
    return seeded_bases((S, hamburger.ham_in.conv.out_channels // S, ham.R), seed)


def _check_model(model):
    if not (isinstance(model, EncoderDecoder) and isinstance(model.backbone, MSCAN)
            and isinstance(model.decode_head, LightHamHead)):
        raise ValueError("export_onnx needs jseg's segmentor, an EncoderDecoder with an MSCAN "
                         "backbone and a LightHamHead (jseg.models.build_model), got "
                         f"{type(model).__name__}")
    training = [name or "the model itself" for name, m in model.named_modules()
                if m.is_training()]
    if training:
        raise ValueError(f"export_onnx needs the model in eval mode (call model.eval() first); "
                         f"{len(training)} modules are in training mode, e.g. "
                         f"{', '.join(training[:3])}")


def _check_shape(shape):
    ok = (isinstance(shape, (tuple, list)) and len(shape) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1
                  for v in shape))
    if not ok:
        raise ValueError(f"shape must be (H, W), two integers >= 1, got {shape!r}; any size "
                         "works (MSCAN's stage i is ceil(H / 2^(i+1)) rows), e.g. (512, 512)")
    return int(shape[0]), int(shape[1])


def _check_opset(onnx, opset):
    newest = onnx.defs.onnx_opset_version()
    if (not isinstance(opset, numbers.Integral) or isinstance(opset, bool)
            or not MIN_OPSET <= opset <= newest):
        raise ValueError(f"opset must be an integer from {MIN_OPSET} (LayerNormalization) to "
                         f"{newest} (the newest onnx {onnx.__version__} knows), got {opset!r}")
    return int(opset)


def export_onnx(model, path, shape=(512, 512), *, bases="seed", seed=0, opset=MIN_OPSET,
                dynamic=False):
    """Write `model`'s whole-image inference as an ONNX graph to `path`; returns a summary.

    Args:
        model: our EncoderDecoder (jseg.models.build_model, weights loaded) in eval mode.
        path: the .onnx file; written atomically (a failure leaves the old file or none).
        shape: (H, W) of the input, any integers >= 1 (see the module docstring); with
            dynamic=True the graph takes any size and `shape` is only checked.
        bases: "seed" (constant NMF bases from `seed`) or "input" (a graph input `bases`);
            see the module docstring, also for rand_init=False models.
        seed: the seed of the constant bases (an integer >= 0).
        opset: ONNX opset, at least 17.
        dynamic: symbolic batch, H and W instead of (1, C_in, H, W).

    Returns {"path", "opset", "nodes", "initializers", "inputs": {name: dims},
    "outputs": {name: dims}, "bases": "seed" | "input" | "fixed", "bytes"} (dims hold
    strings for symbolic sizes; "bytes" is the file size).
    Raises ValueError for a model or argument that cannot be exported (the message says
    what is expected), ImportError without onnx.
    """
    _check_model(model)
    height, width = _check_shape(shape)
    if bases not in BASES_MODES:
        raise ValueError(f"bases must be 'seed' (constant NMF bases drawn from `seed`) or "
                         f"'input' (a graph input `bases`), got {bases!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    onnx = _require("onnx")
    opset = _check_opset(onnx, opset)
    helper = onnx.helper

    backbone, head = model.backbone, model.decode_head
    in_channels = backbone.patch_embed1.proj[0].in_channels
    ham = head.hamburger.ham
    S, R = ham.S, ham.R
    D = head.hamburger.ham_in.conv.out_channels // S
    if dynamic:
        image_dims = ["batch", in_channels, "height", "width"]
        out_hw = ["height", "width"]
        bases_dims = ["batch" if S == 1 else f"batch*{S}", D, R]
    else:
        image_dims = [1, in_channels, height, width]
        out_hw = [height, width]
        bases_dims = [S, D, R]
    classes = head.num_classes
    inputs = {"image": image_dims}
    outputs = {"logits": [image_dims[0], classes, *out_hw], "pred": [image_dims[0], *out_hw]}

    g = _Graph(onnx, opset, dynamic)
    if not ham.rand_init:
        mode = "fixed"
        bases_value = g.const("decode_head.hamburger.ham.bases", graph_bases(model)[None])
    elif bases == "seed":
        mode = "seed"
        bases_value = g.const(f"decode_head.hamburger.ham.seeded_bases_{seed}",
                              graph_bases(model, seed)[None])  # (1, S, D, R)
    else:
        mode = "input"
        inputs["bases"] = bases_dims
        # (B*S, D, R) -> (B, S, D, R)
        bases_value = g.op("Reshape", ["bases", g.ints([-1, S, D, R])], "bases.grouped")

    for name in inputs:  # no value may take a graph input's name
        g.name(name)
    stages = _mscan(g, backbone, "image")
    stage_hw = None if dynamic else _stage_sizes(backbone, (height, width))
    logits = _light_ham_head(g, head, stages, stage_hw, bases_value)
    # encode_decode: resize to the input size, with the head's align_corners
    logits = _resize_to(g, logits, None if dynamic else stage_hw[head.in_index[0]], classes,
                        "image", (height, width), head.align_corners, "logits")
    if logits != "logits":  # no resize (stride-8 maps as large as the input)
        logits = g.op("Identity", [logits], "logits")
    g.op("ArgMax", [logits], "pred", axis=1, keepdims=0)

    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    graph = helper.make_graph(
        g.nodes, "segnext",
        [helper.make_tensor_value_info(name, float32, dims) for name, dims in inputs.items()],
        [helper.make_tensor_value_info("logits", float32, outputs["logits"]),
         helper.make_tensor_value_info("pred", int64, outputs["pred"])],
        initializer=g.initializers)
    opset_ids = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opset_ids, producer_name="jseg",
                              doc_string="SegNeXt (MSCAN + LightHamHead) whole-image "
                                         "inference, written by jseg.export.onnx")
    # the oldest IR version that carries this opset, so that older runtimes load the file
    proto.ir_version = helper.find_min_ir_version_for(opset_ids)
    helper.set_model_props(proto, {"jseg.nmf_bases": mode if mode != "seed" else f"seed {seed}",
                                   "jseg.num_classes": str(classes)})
    onnx.checker.check_model(proto, full_check=True)
    data = proto.SerializeToString()
    with atomic_write(path) as f:
        f.write(data)
    return {"path": os.fspath(path), "opset": opset, "nodes": len(g.nodes),
            "initializers": len(g.initializers), "inputs": inputs, "outputs": outputs,
            "bases": mode, "bytes": len(data)}


# ---------------------------------------------------------------------------
# Running a graph

def run_onnx(path, image, bases=None, threads=None):
    """Logits (B, num_classes, H, W) float32 of an exported graph on `image` (B, C_in, H, W).

    path: the .onnx file, or a session from `open_session` (to run it many times).
    bases: the (B*S, D, R) NMF bases for a graph with the input `bases`; None otherwise.
    threads: onnxruntime's intra_op_num_threads when `path` is a file.
    """
    if hasattr(path, "run"):
        if threads is not None:
            raise ValueError("threads only applies when run_onnx opens the file; pass it to "
                             "open_session instead")
        session = path
    else:
        session = open_session(path, threads)
    image = np.ascontiguousarray(image, dtype=np.float32)
    if image.ndim != 4:
        raise ValueError(f"image must be (B, C, H, W), got shape {image.shape}")
    feeds = {"image": image}
    wanted = {i.name: i.shape for i in session.get_inputs()}
    if "bases" in wanted:
        if bases is None:
            raise ValueError(f"this graph takes its NMF bases as the input `bases` "
                             f"{tuple(wanted['bases'])}; pass bases=, e.g. graph_bases(model, "
                             "seed) tiled over the batch")
        feeds["bases"] = np.ascontiguousarray(bases, dtype=np.float32)
    elif bases is not None:
        raise ValueError("this graph holds its NMF bases as a constant (exported with "
                         "bases='seed', or from a rand_init=False model); pass bases=None")
    return session.run(["logits"], feeds)[0]
