"""NMF2D, Hamburger and LightHamHead: math against numpy, randomness, gradients, keys, init."""
import math

import jseg  # noqa: F401  (configures Jittor before it is imported)
import jittor as jt
import numpy as np
import pytest

from conftest import TOTAL_PARAMS, shipped_model
from jseg.models.ham_head import LightHamHead, NMF2D

# whole-model parameters (conftest) minus the backbone = head parameters per class count
BACKBONE_PARAMS = {"t": 3_903_584, "s": 13_450_176, "b": 26_277_824, "l": 44_636_864}

# the head of the tiny segmentor in test_segmentor.py (shared compiled kernels)
TINY_HEAD = dict(in_channels=(16, 16, 16), channels=16, ham_channels=16, num_classes=5,
                 norm_groups=4)

# float32 Jittor vs float64 numpy over 7-8 multiplicative updates
RTOL, ATOL = 1e-4, 1e-5


# ---------------------------------------------------------------------------
# numpy re-implementation of the algorithm (mmseg 1.x's NMF2D, after HamNet, arXiv 2109.04553)

def numpy_nmf(x, bases, steps, eps=1e-6):
    """x (B, C, H, W) >= 0, bases (B*S, D, R) -> reconstruction (B, C, H, W) and final factors."""
    B, C, H, W = x.shape
    S = bases.shape[0] // B
    X = x.reshape(B * S, C // S, H * W).astype(np.float64)
    Bs = bases.astype(np.float64)
    logits = np.einsum("gdn,gdr->gnr", X, Bs)  # inv_t = 1
    coef = np.exp(logits - logits.max(-1, keepdims=True))
    coef /= coef.sum(-1, keepdims=True)

    def update_coef(Bs, coef):
        num = np.einsum("gdn,gdr->gnr", X, Bs)
        den = coef @ (Bs.transpose(0, 2, 1) @ Bs)
        return coef * num / (den + eps)

    for _ in range(steps):
        coef = update_coef(Bs, coef)
        num = X @ coef
        den = Bs @ (coef.transpose(0, 2, 1) @ coef)
        Bs = Bs * num / (den + eps)
    coef_final = update_coef(Bs, coef)
    out = (Bs @ coef_final.transpose(0, 2, 1)).reshape(B, C, H, W)
    return out, Bs, coef, coef_final


def random_bases(rng, groups, D, R):
    b = rng.rand(groups, D, R)
    return (b / np.linalg.norm(b, axis=1, keepdims=True)).astype(np.float32)


def pinned(nmf, bases):
    """Make `nmf` use fixed initial bases; returns a list counting the calls."""
    calls = []

    def build(B, S, D, R):
        calls.append((B, S, D, R))
        assert bases.shape == (B * S, D, R), f"pinned bases {bases.shape} vs {(B * S, D, R)}"
        return jt.array(bases)

    nmf.bases_fn = build
    return calls


@pytest.fixture(scope="module")
def nmf_input():
    rng = np.random.RandomState(0)
    # the NMF input of the tiny segmentor at 64x64: (2, 16, 8, 8), non-negative after ReLU
    x = np.maximum(rng.randn(2, 16, 8, 8), 0).astype(np.float32)
    return x, rng


# ---------------------------------------------------------------------------
# NMF2D

@pytest.mark.parametrize("md_s", [1, 2])
@pytest.mark.parametrize("training", [True, False])
def test_nmf_matches_numpy(nmf_input, md_s, training):
    x, rng = nmf_input
    R = 4
    bases = random_bases(np.random.RandomState(md_s), 2 * md_s, 16 // md_s, R)
    nmf = NMF2D(md_s=md_s, md_r=R, train_steps=6, eval_steps=7, inv_t=100)
    nmf.train() if training else nmf.eval()
    calls = pinned(nmf, bases)
    got = nmf(jt.array(x)).numpy()
    want = numpy_nmf(x, bases, steps=6 if training else 7)[0]
    err = np.abs(got - want).max()
    assert calls == [(2, md_s, 16 // md_s, R)], f"bases_fn calls {calls}"
    assert np.allclose(got, want, rtol=RTOL, atol=ATOL), \
        f"S={md_s} training={training}: max |jittor - numpy| = {err:.3g} (rtol {RTOL}, atol {ATOL})"
    # train (6 steps) and eval (7 steps) really differ
    other = numpy_nmf(x, bases, steps=7 if training else 6)[0]
    assert np.abs(other - want).max() > 1e-4, "6 and 7 steps gave the same result"


def test_inv_t_is_forced_to_one():
    nmf = NMF2D(inv_t=100)
    assert nmf.inv_t == 1, f"inv_t {nmf.inv_t} != 1"


def test_bases_random_seeded_and_normalised(nmf_input):
    x, _ = nmf_input
    nmf = NMF2D(md_s=2, md_r=4).eval()
    bases = nmf.initial_bases(3, 2, 8, 4).numpy()
    assert bases.shape == (6, 8, 4), bases.shape
    norms = np.linalg.norm(bases, axis=1)
    assert np.allclose(norms, 1, atol=1e-6), f"column norms {norms.ravel()[:4]} != 1"
    assert bases.min() >= 0, f"negative basis entry {bases.min()}"

    jt.set_global_seed(5)
    a = nmf(jt.array(x)).numpy()
    b = nmf(jt.array(x)).numpy()
    jt.set_global_seed(5)
    c = nmf(jt.array(x)).numpy()
    assert np.abs(a - b).max() > 1e-6, "two unseeded eval passes gave the same bases"
    assert np.array_equal(a, c), f"same seed, different output: {np.abs(a - c).max()}"


def test_fixed_bases_when_rand_init_false(nmf_input):
    x, _ = nmf_input
    head = LightHamHead(**TINY_HEAD, ham_kwargs=dict(md_r=4, rand_init=False)).eval()
    nmf = head.hamburger.ham
    # the Hamburger draws the fixed basis at construction: in the state dict from the start
    state = head.state_dict()
    assert "hamburger.ham.bases" in state, "fixed bases missing from the state dict"
    assert tuple(state["hamburger.ham.bases"].shape) == (1, 16, 4), state["hamburger.ham.bases"].shape
    assert nmf.bases.is_stop_grad(), "the fixed bases must not be trained"
    before = nmf.bases.numpy().copy()
    out1 = nmf(jt.array(x)).numpy()
    out2 = nmf(jt.array(x)).numpy()
    assert np.array_equal(out1, out2), "rand_init=False output changed between passes"
    assert np.array_equal(before, nmf.bases.numpy()), "the fixed bases changed in a forward"
    want = numpy_nmf(x, np.repeat(before, 2, axis=0), steps=7)[0]
    assert np.allclose(out1, want, rtol=RTOL, atol=ATOL), \
        f"max |jittor - numpy| = {np.abs(out1 - want).max():.3g}"

    bare = NMF2D(md_r=4, rand_init=False).eval()  # without a Hamburger: drawn at first forward
    assert "bases" not in bare.state_dict()
    bare(jt.array(x)).sync()
    assert tuple(bare.state_dict()["bases"].shape) == (1, 16, 4)


def test_grad_modes_against_numpy(nmf_input):
    """one_step: exact closed form with constant factors; full: finite differences."""
    x, _ = nmf_input
    x = x[:1]
    R = 4
    bases = random_bases(np.random.RandomState(7), 1, 16, R)
    weight = np.random.RandomState(8).randn(*x.shape).astype(np.float32)

    def grad_of(mode):
        nmf = NMF2D(md_r=R, grad_mode=mode).eval()
        pinned(nmf, bases)
        xv = jt.array(x)
        loss = (nmf(xv) * jt.array(weight)).sum()
        return jt.grad(loss, xv).numpy()

    g_one, g_full = grad_of("one_step"), grad_of("full")

    # one_step: out = Bs coef'^T, coef' = (coef / den) * (X^T Bs) with Bs, coef, den constant
    _, Bs, coef, _ = numpy_nmf(x, bases, steps=7)
    Bs, coef = Bs[0], coef[0]
    Wm = weight.reshape(16, 64).astype(np.float64)
    den = coef @ (Bs.T @ Bs) + 1e-6
    d_coef_final = Wm.T @ Bs                       # (N, R)
    want_one = Bs @ (d_coef_final * coef / den).T  # (D, N)
    err = np.abs(g_one.reshape(16, 64) - want_one).max()
    assert err < 1e-4 * np.abs(want_one).max(), f"one_step grad error {err:.3g}"

    # full: central differences of the float64 reference at a few entries
    def f(xx):
        return float((numpy_nmf(xx, bases, steps=7)[0] * weight).sum())

    h = 1e-5
    for idx in [(0, 0, 0, 0), (0, 3, 1, 2), (0, 15, 3, 4), (0, 7, 2, 1), (0, 9, 7, 6)]:
        if x[idx] < 10 * h:
            continue  # stay inside the non-negative domain
        xp, xm = x.astype(np.float64), x.astype(np.float64)
        xp[idx] += h
        xm[idx] -= h
        numeric = (f(xp) - f(xm)) / (2 * h)
        assert abs(g_full[idx] - numeric) < 1e-3 * max(1.0, abs(numeric)), \
            f"full grad at {idx}: jittor {g_full[idx]:.6f} vs numeric {numeric:.6f}"
    diff = np.abs(g_full - g_one).max()
    assert diff > 1e-3, f"full and one_step gradients agree ({diff:.3g}); full must add terms"


def test_grad_mode_validation():
    with pytest.raises(ValueError, match="grad_mode"):
        NMF2D(grad_mode="none")


# ---------------------------------------------------------------------------
# LightHamHead

def tiny_feats(seed=0, batch=2):
    rng = np.random.RandomState(seed)
    shapes = [(batch, 16, 16, 16), (batch, 16, 8, 8), (batch, 16, 4, 4), (batch, 16, 2, 2)]
    return [jt.array(rng.randn(*s).astype(np.float32)) for s in shapes]


def test_head_output_shape_and_input_resize():
    jt.set_global_seed(0)
    head = LightHamHead(**TINY_HEAD, ham_kwargs=dict(md_r=4)).eval()
    feats = tiny_feats()
    out = head(feats)
    assert tuple(out.shape) == (2, 5, 8, 8), f"logits shape {tuple(out.shape)} != (2, 5, 8, 8)"
    assert np.isfinite(out.numpy()).all()
    with jt.no_grad():  # lazy: odd stride-8 size, stages 3 and 4 resized to it
        odd = [jt.zeros((1, 16, 24, 7)), jt.zeros((1, 16, 12, 4)), jt.zeros((1, 16, 6, 2)),
               jt.zeros((1, 16, 3, 1))]
        assert tuple(head(odd).shape) == (1, 5, 12, 4)


def test_head_keys():
    head = LightHamHead(**TINY_HEAD)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    want = {
        "squeeze.conv.weight": (16, 48, 1, 1), "squeeze.gn.weight": (16,), "squeeze.gn.bias": (16,),
        "hamburger.ham_in.conv.weight": (16, 16, 1, 1), "hamburger.ham_in.conv.bias": (16,),
        "hamburger.ham_out.conv.weight": (16, 16, 1, 1), "hamburger.ham_out.gn.weight": (16,),
        "hamburger.ham_out.gn.bias": (16,), "align.conv.weight": (16, 16, 1, 1),
        "align.gn.weight": (16,), "align.gn.bias": (16,), "conv_seg.weight": (5, 16, 1, 1),
        "conv_seg.bias": (5,),
    }
    assert shapes == want, f"head keys/shapes {shapes} != {want}"


@pytest.mark.parametrize("variant", ["t", "s", "b", "l"])
def test_head_parameter_counts(variant):
    shipped = shipped_model(variant)["decode_head"]  # the full-width head of the variant
    for num_classes, total in TOTAL_PARAMS[variant].items():
        head = LightHamHead(in_channels=shipped["in_channels"], channels=shipped["channels"],
                            ham_channels=shipped["ham_channels"], num_classes=num_classes)
        got = sum(p.numel() for p in head.parameters())
        want = total - BACKBONE_PARAMS[variant]
        assert got == want, f"{variant} head, {num_classes} classes: {got} != {want}"


def test_head_init():
    jt.set_global_seed(3)
    head = LightHamHead(in_channels=(64, 160, 256), channels=256, ham_channels=256)
    w = head.conv_seg.weight.numpy()
    assert abs(w.std() / 0.01 - 1) < 0.05, f"conv_seg std {w.std():.5f} != 0.01"
    assert np.all(head.conv_seg.bias.numpy() == 0)
    for conv in (head.squeeze.conv, head.hamburger.ham_in.conv, head.hamburger.ham_out.conv,
                 head.align.conv):
        std = conv.weight.numpy().std()
        want = math.sqrt(2.0 / 256)  # kaiming normal, fan_out = out_channels * 1 * 1, relu gain
        assert abs(std / want - 1) < 0.05, f"ConvModule std {std:.5f} != {want:.5f}"
    assert np.all(head.hamburger.ham_in.conv.bias.numpy() == 0)
    assert head.squeeze.conv.bias is None and head.align.conv.bias is None
    for gn in (head.squeeze.gn, head.hamburger.ham_out.gn, head.align.gn):
        assert np.all(gn.weight.numpy() == 1) and np.all(gn.bias.numpy() == 0)


def test_dropout_is_channelwise_and_train_only():
    head = LightHamHead(**TINY_HEAD, dropout_ratio=0.5)
    x = jt.ones((2, 16, 8, 8))
    jt.set_global_seed(4)
    y = head.dropout(x).numpy()
    per_channel = y.reshape(2, 16, -1)
    assert np.all(per_channel.min(-1) == per_channel.max(-1)), "dropout is not channel-wise"
    assert set(np.unique(y)) <= {0.0, 2.0}, f"values {np.unique(y)} not in {{0, 1/(1-p)}}"
    assert 0 < (y == 0).mean() < 1, f"dropped share {(y == 0).mean()}"
    head.eval()
    assert np.array_equal(head.dropout(x).numpy(), x.numpy()), "dropout active in eval"


def test_one_step_changes_only_gradients_before_the_nmf():
    """Same forward; parameters after the NMF get the same gradient, those before differ."""
    feats = tiny_feats(seed=1)
    label = jt.array(np.random.RandomState(2).randint(0, 5, (2, 8, 8)).astype(np.int32))
    bases = random_bases(np.random.RandomState(3), 2, 16, 4)
    grads, outs = {}, {}
    for mode in ("full", "one_step"):
        jt.set_global_seed(0)
        head = LightHamHead(**TINY_HEAD, dropout_ratio=0.0,
                            ham_kwargs=dict(md_r=4, grad_mode=mode))
        pinned(head.hamburger.ham, bases)
        logits = head(feats)
        loss = head.loss(logits, label)["loss_ce"]
        names = [k for k, _ in head.named_parameters()]
        params = [p for _, p in head.named_parameters()]
        g = jt.grad(loss, params)
        jt.sync(g)
        grads[mode] = dict(zip(names, [v.numpy() for v in g]))
        outs[mode] = logits.numpy()
    assert np.allclose(outs["full"], outs["one_step"], atol=1e-6), "forward differs by grad_mode"
    for name in ("conv_seg.weight", "align.conv.weight", "hamburger.ham_out.conv.weight"):
        diff = np.abs(grads["full"][name] - grads["one_step"][name]).max()
        assert diff < 1e-6, f"{name}: gradients differ by {diff:.3g} after the NMF"
    for name in ("hamburger.ham_in.conv.weight", "squeeze.conv.weight"):
        diff = np.abs(grads["full"][name] - grads["one_step"][name]).max()
        scale = np.abs(grads["full"][name]).max()
        assert diff > 1e-3 * scale, f"{name}: gradients equal ({diff:.3g} vs {scale:.3g})"
