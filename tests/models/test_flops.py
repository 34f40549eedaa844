"""Parameter and MAC counting (jseg.diagnostics.flops) and tools/get_flops.py.

MAC targets: an analytic count from the layer shapes (conv + NMF matmuls, 7 eval steps). It
uses the official md_r (16 for T/S, 64 for B/L) and, at 2048x1024, the 19 Cityscapes classes.
The shipped configs follow mmseg 1.x, whose B/L configs inherit md_r = 16 from the T config:
that makes B and L about 5% cheaper (32.69 G and 65.97 G at 512x512).
"""
import importlib.util
import os

import jseg  # noqa: F401  (configures Jittor before it is imported)
import pytest
from jittor import nn

from jseg.models import build_model
from jseg.models.ham_head import NMF2D
from jseg.diagnostics.flops import count_macs, count_parameters, model_complexity, nmf_macs

from conftest import shipped_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOLERANCE = 0.03

VARIANTS = ("t", "s", "b", "l")
OFFICIAL_MD_R = {"t": 16, "s": 16, "b": 64, "l": 64}  # the official SegNeXt configs' NMF rank
# analytic GMACs at 512x512 (150 classes) and 2048x1024 (19 classes), from the layer shapes
MACS_512 = {"t": 6.40, "s": 15.65, "b": 34.66, "l": 69.69}
MACS_CITY = {"t": 50.1, "s": 124.1, "b": 274.9, "l": 552.7}
PARAMS_150 = {"t": 4_263_414, "s": 13_932_886, "b": 27_636_310, "l": 48_926_550}


def model_cfg(variant, md_r=None):
    """The shipped ADE20K config's model, with the official NMF rank unless `md_r` is given."""
    cfg = shipped_model(variant)
    cfg["decode_head"]["ham"]["md_r"] = OFFICIAL_MD_R[variant] if md_r is None else md_r
    return cfg


@pytest.fixture(scope="module")
def models():
    """One model per variant; the class count is changed below by swapping conv_seg."""
    return {v: build_model(model_cfg(v)) for v in VARIANTS}


def test_tiny_by_hand():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    macs = count_macs(conv, (2, 4, 9, 8))
    want = 2 * 6 * 5 * 4 * (4 // 2) * 3 * 3  # B * C_out * H_out * W_out * C_in/groups * kh * kw
    assert macs["total"] == want, f"conv MACs {macs['total']} != {want}"

    nmf = NMF2D(md_s=2, md_r=3)
    D, N, R, steps = 4, 6, 3, 7
    per_group = N * D * R + steps * (2 * N * D * R + 2 * D * R * R + 2 * N * R * R) \
        + (N * D * R + D * R * R + N * R * R) + D * R * N
    got = nmf_macs(nmf, (5, 8, 2, 3), steps)
    assert got == 5 * 2 * per_group, f"NMF MACs {got} != {5 * 2 * per_group}"


@pytest.mark.parametrize("variant", ["t", "s", "b", "l"])
def test_variants_against_facts_sheet(models, variant):
    model = models[variant]
    params = count_parameters(model)
    assert params == PARAMS_150[variant], f"{variant}: params {params} != {PARAMS_150[variant]}"

    macs = count_macs(model, (1, 3, 512, 512))["total"] / 1e9
    want = MACS_512[variant]
    assert abs(macs / want - 1) < TOLERANCE, \
        f"{variant} 512x512: {macs:.3f} GMACs vs {want} (tolerance {TOLERANCE:.0%})"

    head = model.decode_head
    head.conv_seg = nn.Conv2d(head.channels, 19, 1)  # Cityscapes
    try:
        macs = count_macs(model, (1, 3, 1024, 2048))["total"] / 1e9
    finally:
        head.conv_seg = nn.Conv2d(head.channels, 150, 1)
    want = MACS_CITY[variant]
    assert abs(macs / want - 1) < TOLERANCE, \
        f"{variant} 2048x1024: {macs:.3f} GMACs vs {want} (tolerance {TOLERANCE:.0%})"


def test_mmseg_md_r_makes_b_and_l_cheaper():
    for variant, want in (("b", 32.686), ("l", 65.968)):
        model = build_model(model_cfg(variant, md_r=16))
        macs = count_macs(model, (1, 3, 512, 512))["total"] / 1e9
        assert abs(macs - want) < 0.01, f"{variant} md_r 16: {macs:.3f} GMACs != {want}"


def test_counting_leaves_the_model_as_it_was(models):
    model = models["t"]
    model.train()
    result = model_complexity(model, (2, 3, 64, 96))
    assert model.is_training() and model.decode_head.hamburger.ham.is_training()
    assert not any("execute" in m.__dict__ for m in model.modules()), "a counting hook was left"
    assert set(result["macs_by_part"]) == {"backbone", "decode_head"}, result["macs_by_part"]
    assert result["macs"] == sum(result["macs_by_part"].values())
    # eval-mode count (7 NMF steps) does not depend on the mode the model was in
    model.eval()
    again = model_complexity(model, (2, 3, 64, 96))["macs"]
    model.train()
    assert again == result["macs"], f"{again} != {result['macs']}"


def _load_tool():
    spec = importlib.util.spec_from_file_location("get_flops", os.path.join(ROOT, "tools",
                                                                            "get_flops.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_get_flops_tool(capsys):
    tool = _load_tool()
    config = os.path.join(ROOT, "configs", "segnext", "segnext_mscan-t_ade20k-512x512.yaml")
    if not os.path.exists(config):
        pytest.skip(f"{config} not present")
    assert tool.main(["--config-file", config, "--shape", "512", "512"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 4,263,414" in out, out
    assert "MACs:       6.40 G" in out, out

    assert tool.main(["--config-file", os.path.join(ROOT, "no_such.yaml")]) == 1
    err = capsys.readouterr().err
    assert "no_such.yaml" in err, err
    assert tool.main(["--config-file", config, "--shape", "0", "512"]) == 1


def test_get_flops_with_overrides(capsys):
    tool = _load_tool()
    config = os.path.join(ROOT, "configs", "segnext", "segnext_mscan-b_ade20k-512x512.yaml")
    if not os.path.exists(config):
        pytest.skip(f"{config} not present")
    assert tool.main(["--config-file", config, "model.decode_head.ham.md_r=64"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 27,636,310" in out and "MACs:       34.66 G" in out, out


def test_count_parameters_excludes_running_statistics(models):
    model = models["t"]
    everything = sum(p.numel() for p in model.parameters())
    running = 2 * sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm))
    assert running == 7456, f"BN running statistics {running} != 7456 (MSCAN-T's BN layers)"
    assert count_parameters(model) == everything - running, \
        f"{count_parameters(model)} != {everything} - {running}"
