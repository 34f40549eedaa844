"""MSCAN, the convolutional encoder of SegNeXt (Guo et al., *SegNeXt: Rethinking Convolutional
Attention Design for Semantic Segmentation*, NeurIPS 2022, arXiv 2209.08575).

Four stages at strides 4, 8, 16 and 32. Every stage starts with a stride-2 3x3 conv
(`StemConv` = two of them for stage 1) and stacks `MSCABlock`s: BatchNorm, multi-scale
convolutional attention (a 5x5 depthwise conv plus 1xk/kx1 strip convs for k = 7, 11, 21
that gate the features), BatchNorm, a conv MLP with a 3x3 depthwise conv. Each stage ends
with a LayerNorm over channels. `forward` returns all four stage outputs, (B, C_i, H_i, W_i):
features stay NCHW between blocks (the references go through (B, N, C) tokens; same math).

Attribute names are mmseg 1.x's checkpoint keys (`block2.3.attn.proj_1`, `mlp.dwconv`, ...;
the official repo and Jittor/JSeg have `mlp.dwconv.dwconv`): never rename them. A changed
module changes with it: its ONNX writer (jseg.export.onnx.ONNX_FORMS), its CPU fast form
(jseg.ops.accelerate: the fused block reads the block's parts by name) and the key table
(jseg.checkpoint.mapping); tests/models/test_forms.py, tests/ops and the parity and ONNX tests
fail until they agree.
"""
import math

import numpy as np
from jittor import nn

from .layers import (GELU, BatchNorm2d, ChannelLayerNorm, DepthwiseConv2d, PointwiseConv2d,
                     constant_init_, normal_init_)

__all__ = ["StemConv", "OverlapPatchEmbed", "MSCAAttention", "MSCASpatialAttention", "Mlp",
           "MSCABlock", "MSCAN", "MSCAN_SETTINGS", "mscan_variant"]

# layer_scale_1/2 start at this value (hard-coded in all reference implementations).
LAYER_SCALE_INIT = 1e-2


