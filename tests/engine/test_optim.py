"""Parameter groups, the learning-rate schedule and gradient clipping against the
references' rules (mmengine's schedulers, torch's clip_grad_norm_)."""
import math
import os
import time

import numpy as np
import pytest

from jseg.config import load_config
from jseg.engine.optim import (LrSchedule, _multipliers, build_optimizer, clip_grad_norm,
                               grad_norm, initial_lrs, lr_at, param_groups, set_lr)

SCHED = {"warmup_iters": 1500, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0}
PARAMWISE = {"pos_block": {"lr_mult": 1.0, "decay_mult": 0.0},
             "norm": {"lr_mult": 1.0, "decay_mult": 0.0},
             "head": {"lr_mult": 10.0, "decay_mult": 1.0}}


# (warmup_iters, max_iters, warmup_ratio, power, min_lr)
MMENGINE_CASES = [(5, 30, 1e-6, 1.0, 0.0), (0, 20, 1e-6, 1.0, 0.0), (1, 10, 1e-6, 1.0, 0.0),
                  (2, 10, 0.1, 1.0, 0.0), (30, 400, 1e-6, 1.0, 0.0),
                  (1500, 4000, 1e-6, 1.0, 0.0), (30, 400, 1e-6, 0.9, 1e-6)]
MULTS = (1.0, 10.0, 0.5)


