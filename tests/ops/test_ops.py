"""jseg.ops: the multi-threaded CPU kernels equal Jittor's own ops, forward and backward, and
one switch (`jseg.ops.enabled()`, JSEG_CPU_KERNELS=0, `jseg.ops.disabled()`) turns them all off."""
import numpy as np
import pytest

import jseg  # noqa: F401  (configures Jittor before it is imported)
import jittor as jt
from jittor import nn

from jseg import ops
from jseg.models.layers import DepthwiseConv2d
from jseg.ops import depthwise
from jseg.ops.fast_forms import block_parts


def _outputs_and_grads(conv, x, upstream):
    y = conv(x)
    grads = jt.grad((y * upstream).sum(), [x, conv.weight, conv.bias])
    return [t.numpy() for t in (y, *grads)]


@pytest.mark.parametrize("kernel, padding", [(5, 2), ((1, 7), (0, 3)), ((21, 1), (10, 0)),
                                             (3, 1)])
def test_depthwise_kernel_matches_jittor_conv(kernel, padding):
    jt.set_seed(0)
    reference = nn.Conv2d(6, 6, kernel, padding=padding, groups=6)
    fast = ops.accelerate(DepthwiseConv2d(6, kernel, padding=padding))
    fast.weight.assign(reference.weight)
    fast.bias.assign(reference.bias)
    # odd sizes, a kernel taller than the input (21 > 13): border handling matters; rows
    # of 45 are a full 32-wide tile and a partial one
    x = jt.randn(2, 6, 13, 45)
    upstream = jt.randn(2, 6, 13, 45)
    assert depthwise.applies(fast, x)
    # the kernels first: memory freed by the reference could hold the right answer
    got = _outputs_and_grads(fast, x, upstream)
    expected = _outputs_and_grads(reference, x, upstream)
    for name, e, g in zip(["output", "grad x", "grad weight", "grad bias"], expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max(), err_msg=name)


def test_depthwise_falls_back_where_the_kernel_does_not_apply():
    strided = ops.accelerate(DepthwiseConv2d(4, 3, padding=1))
    strided.stride = (2, 2)
    x = jt.randn(1, 4, 9, 9)
    assert not depthwise.applies(strided, x)
    assert tuple(strided(x).shape) == (1, 4, 5, 5)
    unpadded = ops.accelerate(DepthwiseConv2d(4, 3, padding=0))
    assert not depthwise.applies(unpadded, x)
    assert tuple(unpadded(x).shape) == (1, 4, 7, 7)


def test_gelu_kernel_matches_the_erf_formula():
    from math import erf, exp, pi, sqrt

    from jseg.ops.elementwise import gelu
    values = np.linspace(-9, 9, 2001).astype("float32")
    x = jt.array(values)
    y = gelu(x)
    grad = jt.grad((y * 1.5).sum(), x)
    expected = [0.5 * v * (1 + erf(v / sqrt(2))) for v in values.astype(float)]
    expected_grad = [1.5 * (0.5 * (1 + erf(v / sqrt(2))) + v * exp(-v * v / 2) / sqrt(2 * pi))
                     for v in values.astype(float)]
    np.testing.assert_allclose(y.numpy(), expected, rtol=0, atol=2e-6)
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=0, atol=2e-6)


def test_pointwise_conv_matches_jittor_conv():
    from jseg.models.layers import PointwiseConv2d
    jt.set_seed(1)
    reference = nn.Conv2d(6, 5, 1)
    fast = ops.accelerate(PointwiseConv2d(6, 5))
    fast.weight.assign(reference.weight)
    fast.bias.assign(reference.bias)
    x = jt.randn(2, 6, 13, 17)
    upstream = jt.randn(2, 5, 13, 17)
    expected = _outputs_and_grads(reference, x, upstream)
    got = _outputs_and_grads(fast, x, upstream)
    for name, e, g in zip(["output", "grad x", "grad weight", "grad bias"], expected, got):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * np.abs(e).max(), err_msg=name)


def test_cross_entropy_kernel_reports_non_finite_logits_as_nan():
    """Kernels compile with -Ofast; a NaN or inf logit must still give a NaN loss."""
    from jseg.models.losses import CrossEntropyLoss
    cross_entropy = ops.accelerate(CrossEntropyLoss())
    label = jt.array(np.zeros((1, 3, 4), "uint8"))
    for bad in (float("nan"), float("inf")):
        logits = np.zeros((1, 5, 3, 4), "float32")
        logits[0, 2, 1, 1] = bad
        assert np.isnan(cross_entropy(jt.array(logits), label).item())
    assert np.isfinite(cross_entropy(jt.array(np.zeros((1, 5, 3, 4), "float32")), label).item())


