"""EncoderDecoder and the builder: losses, training gradients, whole / slide / TTA inference."""
import copy
import math
import re

import jseg  # noqa: F401  (configures Jittor before it is imported)
import jittor as jt
import numpy as np
import pytest
from jittor import nn

from conftest import TOTAL_PARAMS, shipped_model
from jseg.models import EncoderDecoder, build_model, slide_windows
from jseg.models.losses import accuracy, cross_entropy

# One width in every stage: Jittor's CPU depthwise-conv kernels are compiled per channel
# count, so the stages share kernels (same tiny model as test_mscan.py / test_ham_head.py).
TINY_CFG = {
    "backbone": {"type": "MSCAN", "in_channels": 3, "embed_dims": [16, 16, 16, 16],
                 "depths": [1, 1, 1, 1], "mlp_ratios": [2, 2, 2, 2], "drop_rate": 0.0,
                 "drop_path_rate": 0.0},
    "decode_head": {"type": "LightHamHead", "in_channels": [16, 16, 16], "in_index": [1, 2, 3],
                    "channels": 16, "ham_channels": 16, "num_classes": 5, "dropout_ratio": 0.1,
                    "norm_groups": 4, "align_corners": False, "ignore_index": 255,
                    "loss_weight": 1.0, "class_weight": None,
                    "ham": {"md_s": 1, "md_r": 4, "train_steps": 6, "eval_steps": 7,
                            "inv_t": 100, "rand_init": True, "grad_mode": "full"}},
    "test_cfg": {"mode": "whole", "crop_size": None, "stride": None,
                 "tta_ratios": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75], "tta_flip": True},
}

STATE_DICT_ENTRIES = {"t": 519, "s": 411, "b": 807, "l": 1419}


def tiny_cfg(**test_cfg):
    cfg = copy.deepcopy(TINY_CFG)
    cfg["test_cfg"].update(test_cfg)
    return cfg


def trainable(model):
    """(name, Var) of parameters that an optimizer updates (BN running stats excluded)."""
    return [(k, v) for k, v in model.named_parameters() if not v.is_stop_grad()]


def pin_bases(model, seed=0):
    """Fixed NMF bases for every forward, whatever the batch size."""
    rng = np.random.RandomState(seed)
    cache = {}

    def build(B, S, D, R):
        if D not in cache:
            b = rng.rand(S, D, R)
            cache[D] = (b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)
        return jt.array(np.tile(cache[D], (B, 1, 1)))

    model.decode_head.hamburger.ham.bases_fn = build


def image(batch=2, height=64, width=64, seed=0):
    return jt.array(np.random.RandomState(seed).randn(batch, 3, height, width).astype(np.float32))


# ---------------------------------------------------------------------------
# builder

@pytest.mark.parametrize("variant", ["t", "s", "b", "l"])
def test_full_models_parameters_and_keys(variant):
    # whole models for two class counts (the other counts: tests/models/test_ham_head.py, head only)
    for num_classes in (150, 19):
        want = TOTAL_PARAMS[variant][num_classes]
        model = build_model(shipped_model(variant, num_classes))
        state = model.state_dict()
        got = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean",
                                                                         "running_var")))
        assert got == want, f"SegNeXt-{variant.upper()} {num_classes} classes: {got} != {want}"
        assert len(state) == STATE_DICT_ENTRIES[variant], \
            f"{variant}: {len(state)} state-dict entries != {STATE_DICT_ENTRIES[variant]}"
    for key in ("backbone.patch_embed1.proj.0.weight", "backbone.block2.1.attn.proj_1.weight",
                "backbone.block1.0.attn.spatial_gating_unit.conv1_2.weight",
                "backbone.block1.0.mlp.dwconv.weight", "backbone.norm4.weight",
                "decode_head.squeeze.conv.weight", "decode_head.hamburger.ham_in.conv.bias",
                "decode_head.align.gn.weight", "decode_head.conv_seg.weight"):
        assert key in state, f"missing key {key}"


