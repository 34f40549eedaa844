"""MSCAN encoder: shapes, key layout, parameter counts, init, train/eval behaviour.

Runs on tiny widths (8, 16, 32, 64) with one block per stage; full widths are only built
(never run) to count parameters and keys. Shape checks on big inputs use Jittor's lazy
graph: the output shapes are known without running a kernel.
"""
import math

import jseg  # noqa: F401  (configures Jittor before it is imported)
import jittor as jt
import numpy as np
import pytest

from jseg.models.mscan import MSCAN, MSCAN_SETTINGS, mscan_variant

# Shape checks (lazy, nothing runs) use growing tiny widths. Tests that execute use one
# width in every stage: Jittor's CPU depthwise-conv kernels are compiled per channel count,
# so equal widths let the four stages share kernels (the same model as in test_segmentor.py
# and test_ham_head.py, which reuse the compiled kernels too).
TINY = dict(embed_dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), mlp_ratios=(8, 8, 4, 4),
            drop_path_rate=0.0)
TINY_RUN = dict(embed_dims=(16, 16, 16, 16), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
                drop_path_rate=0.0)

# backbone-only parameters (no classifier), BN running stats excluded, counted from the layer
# shapes of mmseg 1.x's MSCAN (the paper's Table 2 sizes with the ImageNet classifier added)
BACKBONE_PARAMS = {"t": 3_903_584, "s": 13_450_176, "b": 26_277_824, "l": 44_636_864}
# Jittor state-dict entries of the segmentor (mmseg 1.x's keys without num_batches_tracked)
# minus the 13 head entries
BACKBONE_KEYS = {"t": 519 - 13, "s": 411 - 13, "b": 807 - 13, "l": 1419 - 13}


