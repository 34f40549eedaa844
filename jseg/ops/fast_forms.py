"""Put the CPU kernels under a built model, once: `accelerate(model)`.

jseg.models holds only the reference maths. `accelerate` gives each module whose class is
in FAST_FORMS a subclass of that class (same parameters, buffers and state-dict keys; the
instance's `__class__` changes, nothing else) whose listed methods run this package's
kernels when they apply (`jseg.ops.enabled()` and the kernel's shapes, checked per call,
so `JSEG_CPU_KERNELS=0` and `with jseg.ops.disabled():` still give the reference maths) and
the reference method otherwise. jseg.models.build_model calls it; a module built by hand
runs the reference maths until it is accelerated too.

A fast form is `fast(module, reference, *args)`, `reference` the class's own method. The
forms read the modules by their attribute names (`attn.proj_1`, `mlp.dwconv`, ...), as the
ONNX writer does: a renamed child changes here too (tests/ops/test_fast_forms.py).
"""
import functools

from . import depthwise, elementwise, fused_block, matmul, norm, slide_merge
from . import loss as loss_op
from . import resize as resize_op

__all__ = ["accelerate", "FAST_FORMS", "block_parts"]


def _depthwise(conv, reference, x):
    if depthwise.applies(conv, x):
        return depthwise.depthwise_conv2d(x, conv.weight, conv.bias)
    return reference(conv, x)


def _pointwise(conv, reference, x):
    """weight (O, C) @ x[n] (C, H*W) per sample, then the bias: no NCHW <-> NHWC reorders."""
    if not matmul.pointwise_applies(x):
        return reference(conv, x)
    y = matmul.pointwise(x, conv.weight)
    if conv.bias is None:
        return y
    n, _, h, w = y.shape
    return elementwise.add_channel_bias(y.reshape((n, conv.out_channels, h * w)),
                                        conv.bias).reshape(y.shape)


def _gelu(act, reference, x):
    return elementwise.gelu(x) if elementwise.applies(x) else reference(act, x)


def _group_norm(gn, reference, x):
    if gn.affine and norm.applies(x):
        return norm.group_norm(x, gn.weight, gn.bias, gn.num_groups, gn.eps)
    return reference(gn, x)


def _channel_layer_norm(ln, reference, x):
    if norm.channel_layer_norm_applies(ln, x):
        return norm.channel_layer_norm(x, ln.weight, ln.bias, ln.eps)
    return reference(ln, x)


def _mlp_hidden(mlp, reference, x):
    if fused_block.mlp_applies(mlp.fc1, mlp.dwconv, x):
        return fused_block.mlp_hidden(mlp.fc1, mlp.dwconv, x)
    return reference(mlp, x)


def block_parts(block):
    """An MSCABlock's modules and tensors by role (fused_block.MSCABlockParts)."""
    attn, mlp = block.attn, block.mlp
    sgu = attn.spatial_gating_unit
    strips = tuple((getattr(sgu, f"conv{i}_1"), getattr(sgu, f"conv{i}_2"))
                   for i in range(sgu.num_branches))
    dropout = getattr(mlp.drop, "is_train", False) and getattr(mlp.drop, "p", 0) > 0
    return fused_block.MSCABlockParts(
        norm1=block.norm1, proj_1=attn.proj_1, conv0=sgu.conv0, strips=strips,
        conv3=sgu.conv3, proj_2=attn.proj_2, layer_scale_1=block.layer_scale_1,
        norm2=block.norm2, fc1=mlp.fc1, dwconv=mlp.dwconv, fc2=mlp.fc2,
        layer_scale_2=block.layer_scale_2, drop_path=block.drop_path, dropout=dropout)


def _mscan_block(block, reference, x):
    parts = block_parts(block)
    if fused_block.applies(parts, x):
        return fused_block.mscan_block(parts, x)
    return reference(block, x)


def _bmm(nmf, reference, a, b, transpose_b=False):
    if matmul.applies(a, b):
        return matmul.batched_matmul(a, b, transpose_b)
    return reference(nmf, a, b, transpose_b)