def test_group_norm_kernel_matches_jittor_group_norm():
    from jseg.models.layers import GroupNorm
    jt.set_seed(2)
    reference, fast = nn.GroupNorm(4, 8), ops.accelerate(GroupNorm(4, 8))
    for norm in (reference, fast):
        norm.weight.assign(jt.array(np.linspace(0.5, 2, 8).astype("float32")))
        norm.bias.assign(jt.array(np.linspace(-1, 1, 8).astype("float32")))
    x = jt.randn(2, 8, 13, 17) * 3 + 1
    upstream = jt.randn(2, 8, 13, 17)
    results = []
    for norm in (reference, fast):
        y = norm(x)
        grads = jt.grad((y * upstream).sum(), [x, norm.weight, norm.bias])
        results.append([t.numpy() for t in (y, *grads)])
    for name, e, g in zip(["output", "grad x", "grad weight", "grad bias"], *results):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4 * np.abs(e).max(), err_msg=name)


def test_mlp_fused_path_matches_the_plain_ops():
    """fc1 -> depthwise 3x3 -> GELU in one kernel equals the three modules run one by one."""
    from jseg.models.mscan import Mlp
    jt.set_seed(3)
    mlp = ops.accelerate(Mlp(4, 8))
    x = jt.randn(2, 4, 9, 11)
    upstream = jt.randn(2, 4, 9, 11)
    params = [x, mlp.fc1.weight, mlp.fc1.bias, mlp.dwconv.weight, mlp.dwconv.bias]

    def run(fn):
        y = fn(x)
        return [t.numpy() for t in (y, *jt.grad((y * upstream).sum(), params))]

    def plain_mlp(v):
        return mlp.fc2(nn.gelu(nn.Conv2d.execute(mlp.dwconv, nn.Conv2d.execute(mlp.fc1, v))))

    fused = run(mlp)
    plain = run(plain_mlp)
    for i, (f, p) in enumerate(zip(fused, plain)):
        np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * np.abs(p).max(), err_msg=str(i))
    with jt.no_grad():  # the kernel then keeps no pre-activation copy for the gradient
        np.testing.assert_allclose(mlp(x).numpy(), plain[0], rtol=1e-4,
                                   atol=1e-5 * np.abs(plain[0]).max())


@pytest.mark.parametrize("training, drop_path", [(False, 0.0), (True, 0.0), (True, 0.5)])
def test_fused_block_matches_the_module_by_module_block(training, drop_path, monkeypatch):
    """Same outputs and gradients. DropPath: Jittor draws random numbers when an op runs,
    and the two graphs run in different orders, so the draws are pinned here: sample 0
    is kept, sample 1 dropped (keep probability 0.5)."""
    from jseg.models.mscan import MSCABlock
    monkeypatch.setattr(jt, "rand", lambda shape, dtype="float32": jt.array(
        np.array([0.9, 0.1], "float32").reshape(shape)))
    jt.set_seed(4)
    block = ops.accelerate(MSCABlock(8, mlp_ratio=2, drop_path=drop_path))
    for p in block.parameters():  # non-trivial biases and scales
        p.assign(p + 0.05 * jt.randn(p.shape))
    block.train() if training else block.eval()
    x = jt.randn(2, 8, 9, 11)
    upstream = jt.randn(2, 8, 9, 11)
    params = [x] + [p for p in block.parameters() if p.requires_grad]
    assert ops.fused_block.applies(block_parts(block), x)

    def run(path):
        if path == "fused":
            y = ops.fused_block.mscan_block(block_parts(block), x)
        elif path == "modules":  # the reference execute, each module on its own kernel
            y = MSCABlock.execute(block, x)
        else:  # kernels off: Jittor's own ops, as on CUDA
            with ops.disabled():
                y = block(x)
        return [t.numpy() for t in (y, *jt.grad((y * upstream).sum(), params))]

    fused = run("fused")
    for path in ("modules", "off"):
        for i, (f, p) in enumerate(zip(fused, run(path))):
            np.testing.assert_allclose(f, p, rtol=1e-4, atol=1e-5 * max(np.abs(p).max(), 1e-3),
                                       err_msg=f"{path}: {i}")
    assert np.array_equal(run("fused")[0], block(x).numpy())  # what execute runs on CPU
    if drop_path:  # the masks did drop something (else this case would test nothing new)
        block.drop_path.p = 0.0
        assert not np.allclose(run("fused")[0], fused[0])