def expected_stage_shapes(batch, height, width, dims):
    """Conv arithmetic: every stride-2, pad-1, 3x3 conv maps n to ceil(n / 2)."""
    shapes = []
    h, w = height, width
    for i, c in enumerate(dims):
        for _ in range(2 if i == 0 else 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        shapes.append((batch, c, h, w))
    return shapes


def n_params(model):
    buffers = {id(m.running_mean) for m in model.modules() if hasattr(m, "running_mean")}
    buffers |= {id(m.running_var) for m in model.modules() if hasattr(m, "running_var")}
    return sum(p.numel() for p in model.parameters() if id(p) not in buffers)


def test_stage_outputs_odd_size_run():
    jt.set_global_seed(0)
    model = MSCAN(**TINY_RUN).eval()
    x = jt.array(np.random.RandomState(0).randn(1, 3, 95, 27).astype("float32"))
    outs = model(x)
    got = [tuple(o.shape) for o in outs]
    want = expected_stage_shapes(1, 95, 27, TINY_RUN["embed_dims"])
    assert got == want, f"stage shapes {got} != {want}"
    assert want == [(1, 16, 24, 7), (1, 16, 12, 4), (1, 16, 6, 2), (1, 16, 3, 1)], want
    for i, o in enumerate(outs):
        values = o.numpy()
        assert np.isfinite(values).all(), f"stage {i + 1} has non-finite values"


@pytest.mark.parametrize("batch,in_channels,height,width", [
    (1, 3, 500, 375), (3, 4, 33, 64), (2, 1, 512, 1024), (1, 3, 31, 1)])
def test_stage_shapes_any_size_lazy(batch, in_channels, height, width):
    # Jittor builds the graph lazily: shapes are inferred without running anything.
    model = MSCAN(in_channels=in_channels, **TINY).eval()
    with jt.no_grad():
        outs = model(jt.zeros((batch, in_channels, height, width)))
    got = [tuple(o.shape) for o in outs]
    want = expected_stage_shapes(batch, height, width, TINY["embed_dims"])
    assert got == want, f"{height}x{width}: stage shapes {got} != {want}"


@pytest.mark.parametrize("variant", ["t", "s", "b", "l"])
def test_full_width_parameters_and_keys(variant):
    model = mscan_variant(variant)
    keys = model.state_dict()
    assert n_params(model) == BACKBONE_PARAMS[variant], \
        f"MSCAN-{variant.upper()} parameters {n_params(model)} != {BACKBONE_PARAMS[variant]}"
    assert len(keys) == BACKBONE_KEYS[variant], \
        f"MSCAN-{variant.upper()} state-dict entries {len(keys)} != {BACKBONE_KEYS[variant]}"
    assert not any("num_batches_tracked" in k for k in keys)


def test_key_names_and_shapes_follow_mmseg_1x():
    model = mscan_variant("t")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = {
        "patch_embed1.proj.0.weight": (16, 3, 3, 3),
        "patch_embed1.proj.1.running_var": (16,),
        "patch_embed1.proj.3.weight": (32, 16, 3, 3),
        "patch_embed1.proj.4.bias": (32,),
        "patch_embed2.proj.weight": (64, 32, 3, 3),
        "patch_embed4.norm.running_mean": (256,),
        "block1.0.norm1.weight": (32,),
        "block2.2.attn.proj_1.weight": (64, 64, 1, 1),
        "block3.4.attn.proj_2.bias": (160,),
        "block1.2.attn.spatial_gating_unit.conv0.weight": (32, 1, 5, 5),
        "block1.2.attn.spatial_gating_unit.conv0_1.weight": (32, 1, 1, 7),
        "block1.2.attn.spatial_gating_unit.conv0_2.weight": (32, 1, 7, 1),
        "block2.0.attn.spatial_gating_unit.conv1_2.weight": (64, 1, 11, 1),
        "block4.1.attn.spatial_gating_unit.conv2_1.weight": (256, 1, 1, 21),
        "block4.1.attn.spatial_gating_unit.conv3.weight": (256, 256, 1, 1),
        "block1.0.mlp.fc1.weight": (256, 32, 1, 1),
        "block1.0.mlp.dwconv.weight": (256, 1, 3, 3),
        "block1.0.mlp.dwconv.bias": (256,),
        "block3.0.mlp.fc2.weight": (160, 640, 1, 1),
        "block2.1.layer_scale_1": (64,),
        "block2.1.layer_scale_2": (64,),
        "norm4.weight": (256,),
        "norm1.bias": (32,),
    }
    for key, shape in want.items():
        assert key in shapes, f"missing key {key}"
        assert shapes[key] == shape, f"{key}: shape {shapes[key]} != {shape}"
    assert "block1.0.mlp.dwconv.dwconv.weight" not in shapes
    assert "block3.4.norm1.weight" in shapes and "block3.5.norm1.weight" not in shapes


def test_drop_path_linear_schedule():
    model = mscan_variant("b")
    rates = [blk.drop_path.p for i in range(4) for blk in getattr(model, f"block{i + 1}")]
    want = np.linspace(0, 0.1, 21)
    assert len(rates) == 21, len(rates)
    assert np.allclose(rates, want), f"drop path rates {rates} != {want.tolist()}"


def test_variant_table_and_errors():
    assert set(MSCAN_SETTINGS) == {"t", "s", "b", "l"}
    assert MSCAN_SETTINGS["l"]["drop_path_rate"] == 0.3
    with pytest.raises(ValueError, match="valid"):
        mscan_variant("xl")
    with pytest.raises(ValueError, match="one entry per stage"):
        MSCAN(embed_dims=(8, 16), depths=(1, 1, 1, 1))


def test_init_rules():
    jt.set_global_seed(1)
    model = mscan_variant("t")
    checks = [
        # (conv, fan_out = kh * kw * out / groups)
        (model.block3[0].mlp.fc1, 1 * 1 * 640),
        (model.block3[0].mlp.dwconv, 3 * 3),
        (model.block4[0].attn.spatial_gating_unit.conv3, 256),
        (model.patch_embed4.proj, 3 * 3 * 256),
    ]
    for conv, fan_out in checks:
        w = conv.weight.numpy()
        want = math.sqrt(2.0 / fan_out)
        assert abs(w.std() / want - 1) < 0.05, f"conv std {w.std():.5f} != {want:.5f} (5%)"
        assert abs(w.mean()) < 0.1 * want, f"conv mean {w.mean():.5f} not ~0"
        assert np.all(conv.bias.numpy() == 0), "conv bias not 0"
    for norm in (model.norm2, model.block2[1].norm1, model.patch_embed1.proj[1]):
        assert np.all(norm.weight.numpy() == 1) and np.all(norm.bias.numpy() == 0)
    ls = model.block1[0].layer_scale_1.numpy()
    assert np.allclose(ls, 1e-2), f"layer scale {ls[:4]} != 0.01"


def test_train_eval_behaviour():
    x = jt.array(np.random.RandomState(1).randn(2, 3, 64, 64).astype("float32"))

    # DropPath: random per sample in training, identity in eval
    jt.set_global_seed(2)
    model = MSCAN(**{**TINY_RUN, "drop_path_rate": 0.5})
    a = model(x)[-1].numpy()
    b = model(x)[-1].numpy()
    assert np.abs(a - b).max() > 1e-4, "two training passes with DropPath 0.5 were equal"

    model.eval()
    mean_before = model.patch_embed2.norm.running_mean.numpy().copy()
    c = model(x)[-1].numpy()
    d = model(x)[-1].numpy()
    assert np.array_equal(c, d), f"eval passes differ by {np.abs(c - d).max()}"
    # eval BatchNorm uses running statistics and leaves them alone
    assert np.array_equal(mean_before, model.patch_embed2.norm.running_mean.numpy())
    # ... so one sample's output does not depend on the rest of the batch
    other = jt.concat([x[:1], x[1:] * 2.0 + 1.0], dim=0)
    swapped = model(other)[-1].numpy()
    assert np.allclose(swapped[:1], c[:1], atol=1e-5), \
        f"eval output depends on the batch: max diff {np.abs(swapped[:1] - c[:1]).max()}"

    # training BatchNorm uses batch statistics and updates the running mean
    model.train()
    model(x)[-1].sync()
    mean_after = model.patch_embed2.norm.running_mean.numpy()
    assert np.abs(mean_after - mean_before).max() > 0, "training pass did not update running_mean"
