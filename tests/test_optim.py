"""Parameter groups and the learning-rate schedule against the references' rules."""
import pytest

from jseg.config import load_config
from jseg.engine.optim import _multipliers, build_optimizer, lr_at, param_groups, set_lr

SCHED = {"warmup_iters": 1500, "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0}
PARAMWISE = {"pos_block": {"lr_mult": 1.0, "decay_mult": 0.0},
             "norm": {"lr_mult": 1.0, "decay_mult": 0.0},
             "head": {"lr_mult": 10.0, "decay_mult": 1.0}}


def mmengine_lrs(base, max_iters, sched):
    """mmengine's chained LinearLR(begin 0, end warmup) + PolyLR(begin warmup, end max_iters),
    stepped recursively iteration by iteration as mmengine's schedulers do."""
    warmup, start = sched["warmup_iters"], sched["warmup_ratio"]
    lrs, lr = [], base * start
    for it in range(max_iters):
        if it == 0:
            lr = base * start
        elif it < warmup:  # LinearLR: lr *= 1 + (end - start) / (T * start + (it - 1) * (end - start))
            lr = lr * (1 + (1 - start) / (warmup * start + (it - 1) * (1 - start)))
        elif it == warmup:
            lr = base
        else:  # PolyLR: (lr - eta_min) * (1 - 1 / (T - step + 1)) ** power + eta_min
            step, total = it - warmup, max_iters - warmup
            lr = (lr - sched["min_lr"]) * (1 - 1 / (total - step + 1)) ** sched["power"] \
                + sched["min_lr"]
        lrs.append(lr)
    return lrs


def test_schedule_matches_mmengine_recursion():
    base, max_iters = 6e-5, 4000
    ref = mmengine_lrs(base, max_iters, SCHED)
    for it in list(range(0, 20)) + [1499, 1500, 1501, 2000, 3999]:
        ours = lr_at(it, SCHED, max_iters, base)
        assert ours == pytest.approx(ref[it], rel=1e-9, abs=1e-18), (it, ours, ref[it])


def test_schedule_end_points():
    assert lr_at(0, SCHED, 160000, 6e-5) == pytest.approx(6e-11)
    assert lr_at(1500, SCHED, 160000, 6e-5) == pytest.approx(6e-5)
    assert lr_at(160000, SCHED, 160000, 6e-5) == 0.0
    floor = dict(SCHED, min_lr=1e-6)
    assert lr_at(160000, floor, 160000, 6e-5) == pytest.approx(1e-6)


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
    set_lr(opt, 0.5)
    for g in opt.param_groups:
        assert g["lr"] == 0.5 * g["lr_mult"], (g["lr"], g["lr_mult"])
        assert g["weight_decay"] == cfg.optimizer.weight_decay * g["decay_mult"]
    head = [g for g in opt.param_groups if g["lr_mult"] == 10.0]
    assert head and all(n.startswith("decode_head.") for n in head[0]["names"])