def test_builder_errors():
    cfg = tiny_cfg()
    cfg["backbone"]["type"] = "ResNet"
    with pytest.raises(ValueError, match=r"unknown model.backbone type 'ResNet'.*MSCAN"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg["decode_head"]["type"] = "UPerHead"
    with pytest.raises(ValueError, match="LightHamHead"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg["backbone"]["embed_dim"] = 8
    with pytest.raises(ValueError, match="embed_dim"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg["decode_head"]["ham"]["MD_R"] = 8
    with pytest.raises(ValueError, match="MD_R"):
        build_model(cfg)
    with pytest.raises(ValueError, match="crop_size"):
        build_model(tiny_cfg(mode="slide"))
    with pytest.raises(ValueError, match="test_mode"):
        build_model(tiny_cfg(mode="sliding"))


def test_builder_passes_settings():
    cfg = tiny_cfg(mode="slide", crop_size=[32, 48], stride=[16, 24], tta_ratios=[1.0])
    cfg["decode_head"]["ham"]["grad_mode"] = "one_step"
    cfg["decode_head"]["class_weight"] = [1.0, 2.0, 1.0, 1.0, 0.5]
    cfg["backbone"]["pretrained"] = None  # read by the trainer, skipped by the builder
    model = build_model(cfg)
    assert isinstance(model, EncoderDecoder)
    assert (model.test_mode, model.crop_size, model.stride) == ("slide", (32, 48), (16, 24))
    assert model.tta_ratios == (1.0,)
    assert model.decode_head.hamburger.ham.grad_mode == "one_step"
    assert model.decode_head.hamburger.ham.R == 4
    assert model.decode_head.loss_decode.class_weight == (1.0, 2.0, 1.0, 1.0, 0.5)


# ---------------------------------------------------------------------------
# losses

def test_cross_entropy_by_hand():
    logits = np.array([[[[2.0, 0.5], [0.1, -1.0]],
                        [[0.0, 1.5], [0.3, 2.0]],
                        [[-1.0, 0.2], [3.0, 0.0]]]], dtype=np.float32)  # (1, 3, 2, 2)
    label = np.array([[[0, 2], [255, 1]]], dtype=np.int32)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    nll = {(0, 0): -logp[0, 0, 0, 0], (0, 1): -logp[0, 2, 0, 1], (1, 1): -logp[0, 1, 1, 1]}

    got = cross_entropy(jt.array(logits), jt.array(label)).item()
    want = sum(nll.values()) / 4  # the ignored pixel counts in the denominator
    assert abs(got - want) < 1e-6, f"cross entropy {got} != {want}"

    weights = (0.5, 2.0, 3.0)
    got_w = cross_entropy(jt.array(logits), jt.array(label), class_weight=weights).item()
    want_w = (0.5 * nll[(0, 0)] + 3.0 * nll[(0, 1)] + 2.0 * nll[(1, 1)]) / 4
    assert abs(got_w - want_w) < 1e-6, f"weighted cross entropy {got_w} != {want_w}"

    # argmax: (0,0) -> 0 correct, (0,1) -> 1 wrong (label 2), (1,1) -> 1 correct
    acc = accuracy(jt.array(logits), jt.array(label)).item()
    assert abs(acc - 200 / 3) < 1e-3, f"acc_seg {acc} != 66.667"


def test_head_loss_resizes_and_weights():
    model = build_model(tiny_cfg())
    head = model.decode_head
    head.loss_decode.loss_weight = 0.4
    logits = jt.array(np.random.RandomState(0).randn(1, 5, 4, 4).astype(np.float32))
    label = np.random.RandomState(1).randint(0, 5, (1, 8, 8)).astype(np.int32)
    label[0, :2] = 255
    losses = head.loss(logits, jt.array(label[:, None]))  # (B, 1, H, W) accepted too
    up = nn.interpolate(logits, size=(8, 8), mode="bilinear", align_corners=False)
    want = 0.4 * cross_entropy(up, jt.array(label)).item()
    assert set(losses) == {"loss_ce", "acc_seg"}, set(losses)
    assert abs(losses["loss_ce"].item() - want) < 1e-6, f"{losses['loss_ce'].item()} != {want}"


# ---------------------------------------------------------------------------
# training

def test_training_step_reaches_every_parameter():
    jt.set_global_seed(0)
    model = build_model(tiny_cfg())
    model.train()
    label = np.random.RandomState(3).randint(0, 5, (2, 64, 64)).astype(np.int32)
    label[:, :8] = 255
    losses = model(image(), jt.array(label))
    assert set(losses) == {"loss_ce", "acc_seg"}, set(losses)
    loss, acc = losses["loss_ce"].item(), losses["acc_seg"].item()
    # near-uniform initial logits: log(5) per labelled pixel, averaged over ALL pixels
    want = (label != 255).mean() * math.log(5)
    assert abs(loss - want) < 0.05, f"initial loss {loss} far from {want:.3f}"
    assert 0 <= acc <= 100, acc
    params = trainable(model)
    # 195 state-dict entries minus the running mean / var of 13 BatchNorms
    assert len(params) == 195 - 26, len(params)
    grads = jt.grad(losses["loss_ce"], [p for _, p in params])
    jt.sync(grads)  # one execution of the whole backward graph (fetching one by one is slower)
    dead = [name for (name, _), g in zip(params, grads) if not np.any(g.numpy() != 0)]
    assert not dead, f"parameters without gradient: {dead}"


def test_training_requires_label_and_eval_returns_logits():
    model = build_model(tiny_cfg())
    with pytest.raises(ValueError, match="label"):
        model(image())
    model.eval()
    jt.set_global_seed(0)
    out = model(image(batch=1, height=95, width=27))
    assert tuple(out.shape) == (1, 5, 95, 27), f"logits shape {tuple(out.shape)} != (1, 5, 95, 27)"
    assert np.isfinite(out.numpy()).all()


def test_eval_is_seeded_and_pinnable():
    model = build_model(tiny_cfg()).eval()
    x = image()
    jt.set_global_seed(11)
    a = model(x).numpy()
    b = model(x).numpy()
    jt.set_global_seed(11)
    c = model(x).numpy()
    assert np.abs(a - b).max() > 0, "fresh NMF bases should change the logits"
    assert np.array_equal(a, c), f"same seed, max diff {np.abs(a - c).max()}"
    pin_bases(model)
    d, e = model(x).numpy(), model(x).numpy()
    assert np.array_equal(d, e), f"pinned bases, max diff {np.abs(d - e).max()}"


# ---------------------------------------------------------------------------
# inference modes

def test_slide_windows_follow_mmseg():
    got = slide_windows(1024, 2048, (1024, 1024), (768, 768))
    want = [(0, 1024, 0, 1024), (0, 1024, 768, 1792), (0, 1024, 1024, 2048)]
    assert got == want, f"{got} != {want}"
    # smaller than the crop: one window, the whole image
    assert slide_windows(300, 200, (512, 512), (341, 341)) == [(0, 300, 0, 200)]
    # 2 x 3 grid: the last row and column are pulled back to end at the border
    got = slide_windows(520, 1000, (480, 480), (320, 320))
    want = [(0, 480, 0, 480), (0, 480, 320, 800), (0, 480, 520, 1000),
            (40, 520, 0, 480), (40, 520, 320, 800), (40, 520, 520, 1000)]
    assert got == want, f"{got} != {want}"


class _StubHead(nn.Module):
    num_classes = 3
    align_corners = False


@pytest.mark.parametrize("crop_size,stride", [((6, 6), (8, 4)), ((6, 6), (4, 7)),
                                              ((6, 6), (0, 4)), ((0, 6), (4, 4)),
                                              ((6, 6), (-2, 4)), ((6, 6, 6), (4, 4))])
def test_slide_settings_are_checked(crop_size, stride):
    # a stride above the crop leaves pixels in no window: their average would be 0 / 0 = NaN
    with pytest.raises(ValueError, match=r"0 < stride <= crop_size.*got crop_size "
                                         + re.escape(f"{crop_size} and stride {stride}")):
        EncoderDecoder(nn.Identity(), _StubHead(), test_mode="slide", crop_size=crop_size,
                       stride=stride)
    model = EncoderDecoder(nn.Identity(), _StubHead(), test_mode="slide", crop_size=(6, 6),
                           stride=(6, 6))  # stride == crop: windows touch, fine
    with pytest.raises(ValueError, match="0 < stride <= crop_size"):
        model.slide_inference(jt.zeros((1, 3, 10, 10)), crop_size=crop_size, stride=stride)
    if len(crop_size) == 2:
        with pytest.raises(AssertionError, match="0 < stride <= crop_size per dimension"):
            slide_windows(10, 10, crop_size, stride)


def test_slide_accumulates_and_averages():
    model = EncoderDecoder(nn.Identity(), _StubHead(), test_mode="slide", crop_size=(6, 6),
                           stride=(4, 4))
    x = np.random.RandomState(0).rand(1, 3, 10, 13).astype(np.float32)
    windows = slide_windows(10, 13, (6, 6), (4, 4))
    assert len(windows) == 2 * 3, windows

    model.encode_decode = lambda img: img  # windows agree: the average is the image itself
    got = model.inference(jt.array(x)).numpy()
    assert np.allclose(got, x, atol=1e-6), f"max diff {np.abs(got - x).max()}"

    calls = []

    def constant_per_window(img):  # window k predicts k everywhere
        calls.append(tuple(img.shape))
        return jt.full((1, 3, img.shape[2], img.shape[3]), float(len(calls) - 1))

    model.encode_decode = constant_per_window
    got = model.inference(jt.array(x)).numpy()
    total, count = np.zeros((10, 13)), np.zeros((10, 13))
    for k, (y1, y2, x1, x2) in enumerate(windows):
        total[y1:y2, x1:x2] += k
        count[y1:y2, x1:x2] += 1
    assert calls == [(1, 3, 6, 6)] * 6, calls
    assert np.allclose(got[0, 0], total / count, atol=1e-6), \
        f"max diff {np.abs(got[0, 0] - total / count).max()}"


def test_slide_equals_whole_when_one_window_covers_the_image():
    model = build_model(tiny_cfg(mode="slide", crop_size=[64, 64], stride=[48, 48])).eval()
    pin_bases(model)
    x = image()
    whole = model.whole_inference(x).numpy()
    slide = model.inference(x).numpy()
    err = np.abs(whole - slide).max()
    assert err < 1e-6, f"slide vs whole max diff {err}"


def test_aug_test_sizes_flip_and_averaging():
    model = EncoderDecoder(nn.Identity(), _StubHead(), tta_ratios=(0.5, 1.75), tta_flip=True)
    sizes = []

    def fake_inference(img):  # "logits" = the (resized, maybe flipped) image itself
        sizes.append(tuple(img.shape[2:]))
        return img

    model.inference = fake_inference
    x = np.random.RandomState(0).randn(1, 3, 95, 27).astype(np.float32)
    probs = model.aug_test(jt.array(x)).numpy()
    # int(H * r + 0.5): 95 * 0.5 = 47.5 -> 48, 27 * 0.5 = 13.5 -> 14, 95 * 1.75 -> 166, 27 * 1.75 -> 47
    assert sizes == [(48, 14), (48, 14), (166, 47), (166, 47)], sizes
    assert probs.shape == (1, 3, 95, 27), probs.shape
    assert np.allclose(probs.sum(1), 1, atol=1e-5), "averaged probabilities must sum to 1"

    # ratio 1 with flip: the flip is undone, so both views give softmax(x)
    probs = model.aug_test(jt.array(x), ratios=[1.0], flip=True).numpy()
    want = np.exp(x) / np.exp(x).sum(1, keepdims=True)
    assert np.allclose(probs, want, atol=1e-6), f"max diff {np.abs(probs - want).max()}"


def test_aug_test_on_the_network():
    model = build_model(tiny_cfg()).eval()
    pin_bases(model)
    x = image()
    probs = model.aug_test(x, ratios=[1.0], flip=False).numpy()
    want = nn.softmax(model.inference(x), dim=1).numpy()
    assert np.allclose(probs, want, atol=1e-6), f"max diff {np.abs(probs - want).max()}"