def mmengine_group_lrs(base, mults, warmup, max_iters, ratio, power, min_lr, poly_end=None):
    """Per-iteration group lrs from mmengine's real LinearLR + PolyLR on a torch optimizer,
    stepped as mmengine's runner does (built = global step 0; optimizer.step() then each
    scheduler's step() after every iteration). poly_end: PolyLR's end, if not max_iters
    (mmseg's configs fix it while the loop's max_iters may be overridden)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("mmengine")
    from mmengine.optim.scheduler import LinearLR, PolyLR
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": base * m} for m in mults]
    optimizer = torch.optim.SGD(groups, lr=base)
    schedulers = []
    if warmup > 0:
        schedulers.append(LinearLR(optimizer, start_factor=ratio, begin=0, end=warmup,
                                   by_epoch=False))
    schedulers.append(PolyLR(optimizer, power=power, eta_min=min_lr, begin=warmup,
                             end=poly_end or max_iters, by_epoch=False))
    lrs = []
    for _ in range(max_iters):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
    return lrs


@pytest.mark.parametrize("warmup,max_iters,ratio,power,min_lr", MMENGINE_CASES)
def test_schedule_equals_mmengine_bit_for_bit(warmup, max_iters, ratio, power, min_lr):
    base = 6e-5
    ref = mmengine_group_lrs(base, MULTS, warmup, max_iters, ratio, power, min_lr)
    sched = {"warmup_iters": warmup, "warmup_ratio": ratio, "power": power, "min_lr": min_lr}
    schedule = LrSchedule(sched, max_iters, [base * m for m in MULTS])
    ours = [schedule.values(it) for it in range(max_iters)]
    mismatch = next((it for it in range(max_iters) if ours[it] != ref[it]), None)
    assert mismatch is None, (f"first mismatch at iteration {mismatch}: ours "
                              f"{ours[mismatch]} mmengine {ref[mismatch]}")
    print(f"W={warmup} M={max_iters}: {max_iters} iterations x {len(MULTS)} groups identical; "
          f"first {ours[0]}, last {ours[-1]}")


@pytest.mark.parametrize("warmup,max_iters,ratio,power,min_lr", MMENGINE_CASES)
def test_schedule_facts(warmup, max_iters, ratio, power, min_lr):
    base = 6e-5
    sched = {"warmup_iters": warmup, "warmup_ratio": ratio, "power": power, "min_lr": min_lr}
    schedule = LrSchedule(sched, max_iters, [base * m for m in MULTS])
    first, last = schedule.values(0), schedule.values(max_iters - 1)
    start = ratio if warmup > 0 else 1.0
    for m, lr in zip(MULTS, first):
        assert lr == base * m * start, (m, lr, base * m * start)
    assert last == [min_lr] * len(MULTS), (last, min_lr)  # eta_min is absolute
    if warmup >= 2:
        for m, lr in zip(MULTS, schedule.values(warmup - 1)):
            assert lr == pytest.approx(base * m, rel=1e-15), (m, lr, base * m)


def test_schedule_cache_gives_the_same_values_in_any_order():
    sched = dict(SCHED, power=0.9, min_lr=1e-6)
    fresh = [LrSchedule(sched, 4000, [6e-5, 6e-4]).values(it) for it in (2000, 100, 3999, 1500)]
    schedule = LrSchedule(sched, 4000, [6e-5, 6e-4])
    cached = [schedule.values(it) for it in (2000, 100, 3999, 1500)]
    assert cached == fresh, (cached, fresh)


def test_schedule_is_fast_for_160k_iterations():
    schedule = LrSchedule(SCHED, 160000, [6e-5, 6e-4, 6e-5])
    t0 = time.perf_counter()
    for it in range(160000):
        schedule.values(it)
    seconds = time.perf_counter() - t0
    print(f"160k sequential values() calls, 3 groups: {seconds:.3f}s")
    assert seconds < 5.0, seconds  # loose: the machine is shared


def test_a_run_shorter_than_its_warmup_equals_mmengine():
    """train.max_iters=1000 on a shipped ADE20K schedule (warm-up 1500): mmseg's config keeps
    LinearLR(end=1500) + PolyLR(begin=1500, end=160000) and mmengine's loop stops after
    1000 iterations, inside the warm-up. Our schedule gives the same table, bit for bit.
    (On 5688dd8 such a config was refused.)"""
    base, iters = 6e-5, 1000
    ref = mmengine_group_lrs(base, MULTS, 1500, iters, 1e-6, 1.0, 0.0, poly_end=160000)
    schedule = LrSchedule(SCHED, iters, [base * m for m in MULTS])
    assert [schedule.values(it) for it in range(iters)] == ref


def test_a_shipped_config_may_run_shorter_than_its_warmup():
    from conftest import ROOT
    cfg = load_config(os.path.join(ROOT, "configs", "segnext",
                                   "segnext_mscan-t_ade20k-512x512.yaml"), ["train.max_iters=1000"])
    assert cfg.scheduler.warmup_iters == 1500 and cfg.train.max_iters == 1000


def test_schedule_shorter_than_warmup_is_the_warmup_part():
    short, full = LrSchedule(SCHED, 1000, [6e-5]), LrSchedule(SCHED, 4000, [6e-5])
    assert short.values(999) == full.values(999), (short.values(999), full.values(999))
    with pytest.raises(ValueError, match="outside"):
        short.values(1000)


def test_schedule_end_points():
    assert lr_at(0, SCHED, 160000, 6e-5) == pytest.approx(6e-11)
    assert lr_at(1499, SCHED, 160000, 6e-5) == pytest.approx(6e-5, rel=1e-15)
    assert lr_at(1500, SCHED, 160000, 6e-5) == pytest.approx(6e-5, rel=1e-15)
    assert lr_at(159999, SCHED, 160000, 6e-5) == 0.0
    floor = dict(SCHED, min_lr=1e-6)
    assert lr_at(159999, floor, 160000, 6e-5) == 1e-6


@pytest.mark.parametrize("name,expected", [
    ("decode_head.conv_seg.weight", (10.0, 1.0)),
    ("decode_head.squeeze.gn.weight", (10.0, 1.0)),  # GN is named gn: only "head" matches
    ("backbone.block1.0.norm1.weight", (1.0, 0.0)),
    ("backbone.norm4.bias", (1.0, 0.0)),
    ("backbone.patch_embed2.norm.weight", (1.0, 0.0)),
    ("backbone.patch_embed1.proj.1.weight", (1.0, 1.0)),  # StemConv BN: no 'norm' in its name
    ("backbone.block1.0.layer_scale_1", (1.0, 1.0)),
    ("backbone.block1.0.attn.proj_1.bias", (1.0, 1.0)),
])
def test_multipliers_follow_the_substring_rule(name, expected):
    assert _multipliers(name, PARAMWISE) == expected


def test_longest_key_wins():
    rules = {"head": {"lr_mult": 10.0, "decay_mult": 1.0},
             "decode_head.conv_seg": {"lr_mult": 2.0, "decay_mult": 0.5}}
    assert _multipliers("decode_head.conv_seg.bias", rules) == (2.0, 0.5)


def test_optimizer_groups_cover_every_trainable_parameter_once():
    from jseg.models import build_model
    cfg = load_config("configs/demo/segnext_mscan-t_demo.yaml", [
        "model.backbone.embed_dims=[8,16,32,64]", "model.backbone.depths=[1,1,1,1]",
        "model.decode_head.in_channels=[16,32,64]", "model.decode_head.channels=16",
        "model.decode_head.ham_channels=16", "model.decode_head.norm_groups=4"])
    model = build_model(cfg.model)
    groups = param_groups(model, cfg.optimizer)
    names = [n for g in groups for n in g["names"]]
    trainable = [n for n, p in model.named_parameters() if not p.is_stop_grad()]
    assert sorted(names) == sorted(trainable)
    assert not any("running_" in n for n in names)
    opt = build_optimizer(model, cfg.optimizer)
    set_lr(opt, initial_lrs(opt, 0.5))
    for g in opt.param_groups:
        assert g["lr"] == 0.5 * g["lr_mult"], (g["lr"], g["lr_mult"])
        assert g["weight_decay"] == cfg.optimizer.weight_decay * g["decay_mult"]
    head = [g for g in opt.param_groups if g["lr_mult"] == 10.0]
    assert head and all(n.startswith("decode_head.") for n in head[0]["names"])


def test_grad_norm_is_float64_accurate_on_l_sized_gradients():
    import jittor as jt  # after jseg (imported above), which configures Jittor
    rng = np.random.default_rng(0)
    sizes = (25_000_000, 16_000_000, 8_000_000)  # ~49M: SegNeXt-L's parameter count
    arrays = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    ref = math.sqrt(sum(np.dot(a.astype(np.float64), a.astype(np.float64)) for a in arrays))
    grads = [jt.array(a) for a in arrays]
    ours = grad_norm(grads)
    float32 = float(jt.norm(jt.concat(grads)).item())  # Jittor's Optimizer.clip_grad_norm
    err = abs(ours - ref) / ref
    print(f"49M elements: numpy float64 {ref!r}, grad_norm {ours!r} (rel err {err:.2e}), "
          f"float32 jt.norm(jt.concat) {float32!r} (rel err {abs(float32 - ref) / ref:.2e})")
    assert err < 1e-9, (ours, ref, err)


def tiny_model_after_backward(scale):
    import jittor as jt
    jt.set_seed(0)
    model = jt.nn.Linear(4, 3)
    optimizer = jt.optim.AdamW(model.parameters(), lr=1e-3)
    x = jt.array(np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    optimizer.backward((model(x) ** 2).sum() * scale)
    grads = [g.numpy().copy() for g in optimizer.param_groups[0]["grads"]]
    return optimizer, grads


def test_clip_grad_norm_clips_to_max_norm():
    optimizer, before = tiny_model_after_backward(scale=100.0)
    ref = math.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in before))
    max_norm = ref / 7
    total = clip_grad_norm(optimizer, max_norm)
    after = optimizer.param_groups[0]["grads"]
    clipped = grad_norm(after)
    print(f"norm before {total!r} (numpy {ref!r}), after {clipped!r}, max_norm {max_norm!r}")
    assert total == pytest.approx(ref, rel=1e-9), (total, ref)
    assert clipped == pytest.approx(max_norm, rel=1e-6), (clipped, max_norm)
    coef = max_norm / (ref + 1e-6)  # torch's clip_grad_norm_ coefficient
    for g, g0 in zip(after, before):
        np.testing.assert_allclose(g.numpy(), g0 * coef, rtol=1e-6)
    optimizer.step()


def test_clip_grad_norm_leaves_small_gradients_alone():
    optimizer, before = tiny_model_after_backward(scale=1.0)
    ref = math.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in before))
    total = clip_grad_norm(optimizer, 2 * ref)
    print(f"norm {total!r} (numpy {ref!r}) below max_norm {2 * ref!r}: untouched")
    for g, g0 in zip(optimizer.param_groups[0]["grads"], before):
        assert np.array_equal(g.numpy(), g0), (g.numpy(), g0)


def test_clip_grad_norm_needs_gradients():
    import jittor as jt
    optimizer = jt.optim.AdamW(jt.nn.Linear(4, 3).parameters(), lr=1e-3)
    with pytest.raises(RuntimeError, match="backward"):
        clip_grad_norm(optimizer, 1.0)