class StemConv(nn.Module):
    """Stage-1 downsampling: two stride-2 3x3 convs, (B, C_in, H, W) -> (B, C, ceil(H/4), ceil(W/4)).

    `proj` indices match the checkpoints: 0 conv, 1 BN, 2 GELU, 3 conv, 4 BN.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_channels, out_channels // 2, 3, stride=2, padding=1),
            BatchNorm2d(out_channels // 2),
            GELU(),
            nn.Conv2d(out_channels // 2, out_channels, 3, stride=2, padding=1),
            BatchNorm2d(out_channels),
        )

    def execute(self, x):
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """Stages 2-4 downsampling: stride-2 3x3 conv + BN, (B, C_in, H, W) -> (B, C, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_channels: int, out_channels: int, patch_size: int = 3, stride: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, patch_size, stride=stride,
                              padding=patch_size // 2)
        self.norm = BatchNorm2d(out_channels)

    def execute(self, x):
        return self.norm(self.proj(x))


class MSCAAttention(nn.Module):
    """Multi-scale convolutional attention (MSCA), the `spatial_gating_unit`.

    attn = conv0(x) (5x5 depthwise), plus three strip branches on it (1xk then kx1 depthwise
    for k = 7, 11, 21), mixed by the dense 1x1 `conv3`; the result gates the input: attn * x.

    Args:
        channels: feature channels.
        kernel_sizes: conv0's kernel, then the 1xk kernels of the branches (the kx1 kernels
            are their transposes). Names and defaults as mmseg 1.x `attention_kernel_sizes`.
        paddings: matching paddings (`attention_kernel_paddings`).
    """

    def __init__(self, channels: int, kernel_sizes=(5, (1, 7), (1, 11), (1, 21)),
                 paddings=(2, (0, 3), (0, 5), (0, 10))):
        super().__init__()
        if len(kernel_sizes) != len(paddings):
            raise ValueError(f"kernel_sizes {kernel_sizes} and paddings {paddings} must have the "
                             "same length")
        self.conv0 = DepthwiseConv2d(channels, kernel_sizes[0], padding=paddings[0])
        self.num_branches = len(kernel_sizes) - 1
        for i, (kernel, pad) in enumerate(zip(kernel_sizes[1:], paddings[1:])):
            kernel, pad = tuple(kernel), tuple(pad)
            # conv{i}_1 is 1xk, conv{i}_2 its kx1 transpose.
            setattr(self, f"conv{i}_1", DepthwiseConv2d(channels, kernel, padding=pad))
            setattr(self, f"conv{i}_2", DepthwiseConv2d(channels, kernel[::-1],
                                                        padding=pad[::-1]))
        self.conv3 = PointwiseConv2d(channels, channels)

    def execute(self, x):
        attn = self.conv0(x)
        total = attn
        for i in range(self.num_branches):
            branch = getattr(self, f"conv{i}_1")(attn)
            total = total + getattr(self, f"conv{i}_2")(branch)
        return self.conv3(total) * x


class MSCASpatialAttention(nn.Module):
    """proj_1 (1x1) -> GELU -> MSCA -> proj_2 (1x1), plus the shortcut from the input."""

    def __init__(self, channels: int, kernel_sizes=(5, (1, 7), (1, 11), (1, 21)),
                 paddings=(2, (0, 3), (0, 5), (0, 10))):
        super().__init__()
        self.proj_1 = PointwiseConv2d(channels, channels)
        self.activation = GELU()
        self.spatial_gating_unit = MSCAAttention(channels, kernel_sizes, paddings)
        self.proj_2 = PointwiseConv2d(channels, channels)

    def execute(self, x):
        shortcut = x
        x = self.activation(self.proj_1(x))
        x = self.proj_2(self.spatial_gating_unit(x))
        return x + shortcut


class Mlp(nn.Module):
    """fc1 (1x1) -> 3x3 depthwise `dwconv` -> GELU -> dropout -> fc2 (1x1) -> dropout."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = PointwiseConv2d(in_features, hidden_features)
        # A bare conv, as in mmseg 1.x (key `mlp.dwconv.weight`).
        self.dwconv = DepthwiseConv2d(hidden_features, 3, padding=1)
        self.act = GELU()
        self.fc2 = PointwiseConv2d(hidden_features, in_features)
        self.drop = nn.Dropout(drop, is_train=True) if drop > 0 else nn.Identity()

    def hidden(self, x):
        """act(dwconv(fc1(x))), the expanded features."""
        return self.act(self.dwconv(self.fc1(x)))

    def execute(self, x):
        return self.drop(self.fc2(self.drop(self.hidden(x))))


class MSCABlock(nn.Module):
    """x + DropPath(layer_scale_1 * attn(BN(x))), then x + DropPath(layer_scale_2 * mlp(BN(x)))."""

    def __init__(self, channels: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 drop_path: float = 0.0, kernel_sizes=(5, (1, 7), (1, 11), (1, 21)),
                 paddings=(2, (0, 3), (0, 5), (0, 10))):
        super().__init__()
        self.norm1 = BatchNorm2d(channels)
        self.attn = MSCASpatialAttention(channels, kernel_sizes, paddings)
        # Per-sample stochastic depth; the identity when drop_path == 0 or in eval mode.
        self.drop_path = nn.DropPath(drop_path, is_train=True)
        self.norm2 = BatchNorm2d(channels)
        self.mlp = Mlp(channels, int(channels * mlp_ratio), drop)
        self.layer_scale_1 = LAYER_SCALE_INIT * nn.init.one((channels,), "float32")
        self.layer_scale_2 = LAYER_SCALE_INIT * nn.init.one((channels,), "float32")

    def execute(self, x):
        # layer_scale (C,) -> (C, 1, 1), broadcast over (B, C, H, W)
        scale_1 = self.layer_scale_1.reshape((-1, 1, 1))
        scale_2 = self.layer_scale_2.reshape((-1, 1, 1))
        x = x + self.drop_path(scale_1 * self.attn(self.norm1(x)))
        x = x + self.drop_path(scale_2 * self.mlp(self.norm2(x)))
        return x


class MSCAN(nn.Module):
    """The MSCAN encoder; `execute(x)` returns the four stage outputs.

    Input (B, in_channels, H, W) of any size; stage i output is (B, embed_dims[i], H_i, W_i)
    with H_1 = ceil(ceil(H/2)/2) and H_{i+1} = ceil(H_i/2) (stride-2, pad-1 3x3 convs), i.e.
    strides 4, 8, 16, 32.

    Args:
        in_channels: input image channels.
        embed_dims, depths, mlp_ratios: per-stage width, number of blocks, MLP expansion.
        drop_rate: dropout inside the MLPs.
        drop_path_rate: stochastic depth; block k of all sum(depths) blocks gets
            linspace(0, drop_path_rate, sum(depths))[k].
        attention_kernel_sizes, attention_kernel_paddings: MSCA kernels (see MSCAAttention).

    Weights are initialised as the references do without a pretrained checkpoint: conv
    weights N(0, sqrt(2 / fan_out)) with fan_out = kh * kw * out_channels // groups, conv
    biases 0, LayerNorm and BatchNorm weight 1, bias 0.
    """

    def __init__(self, in_channels: int = 3, embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2),
                 mlp_ratios=(8, 8, 4, 4), drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 attention_kernel_sizes=(5, (1, 7), (1, 11), (1, 21)),
                 attention_kernel_paddings=(2, (0, 3), (0, 5), (0, 10))):
        super().__init__()
        if not len(embed_dims) == len(depths) == len(mlp_ratios):
            raise ValueError(f"embed_dims {tuple(embed_dims)}, depths {tuple(depths)} and "
                             f"mlp_ratios {tuple(mlp_ratios)} need one entry per stage each")
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.num_stages = len(depths)
        drop_path_rates = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        first = 0
        for i in range(self.num_stages):
            if i == 0:
                patch_embed = StemConv(in_channels, embed_dims[0])
            else:
                patch_embed = OverlapPatchEmbed(embed_dims[i - 1], embed_dims[i])
            blocks = nn.ModuleList([
                MSCABlock(embed_dims[i], mlp_ratios[i], drop_rate,
                          drop_path_rates[first + j], attention_kernel_sizes,
                          attention_kernel_paddings)
                for j in range(depths[i])])
            first += depths[i]
            setattr(self, f"patch_embed{i + 1}", patch_embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", ChannelLayerNorm(embed_dims[i]))
        self.init_weights()

    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                normal_init_(m, std=math.sqrt(2.0 / fan_out))
            elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                constant_init_(m, 1.0, 0.0)

    def execute(self, x):
        outs = []
        for i in range(self.num_stages):
            x = getattr(self, f"patch_embed{i + 1}")(x)
            for block in getattr(self, f"block{i + 1}"):
                x = block(x)
            x = getattr(self, f"norm{i + 1}")(x)  # LayerNorm over channels
            outs.append(x)
        return outs


# The four variants of the paper (Table 2); drop_path_rate as mmseg 1.x configs
# (Jittor/JSeg uses 0.2 for B). Decoder widths live in the configs: channels = ham_channels = 256/256/512/1024.
MSCAN_SETTINGS = {
    "t": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), mlp_ratios=(8, 8, 4, 4),
              drop_path_rate=0.1),
    "s": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), mlp_ratios=(8, 8, 4, 4),
              drop_path_rate=0.1),
    "b": dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), mlp_ratios=(8, 8, 4, 4),
              drop_path_rate=0.1),
    "l": dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), mlp_ratios=(8, 8, 4, 4),
              drop_path_rate=0.3),
}


def mscan_variant(name: str, **overrides) -> MSCAN:
    """Build MSCAN-T/S/B/L by name ("t", "s", "b", "l"); keyword arguments override the table."""
    key = name.lower()
    if key not in MSCAN_SETTINGS:
        raise ValueError(f"unknown MSCAN variant {name!r}; valid: {sorted(MSCAN_SETTINGS)}")
    return MSCAN(**{**MSCAN_SETTINGS[key], **overrides})