def test_slide_merge_averages_overlapping_windows_with_gradients():
    from jseg.ops.slide_merge import slide_merge
    from jseg.models.segmentor import slide_windows
    boxes = slide_windows(7, 11, (5, 6), (3, 4))  # overlaps in both directions
    rng = np.random.default_rng(5)
    values = [rng.standard_normal((2, 3, y2 - y1, x2 - x1)).astype("float32")
              for y1, y2, x1, x2 in boxes]
    total, count = np.zeros((2, 3, 7, 11), "float32"), np.zeros((7, 11), "float32")
    for v, (y1, y2, x1, x2) in zip(values, boxes):
        total[:, :, y1:y2, x1:x2] += v
        count[y1:y2, x1:x2] += 1
    windows = [jt.array(v) for v in values]
    merged = slide_merge(windows, boxes, (7, 11))
    np.testing.assert_allclose(merged.numpy(), total / count, rtol=1e-6)
    upstream = rng.standard_normal((2, 3, 7, 11)).astype("float32")
    grads = jt.grad((merged * jt.array(upstream)).sum(), windows)
    for g, (y1, y2, x1, x2) in zip(grads, boxes):
        np.testing.assert_allclose(g.numpy(), (upstream / count)[:, :, y1:y2, x1:x2], rtol=1e-6)


@pytest.mark.parametrize("size, align_corners", [((29, 41), False), ((5, 4), False),
                                                 ((20, 33), True)])
def test_resize_kernel_matches_jittor_interpolate(size, align_corners):
    from jseg.ops.resize import bilinear_resize
    x = jt.randn(2, 3, 13, 17)
    upstream = jt.randn(2, 3, *size)
    results = []
    for fn in (lambda v: nn.interpolate(v, size=size, mode="bilinear",
                                        align_corners=align_corners),
               lambda v: bilinear_resize(v, size, align_corners)):
        y = fn(x)
        results.append([y.numpy(), jt.grad((y * upstream).sum(), x).numpy()])
    for name, e, g in zip(["output", "grad x"], *results):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5, err_msg=name)


def test_cross_entropy_and_accuracy_kernels_match_numpy():
    from jseg.models.losses import CrossEntropyLoss
    rng = np.random.default_rng(6)
    logits = (rng.standard_normal((2, 7, 5, 6)) * 4).astype("float32")
    label = rng.integers(0, 7, (2, 5, 6)).astype("uint8")
    label[0, 0] = 255  # ignored
    label[1, 0, 0] = 9  # outside the classes: counted in the mean, adds no loss
    weight = np.linspace(0.5, 2, 7).astype("float32")
    x = jt.array(logits)
    criterion = ops.accelerate(CrossEntropyLoss(class_weight=weight.tolist()))
    loss = criterion(x, jt.array(label))
    grad = jt.grad(loss * 2, x).numpy()

    shifted = logits - logits.max(1, keepdims=True)
    prob = np.exp(shifted) / np.exp(shifted).sum(1, keepdims=True)
    valid = label < 7
    y = np.where(valid, label, 0)
    w = np.where(valid, weight[y], 0)
    picked = np.take_along_axis(np.log(prob), y[:, None].astype(int), 1)[:, 0]
    expected = -(w * picked).sum() / label.size
    onehot = np.eye(7, dtype="float32")[y].transpose(0, 3, 1, 2)
    expected_grad = 2 * w[:, None] * (prob - onehot) / label.size
    assert abs(loss.item() - expected) < 1e-5 * abs(expected)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
    labelled = label != 255
    expected_acc = ((logits.argmax(1) == label) & labelled).sum() / labelled.sum() * 100
    assert abs(criterion.accuracy(x, jt.array(label)).item() - expected_acc) < 1e-3


@pytest.mark.parametrize("out_size, align_corners", [((37, 45), False), ((37, 45), True),
                                                     ((5, 6), False)])
