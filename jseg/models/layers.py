"""Small building blocks shared by the SegNeXt encoder, decode head and segmentor.

- `ConvModule`: conv -> optional GroupNorm -> optional ReLU, the decode head's brick. Its
  children are named `conv`, `gn` and `activate` like mmcv's ConvModule, so the decode
  head's state-dict keys match the PyTorch checkpoints (`squeeze.conv.weight`, ...).
- The weight-initialisation rules of the references (mmcv/mmengine) as functions.
- `resize`: bilinear resizing to an explicit size.
- `BatchNorm2d`: Jittor's BatchNorm with PyTorch's (unbiased) running-variance update.
- `PointwiseConv2d`, `DepthwiseConv2d`: nn.Conv2d with a 1x1 kernel / groups == channels.
- `GELU`, `GroupNorm`: exact-erf GELU and GroupNorm.
- `ChannelLayerNorm`: LayerNorm over the channels of NCHW data (MSCAN's stage ends).

Every `execute` here is the reference maths on Jittor's ops (what runs on CUDA). The classes
are distinct so that jseg.ops.accelerate can give each one its CPU kernel, once, at build.
"""
import math

import jittor as jt
from jittor import nn

__all__ = ["ConvModule", "BatchNorm2d", "DepthwiseConv2d", "PointwiseConv2d", "GELU", "GroupNorm",
           "ChannelLayerNorm", "resize", "normal_init_", "kaiming_normal_fan_out_",
           "constant_init_"]


def normal_init_(module, std, mean=0.0, bias=0.0):
    """Fill `module.weight` from N(mean, std^2) (Jittor's seeded RNG) and its bias with `bias`."""
    module.weight.assign(jt.init.gauss(module.weight.shape, "float32", mean, std))
    if getattr(module, "bias", None) is not None:
        module.bias.assign(jt.full(module.bias.shape, bias, "float32"))


def kaiming_normal_fan_out_(conv):
    """mmcv's `kaiming_init(conv, a=0, mode='fan_out', nonlinearity='relu', distribution='normal')`.

    std = sqrt(2 / fan_out) with PyTorch's fan_out = out_channels * kh * kw (groups are not
    divided out, unlike the MSCAN rule); bias 0. mmcv's ConvModule applies this to its conv
    whenever the activation is not LeakyReLU, so also to the head's convs without activation.
    """
    out_channels, _, kh, kw = conv.weight.shape
    normal_init_(conv, std=math.sqrt(2.0 / (out_channels * kh * kw)))


def constant_init_(module, value, bias=0.0):
    """Set `module.weight` to `value` and `module.bias` to `bias` (norm layers)."""
    module.weight.assign(jt.full(module.weight.shape, value, "float32"))
    if getattr(module, "bias", None) is not None:
        module.bias.assign(jt.full(module.bias.shape, bias, "float32"))


def resize(x, size, align_corners=False):
    """Bilinear resize of (B, C, H, W) to `size` = (H', W'); returns `x` itself if the size is equal.

    Always pass an explicit size: Jittor's `scale_factor=` path does not match PyTorch, the
    `size=` path does (to about 1e-6). A same-size bilinear resize is the identity in PyTorch
    too, so skipping it changes nothing.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[2:]) == size:
        return x
    return nn.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class BatchNorm2d(nn.BatchNorm):
    """`jittor.nn.BatchNorm` whose training-mode running_var update uses the unbiased variance.

    Jittor updates running_var with the biased batch variance; PyTorch, and so every
    reference checkpoint, with the unbiased one: n / (n - 1) times larger, n = values per
    channel in the (global, under MPI sync) batch. With a stride-32 map of 2x2 at batch 2
    (n = 8) that is a 14% larger update. The normalisation itself uses the biased variance
    in both frameworks, as before; everything else is Jittor's BatchNorm (eps 1e-5, momentum
    0.1, E[x^2] - E[x]^2 variance, synchronised across MPI ranks). For n == 1 (where PyTorch
    refuses to train) the update takes the variance as it is.
    """

    def execute(self, x):
        if not self.is_train:
            return super().execute(x)
        dims = [0] + list(range(2, x.ndim))
        n = x.numel() // x.shape[1]
        xmean = jt.mean(x, dims=dims)
        x2mean = jt.mean(x * x, dims=dims)
        if self.sync and jt.in_mpi:
            xmean = xmean.mpi_all_reduce("mean")
            x2mean = x2mean.mpi_all_reduce("mean")
            n *= jt.world_size
        xvar = (x2mean - xmean * xmean).maximum(0.0)
        w = self.weight / jt.sqrt(xvar + self.eps)
        b = self.bias - xmean * w
        norm_x = x * w.broadcast(x, dims) + b.broadcast(x, dims)
        unbiased = xvar * (n / (n - 1)) if n > 1 else xvar
        self.running_mean.update(self.running_mean
                                 + (xmean.reshape((-1,)) - self.running_mean) * self.momentum)
        self.running_var.update(self.running_var
                                + (unbiased.reshape((-1,)) - self.running_var) * self.momentum)
        return norm_x


class ConvModule(nn.Module):
    """Conv2d -> GroupNorm (optional) -> ReLU (optional), initialised as mmcv's ConvModule.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: square kernel size (padding kernel_size // 2, stride 1).
        bias: add a conv bias; mmcv's default 'auto' is "bias only without norm", which the
            callers spell out.
        norm_groups: number of GroupNorm groups, or None for no norm.
        act: apply ReLU at the end.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 bias: bool = False, norm_groups=None, act: bool = True):
        super().__init__()
        if kernel_size == 1:
            self.conv = PointwiseConv2d(in_channels, out_channels, bias=bias)
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size,
                                  padding=kernel_size // 2, bias=bias)
        kaiming_normal_fan_out_(self.conv)
        self.gn = None
        if norm_groups is not None:
            if out_channels % norm_groups != 0:
                raise ValueError(f"GroupNorm needs out_channels divisible by norm_groups, got "
                                 f"{out_channels} channels and {norm_groups} groups")
            self.gn = GroupNorm(norm_groups, out_channels)
            constant_init_(self.gn, 1.0, 0.0)
        self.activate = nn.ReLU() if act else None

    def execute(self, x):
        x = self.conv(x)
        if self.gn is not None:
            x = self.gn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise conv (groups == channels), (N, C, H, W) -> (N, C, H', W'): an nn.Conv2d in
    every respect (parameters `weight` (C, 1, kh, kw) and `bias` (C,), init, keys)."""

    def __init__(self, channels: int, kernel_size, padding=0):
        super().__init__(channels, channels, kernel_size, padding=padding, groups=channels)


class PointwiseConv2d(nn.Conv2d):
    """1x1 conv, (N, C_in, H, W) -> (N, C_out, H, W); an nn.Conv2d in every respect."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)


class GELU(nn.Module):
    """x / 2 * (1 + erf(x / sqrt 2)) (PyTorch's default GELU), any shape."""

    def execute(self, x):
        return nn.gelu(x)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm (eps 1e-5, affine `weight` and `bias`), (N, C, H, W)."""


class ChannelLayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the C channels of (N, C, H, W): to channels-last, normalise, back."""

    def execute(self, x):
        return super().execute(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