def _resize(module, reference, x, size, align_corners=False):
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[2:]) != size and resize_op.applies(x):
        return resize_op.bilinear_resize(x, size, align_corners)
    return reference(module, x, size, align_corners)


def _merge_windows(segmentor, reference, windows, boxes, size):
    if slide_merge.applies(windows):  # one multi-threaded pass, same sums
        return slide_merge.slide_merge(windows, boxes, size)
    return reference(segmentor, windows, boxes, size)


def _cross_entropy(loss, reference, logits, label):
    """Log-softmax, pick and sum in one pass; the backward recomputes the softmax instead of
    keeping a (B, C, H, W) log-probability tensor."""
    if not loss_op.applies(logits, label):
        return reference(loss, logits, label)
    weight = loss.class_weights(logits.shape[1])
    total = loss_op.cross_entropy_sum(logits, label, weight, loss.ignore_index).sum()
    return loss.loss_weight * (total / label.numel())


def _accuracy(loss, reference, logits, label):
    if not loss_op.applies(logits, label):
        return reference(loss, logits, label)
    counts = loss_op.accuracy_counts(logits, label, loss.ignore_index)
    return loss.percent(counts[0], counts[1]).float32()


def _resized_loss(loss, reference, logits, label, align_corners=False):
    """The resized logits are never stored (loss_op.resized_cross_entropy_sum)."""
    if not loss_op.resized_applies(logits, label):
        return reference(loss, logits, label, align_corners)
    weight = loss.class_weights(logits.shape[1])
    total, counts = loss_op.resized_cross_entropy_sum(logits, label, weight, loss.ignore_index,
                                                      align_corners)
    acc = loss.percent(counts[0], counts[1]).float32()
    return loss.loss_weight * (total.sum() / label.numel()), acc


# "module.Class" of jseg.models -> {method name: its fast form}
FAST_FORMS = {
    "jseg.models.layers.DepthwiseConv2d": {"execute": _depthwise},
    "jseg.models.layers.PointwiseConv2d": {"execute": _pointwise},
    "jseg.models.layers.GELU": {"execute": _gelu},
    "jseg.models.layers.GroupNorm": {"execute": _group_norm},
    "jseg.models.layers.ChannelLayerNorm": {"execute": _channel_layer_norm},
    "jseg.models.mscan.Mlp": {"hidden": _mlp_hidden},
    "jseg.models.mscan.MSCABlock": {"execute": _mscan_block},
    "jseg.models.ham_head.NMF2D": {"bmm": _bmm},
    "jseg.models.ham_head.LightHamHead": {"resize": _resize},
    "jseg.models.segmentor.EncoderDecoder": {"resize": _resize, "merge_windows": _merge_windows},
    "jseg.models.losses.CrossEntropyLoss": {"execute": _cross_entropy, "accuracy": _accuracy,
                                            "resized": _resized_loss},
}

_fast_classes = {}  # reference class -> its fast subclass


def _qualified(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _method(fast, reference):
    @functools.wraps(reference)
    def method(self, *args, **kwargs):
        return fast(self, reference, *args, **kwargs)
    return method


def _fast_class(cls):
    """The fast subclass of `cls`, or None when FAST_FORMS has no entry for it."""
    if getattr(cls, "reference_class", None) is not None:
        return cls  # accelerated already
    forms = FAST_FORMS.get(_qualified(cls))
    if forms is None:
        return None
    if cls not in _fast_classes:
        body = {name: _method(fast, getattr(cls, name)) for name, fast in forms.items()}
        body.update(reference_class=cls, __module__=cls.__module__,
                    __doc__=f"{cls.__name__} with jseg.ops kernels where they apply.")
        _fast_classes[cls] = type(f"Fast{cls.__name__}", (cls,), body)
    return _fast_classes[cls]


def accelerate(model):
    """Give every module of `model` (itself included) that has a fast form its fast class;
    returns `model`. Idempotent; parameters and state-dict keys are unchanged."""
    for module in model.modules():
        fast = _fast_class(type(module))
        if fast is not None and type(module) is not fast:
            module.__class__ = fast
    return model