def test_resized_loss_kernel_equals_resize_then_loss(out_size, align_corners):
    """The decode head's loss without the full-size logits (CrossEntropyLoss.resized on
    the kernel) equals resize + cross-entropy + accuracy: loss, accuracy and the gradient
    of the small logits; upscaling by a non-integer factor (several output rows per
    source row, both parities of the scatter), and the same size."""
    from jseg.models.layers import resize
    from jseg.models.losses import CrossEntropyLoss
    rng = np.random.default_rng(7)
    logits = jt.array((rng.standard_normal((2, 7, 5, 6)) * 4).astype("float32"))
    label = rng.integers(0, 7, (2, *out_size)).astype("uint8")
    label[0, 0] = 255  # ignored
    label[1, 0, :3] = 9  # outside the classes: no loss
    label = jt.array(label)
    criterion = ops.accelerate(CrossEntropyLoss(loss_weight=0.7,
                                                class_weight=np.linspace(0.5, 2, 7).tolist()))
    loss, acc = criterion.resized(logits, label, align_corners)  # the kernel first
    got = [loss.item(), acc.item(), jt.grad(loss * 3, logits).numpy()]
    with ops.disabled():
        big = resize(logits, out_size, align_corners)
        loss_ref = criterion(big, label)
        acc_ref = criterion.resized(logits, label, align_corners)[1]
        want = [loss_ref.item(), acc_ref.item(), jt.grad(loss_ref * 3, logits).numpy()]
    assert abs(got[0] - want[0]) <= 1e-5 * abs(want[0]), (got[0], want[0])
    assert abs(got[1] - want[1]) < 1e-4, (got[1], want[1])
    np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-5 * np.abs(want[2]).max())
    broken = logits.numpy()
    broken[1, 2, 3, 4] = np.inf  # a diverged run shows as a NaN loss
    assert np.isnan(criterion.resized(jt.array(broken), label, align_corners)[0].item())


def test_channel_layer_norm_matches_layer_norm_on_channels_last():
    """MSCAN's stage-end LayerNorm without the permutes: output and every gradient equal
    Jittor's LayerNorm on the channels-last view (pixels 13 x 11: a full block of 64 and
    a partial one, batch 2)."""
    from jseg.ops import norm as norm_op
    jt.set_seed(4)
    layer = nn.LayerNorm(6)
    layer.weight.assign(jt.randn(6))
    layer.bias.assign(jt.randn(6))
    x = jt.randn(2, 6, 13, 11) * 3 + 1
    upstream = jt.randn(2, 6, 13, 11)
    params = [x, layer.weight, layer.bias]
    assert norm_op.channel_layer_norm_applies(layer, x)

    def run(y):
        return [t.numpy() for t in (y, *jt.grad((y * upstream).sum(), params))]

    got = run(norm_op.channel_layer_norm(x, layer.weight, layer.bias, layer.eps))
    want = run(layer(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
    for name, g, w in zip(["output", "grad x", "grad weight", "grad bias"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=name)


def test_one_switch_turns_every_kernel_off():
    """ops.enabled() decides for every family; disabled() and JSEG_CPU_KERNELS=0 switch all off."""
    from jseg.ops import elementwise, fused_block, loss, matmul, norm, resize, slide_merge
    from jseg.models.layers import ChannelLayerNorm
    from jseg.models.mscan import MSCABlock
    x = jt.randn(1, 4, 5, 5)
    label = jt.zeros((1, 5, 5), "int32")
    conv, block = DepthwiseConv2d(4, 3, padding=1), MSCABlock(4, mlp_ratio=2)

    def applying():
        return [depthwise.applies(conv, x), resize.applies(x), elementwise.applies(x),
                norm.applies(x), matmul.applies(x), loss.applies(x, label),
                slide_merge.applies([x]), fused_block.applies(block_parts(block), x),
                norm.channel_layer_norm_applies(ChannelLayerNorm(4), x),
                loss.resized_applies(x, label)]

    assert ops.enabled(x) and all(applying()), applying()
    with ops.disabled():
        assert not ops.enabled(x) and not any(applying()), applying()
    assert all(applying())
    assert not ops.enabled(x.float64())  # float32 only
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import jseg, jittor as jt; from jseg import ops; "
                          "print(ops.enabled(jt.zeros(2)))"], capture_output=True, text=True,
                         env=dict(__import__("os").environ, JSEG_CPU_KERNELS="0"), timeout=300)
    assert out.stdout.strip() == "False", (out.stdout, out.stderr[-1000:])


def test_kernels_off_the_network_equals_the_kernels():
    """A tiny SegNeXt in eval and a training step: logits and loss with jseg.ops off (Jittor's
    own ops, as on CUDA) equal those with the kernels on."""
    from jseg.config import load_config
    from jseg.models import build_model
    from conftest import DEMO_CONFIG, TINY_OVERRIDES
    cfg = load_config(DEMO_CONFIG, TINY_OVERRIDES + ["model.decode_head.ham.rand_init=false",
                                                    "model.decode_head.dropout_ratio=0.0",
                                                    "model.backbone.drop_path_rate=0.0"])
    jt.set_global_seed(7)
    model = build_model(cfg.model)
    x = jt.randn(2, 3, 48, 64)
    label = jt.array(np.random.default_rng(7).integers(0, 6, (2, 48, 64)).astype("int32"))

    def logits():
        model.eval()
        with jt.no_grad():
            return model(x).numpy()

    def training_step():  # batch statistics; updates the running ones, so after the evals
        model.train()
        loss = model(x, label)["loss_ce"]
        return loss.item(), jt.grad(loss, model.decode_head.conv_seg.weight).numpy()

    on, off = [logits()], []
    with ops.disabled():
        off.append(logits())
        off.extend(training_step())
    on.extend(training_step())
    np.testing.assert_allclose(on[0], off[0], rtol=1e-4, atol=1e-4 * np.abs(off[0]).max())
    assert abs(on[1] - off[1]) <= 1e-5 * abs(off[1]), (on[1], off[1])
    np.testing.assert_allclose(on[2], off[2], rtol=1e-3, atol=1e-3 * np.abs(off[2]).max())


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False),
                                              (True, True)])
@pytest.mark.parametrize("which", ["scipy-openblas32", "numpy"])
def test_openblas_sgemm_equals_a_float64_matmul(which, trans_a, trans_b, monkeypatch):
    """Each OpenBLAS jseg can call (32-bit and 64-bit integers) gives the float64 product."""
    from jseg.ops import sgemm
    from jseg.platform import openblas
    blas = {"scipy-openblas32": openblas._scipy_openblas32,
            "numpy": openblas._numpy_bundled}[which]()
    if blas is None:
        pytest.skip(f"no {which} OpenBLAS here; jseg uses another or Jittor's matmul")
    monkeypatch.setattr(sgemm, "library", lambda: blas)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((37, 53)).astype(np.float32)
    b = rng.standard_normal((53, 29)).astype(np.float32)
    out = sgemm.matmul(jt.array(a.T.copy() if trans_a else a),
                       jt.array(b.T.copy() if trans_b else b), trans_a, trans_b).numpy()
    expected = a.astype(np.float64) @ b.astype(np.float64)
    assert out.shape == (37, 29) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("use_openblas", [True, False])
def test_matmul_family_gradients_equal_jittors(use_openblas, monkeypatch):
    """batched_matmul (both layouts) and the 1x1 conv's matmul give Jittor's values and
    gradients, on OpenBLAS and on the fallback (Jittor's matmul)."""
    from jseg.ops import matmul, sgemm
    if use_openblas and not sgemm.available():
        pytest.skip("this numpy has no bundled OpenBLAS")
    monkeypatch.setattr(sgemm, "available", lambda: use_openblas)
    jt.set_seed(3)
    a, b, bt = jt.randn(2, 5, 7), jt.randn(2, 7, 6), jt.randn(2, 6, 7)
    up = jt.randn(2, 5, 6)
    for fast, slow, inputs in [
            (matmul.batched_matmul(a, b), nn.bmm(a, b), [a, b]),
            (matmul.batched_matmul(a, bt, transpose_b=True), nn.bmm_transpose(a, bt), [a, bt])]:
        got = [fast.numpy()] + [g.numpy() for g in jt.grad((fast * up).sum(), inputs)]
        want = [slow.numpy()] + [g.numpy() for g in jt.grad((slow * up).sum(), inputs)]
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5 * np.abs(w).max())
    w, x = jt.randn(4, 7), jt.randn(2, 7, 9)
    up = jt.randn(2, 4, 9)
    fast = matmul.batched_weight_matmul(w, x)
    slow = jt.stack([nn.matmul(w, x[i]) for i in range(2)])
    got = [fast.numpy()] + [g.numpy() for g in jt.grad((fast * up).sum(), [w, x])]
    want = [slow.numpy()] + [g.numpy() for g in jt.grad((slow * up).sum(), [w, x])]
    for g, ww in zip(got, want):
        np.testing.assert_allclose(g, ww, rtol=1e-5, atol=1e-5 * np.abs(ww).max())
