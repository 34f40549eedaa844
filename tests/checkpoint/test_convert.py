"""jseg.checkpoint.mapping / convert and weights_convert/convert.py: key mapping for every
source layout, shape checks, and the CLI.

Full-size layouts are synthesised from the key patterns with zero-memory arrays
(np.broadcast_to) so that T/S/B/L run in milliseconds; the shape table is checked against
the models the shipped T/S/B/L configs build; the CLI runs on the tiny torch-made fixtures
in tests/fixtures/checkpoints. No torch needed.
"""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # weights_convert is a top-level folder of the checkout
    sys.path.insert(0, str(ROOT))

from jseg.checkpoint import save_checkpoint_file  # noqa: E402
from jseg.checkpoint.safe_pickle import load_checkpoint_file  # noqa: E402
from weights_convert import convert as convert_cli  # noqa: E402
from jseg.checkpoint.convert import file_sha256  # noqa: E402
from jseg.checkpoint.mapping import (ConversionError, check_against_model,  # noqa: E402
                                     convert_state_dict, describe_architecture, detect_format,
                                     infer_state_shapes, is_our_key, mscan_variants,
                                     segnext_state_shapes)

DATA = ROOT / "tests" / "fixtures" / "checkpoints"
SCRIPT = ROOT / "weights_convert" / "convert.py"
TINY_FIXTURES = {"segnext_mmseg_tiny.pth": "mmseg", "segnext_official_tiny.pth": "official",
                 "mscan_imagenet_tiny.pth": "imagenet", "segnext_jseg_tiny.pkl": "jseg"}
TINY = dict(embed_dims=(2, 4, 6, 8), depths=(2, 1, 1, 1), mlp_ratios=(2, 2, 2, 2),
            head=dict(ham_channels=4, channels=4, num_classes=3))  # as in the fixture script
MSCAN_VARIANTS = mscan_variants()  # from jseg.models.mscan.MSCAN_SETTINGS
CONFIGS = {v: ROOT / "configs" / "segnext" / f"segnext_mscan-{v[-1].lower()}_ade20k-512x512.yaml"
           for v in MSCAN_VARIANTS}

# counted from the layer shapes of mmseg 1.x's MSCAN + LightHamHead: state-dict entries in the
# PyTorch layouts / ours, parameters, BN buffers, head parameters (150 classes)
FACTS = {"MSCAN-T": (550, 519, 3_903_584, 7_456, 359_830),
         "MSCAN-S": (436, 411, 13_450_176, 12_864, 482_710),
         "MSCAN-B": (854, 807, 26_277_824, 25_920, 1_358_486),
         "MSCAN-L": (1500, 1419, 44_636_864, 46_144, 4_289_686)}


def _variant_shapes(variant, num_classes=150):
    from jseg.config import load_config
    dims, depths = MSCAN_VARIANTS[variant]
    head = load_config(CONFIGS[variant]).model.decode_head
    return segnext_state_shapes(dims, depths, head=dict(ham_channels=head.ham_channels,
                                                        channels=head.channels,
                                                        num_classes=num_classes))


def _arrays(shapes):
    """Shape-only arrays: the right .shape, no memory."""
    return {k: np.broadcast_to(np.zeros((), np.float32), s) for k, s in shapes.items()}


def _source_layout(ours, fmt):
    """Our layout -> what a checkpoint in `fmt` holds (the inverse of the conversion)."""
    out = {}
    for key, value in ours.items():
        if fmt == "imagenet" and not key.startswith("backbone."):
            continue
        name = key.replace(".mlp.dwconv.", ".mlp.dwconv.dwconv.") if fmt != "mmseg" else key
        if fmt == "imagenet":
            name = name[len("backbone."):]
        out[name] = value
        if fmt != "jseg" and key.endswith(".running_var"):
            out[name[:-len("running_var")] + "num_batches_tracked"] = np.array(0)
    if fmt == "imagenet":
        c4 = ours["backbone.norm4.weight"].shape[0]
        out["head.weight"] = np.broadcast_to(np.zeros((), np.float32), (1000, c4))
        out["head.bias"] = np.zeros(1000, np.float32)
    return out


# ---------------------------------------------------------------------------
# Key tables against the counts from the layer shapes

@pytest.mark.parametrize("variant", list(MSCAN_VARIANTS))
def test_state_shapes_match_facts(variant):
    n_torch, n_ours, params, buffers, head = FACTS[variant]
    shapes = _variant_shapes(variant)
    got_params = sum(math.prod(s) for k, s in shapes.items()
                     if k.startswith("backbone.") and "running_" not in k)
    got_buffers = sum(math.prod(s) for k, s in shapes.items() if "running_" in k)
    got_head = sum(math.prod(s) for k, s in shapes.items() if k.startswith("decode_head."))
    got = (len(shapes), got_params, got_buffers, got_head)
    assert got == (n_ours, params, buffers, head), f"{variant}: got {got}"
    assert all(is_our_key(k) for k in shapes), [k for k in shapes if not is_our_key(k)]


@pytest.mark.parametrize("variant", list(MSCAN_VARIANTS))
def test_state_shapes_equal_the_built_model(variant):
    """The converter's shape table is the state dict of the model each shipped config builds."""
    from jseg.checkpoint.convert import expected_shapes_from_config
    built = expected_shapes_from_config(CONFIGS[variant])
    table = _variant_shapes(variant)
    assert built == table, (sorted(set(built) ^ set(table))[:5],
                            [k for k in built if k in table and built[k] != table[k]][:5])


@pytest.mark.parametrize("variant", list(MSCAN_VARIANTS))
@pytest.mark.parametrize("fmt", ["mmseg", "official", "jseg", "imagenet"])
def test_full_size_layouts(variant, fmt):
    n_torch, n_ours = FACTS[variant][:2]
    ours = _arrays(_variant_shapes(variant))
    source = _source_layout(ours, fmt)
    if fmt in ("mmseg", "official"):
        assert len(source) == n_torch, f"{variant} {fmt}: {len(source)} source keys"
    detected, reason = detect_format(source)
    assert detected == fmt, f"{variant}: detected {detected} ({reason})"
    converted, report = convert_state_dict(source, fmt)
    expected = {k: v for k, v in ours.items()
                if fmt != "imagenet" or k.startswith("backbone.")}
    assert sorted(converted) == sorted(expected), \
        sorted(set(converted) ^ set(expected))[:10]
    dropped = sum(len(v) for v in report["dropped"].values())
    assert report["mapped"] + dropped == len(source), (report["mapped"], dropped, len(source))
    if fmt != "imagenet":
        assert report["mapped"] == n_ours, report["mapped"]
    check_against_model(converted, {k: v.shape for k, v in expected.items()})
    assert infer_state_shapes(converted) == {k: v.shape for k, v in expected.items()}
    assert describe_architecture(converted).startswith(variant), describe_architecture(converted)


def test_detect_reasons():
    ours = _arrays(_variant_shapes("MSCAN-T"))
    fmt, reason = detect_format(_source_layout(ours, "official"))
    assert fmt == "official" and "31 num_batches_tracked" in reason, reason
    fmt, reason = detect_format(_source_layout(ours, "jseg"))
    assert fmt == "jseg" and "without num_batches_tracked" in reason, reason


# ---------------------------------------------------------------------------
# Rejections

RESNET = {"conv1.weight": np.zeros((64, 3, 7, 7)), "bn1.weight": np.zeros(64),
          "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1)), "fc.weight": np.zeros((1000, 2048))}


@pytest.mark.parametrize("keys", [RESNET, {f"backbone.{k}": v for k, v in RESNET.items()},
                                  {"backbone.block1.0.attn.q.weight": np.zeros((4, 4)),
                                   "backbone.block1.0.mlp.dwconv.dwconv.weight": np.zeros(4)}])
def test_other_architectures_rejected(keys):
    with pytest.raises(ConversionError, match="not a SegNeXt/MSCAN checkpoint"):
        detect_format(keys)


def test_leftover_keys_listed():
    source = _source_layout(_arrays(_variant_shapes("MSCAN-T")), "mmseg")
    source["auxiliary_head.conv_seg.weight"] = np.zeros((150, 64, 1, 1))
    source["backbone.block1.0.attn.q.weight"] = np.zeros((32, 32))
    with pytest.raises(ConversionError) as excinfo:
        convert_state_dict(source, "mmseg")
    text = str(excinfo.value)
    assert "2 of 552 keys" in text and "auxiliary_head.conv_seg.weight" in text \
        and "backbone.block1.0.attn.q.weight" in text, text


@pytest.mark.parametrize("source_fmt, fmt, needle", [
    ("official", "mmseg", "try --format official"),
    ("mmseg", "official", "try --format mmseg"),
    ("mmseg", "jseg", "try --format mmseg"),
    ("official", "jseg", "Jittor/JSeg checkpoints have no num_batches_tracked"),
    ("mmseg", "imagenet", "an ImageNet backbone has no 'backbone.'"),
])
def test_wrong_format_forced(source_fmt, fmt, needle):
    source = _source_layout(_arrays(_variant_shapes("MSCAN-T")), source_fmt)
    with pytest.raises(ConversionError) as excinfo:
        convert_state_dict(source, fmt)
    assert needle in str(excinfo.value), str(excinfo.value)


def test_mixed_naming_rejected():
    source = _source_layout(_arrays(_variant_shapes("MSCAN-T")), "official")
    source["backbone.block1.0.mlp.dwconv.weight"] = source.pop(
        "backbone.block1.0.mlp.dwconv.dwconv.weight")
    with pytest.raises(ConversionError, match="mixed"):
        detect_format(source)


# ---------------------------------------------------------------------------
# check_against_model

def test_check_lists_every_problem():
    expected = _variant_shapes("MSCAN-T")
    converted = _arrays(expected)
    del converted["backbone.norm4.weight"]
    converted["backbone.norm5.weight"] = np.zeros(3)
    converted["backbone.block1.0.mlp.fc1.weight"] = np.zeros((7, 32, 1, 1))
    with pytest.raises(ConversionError) as excinfo:
        check_against_model(converted, expected, what="the config x.yaml")
    text = str(excinfo.value)
    for needle in ("1 missing (backbone.norm4.weight)", "1 unexpected (backbone.norm5.weight)",
                   "backbone.block1.0.mlp.fc1.weight: checkpoint (7, 32, 1, 1) vs (256, 32, 1, 1)",
                   "the config x.yaml"):
        assert needle in text, text


def test_check_class_count_message():
    converted = _arrays(_variant_shapes("MSCAN-T", num_classes=19))
    with pytest.raises(ConversionError) as excinfo:
        check_against_model(converted, _variant_shapes("MSCAN-T", num_classes=150),
                            what="the config")
    assert str(excinfo.value) == ("checkpoint has 19 classes, the config has 150: use the "
                                  "config of the dataset the checkpoint was trained on"), \
        str(excinfo.value)


def test_check_names_both_variants():
    converted = _arrays(_variant_shapes("MSCAN-S"))
    with pytest.raises(ConversionError) as excinfo:
        check_against_model(converted, _variant_shapes("MSCAN-B"), what="the config")
    text = str(excinfo.value)
    assert text.startswith("the checkpoint is MSCAN-S"), text
    assert "the config builds MSCAN-B" in text, text


def test_incomplete_checkpoint_found_without_config():
    converted = _arrays(_variant_shapes("MSCAN-T"))
    del converted["backbone.block3.2.attn.proj_1.weight"]
    with pytest.raises(ConversionError, match="backbone.block3.2.attn.proj_1.weight"):
        check_against_model(converted, infer_state_shapes(converted))


# ---------------------------------------------------------------------------
# The command-line tool on the torch-made fixtures

@pytest.mark.parametrize("name, fmt", list(TINY_FIXTURES.items()))
def test_cli_converts_fixture(name, fmt, tmp_path, capsys):
    dst = tmp_path / "out.pkl"
    assert convert_cli.main([str(DATA / name), str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"format: {fmt} (detected" in out and f"wrote {dst}" in out, out
    ckpt = load_checkpoint_file(dst)
    assert set(ckpt) == {"state_dict", "meta"}, list(ckpt)
    meta = ckpt["meta"]
    assert meta["source_format"] == fmt and meta["source_file"] == name, meta
    assert meta["source_sha256"] == file_sha256(DATA / name)
    assert meta["converter"] == "jseg weights_convert" and meta["jseg_version"], meta
    expected = np.load(DATA / "segnext_tiny_expected.npz")
    keys = [k for k in expected.files if fmt != "imagenet" or k.startswith("backbone.")]
    state = ckpt["state_dict"]
    assert sorted(state) == sorted(keys), sorted(set(state) ^ set(keys))[:5]
    for k in keys:
        assert state[k].dtype == np.float32 and np.array_equal(state[k], expected[k]), \
            (k, state[k].dtype, np.abs(state[k] - expected[k]).max())


def test_cli_forced_format_and_summary(tmp_path, capsys):
    dst = tmp_path / "out.pkl"
    assert convert_cli.main([str(DATA / "segnext_official_tiny.pth"), str(dst),
                             "--format", "official"]) == 0
    out = capsys.readouterr().out
    for needle in ("format: official (given with --format)",
                   "keys: 246 in the checkpoint -> 231 mapped (10 renamed), 15 dropped",
                   "custom MSCAN (embed_dims (2, 4, 6, 8), depths (2, 1, 1, 1))",
                   "floating-point arrays stored as float32"):
        assert needle in out, out
    assert load_checkpoint_file(dst)["meta"]["classes"] == ["sky", "road", "tree"]


def _tiny_config(tmp_path, num_classes=3):
    """A config whose model has the tiny fixtures' widths (as in the fixture script)."""
    kind = ("data: {type: custom, classes: [sky, road, tree], palette: null}" if num_classes == 3
            else "data: {type: ade20k, classes: null, palette: null, reduce_zero_label: null}")
    path = tmp_path / f"tiny_{num_classes}.yaml"
    path.write_text(f"""_base_: {ROOT / "configs" / "demo" / "segnext_mscan-t_demo.yaml"}
model:
  backbone: {{embed_dims: [2, 4, 6, 8], depths: [2, 1, 1, 1], mlp_ratios: [2, 2, 2, 2]}}
  decode_head: {{in_channels: [4, 6, 8], ham_channels: 4, channels: 4, norm_groups: 2,
                num_classes: {num_classes}}}
{kind}
""")
    return path


def test_cli_config_check(tmp_path, capsys):
    """--config-file: every model key present with its shape (model built by the config)."""
    config = _tiny_config(tmp_path)
    dst = tmp_path / "out.pkl"
    assert convert_cli.main([str(DATA / "segnext_jseg_tiny.pkl"), str(dst),
                             "--config-file", str(config)]) == 0
    assert f"checked against {config}: all 231 model keys" in capsys.readouterr().out
    # an ImageNet backbone is checked against the backbone keys only
    assert convert_cli.main([str(DATA / "mscan_imagenet_tiny.pth"), str(dst),
                             "--config-file", str(config)]) == 0
    assert "all 218 backbone keys" in capsys.readouterr().out


def test_cli_class_mismatch_keeps_old_dst(tmp_path, capsys):
    config = _tiny_config(tmp_path, num_classes=150)
    dst = tmp_path / "out" / "out.pkl"
    dst.parent.mkdir()
    dst.write_bytes(b"previous")
    assert convert_cli.main([str(DATA / "segnext_mmseg_tiny.pth"), str(dst),
                             "--config-file", str(config)]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: checkpoint has 3 classes, the config {config} has 150: use the "
                   "config of the dataset the checkpoint was trained on\n"), err
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in dst.parent.iterdir()) == ["out.pkl"]


def _bad_sources(tmp_path):
    mmseg = (DATA / "segnext_mmseg_tiny.pth").read_bytes()
    text = tmp_path / "notes.txt"
    text.write_text("these are not weights\n")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(mmseg[:len(mmseg) // 2])
    resnet = tmp_path / "resnet.pkl"
    save_checkpoint_file(resnet, {"state_dict": RESNET})
    return {"truncated": (truncated, "truncated or corrupt zip"),
            "text": (text, "not a checkpoint"),
            "malicious": (DATA / "malicious.pth", "'posix.system'"),
            "resnet": (resnet, "not a SegNeXt/MSCAN checkpoint"),
            "missing": (tmp_path / "absent.pth", "no such file"),
            "no state dict": (DATA / "tensors_zip.pth", "no state dict found")}


@pytest.mark.parametrize("case", ["truncated", "text", "malicious", "resnet", "missing",
                                  "no state dict"])
def test_cli_bad_input(case, tmp_path, capsys, monkeypatch):
    src, needle = _bad_sources(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dst, old = out_dir / "existing.pkl", out_dir / "untouched.pkl"
    old.write_bytes(b"previous")
    monkeypatch.chdir(tmp_path)
    for target in (dst, old):
        assert convert_cli.main([str(src), str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
        assert str(src) in err, err
    assert not dst.exists() and old.read_bytes() == b"previous"
    assert sorted(p.name for p in out_dir.iterdir()) == ["untouched.pkl"]
    assert not (tmp_path / "PWNED_BY_CHECKPOINT").exists()


def test_cli_unwritable_destination(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for dst in (tmp_path / "no" / "such" / "dir" / "out.pkl", blocker / "out.pkl"):
        assert convert_cli.main([str(DATA / "segnext_mmseg_tiny.pth"), str(dst)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"error: cannot write {dst}") and err.count("\n") == 1, err


def _run_script(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_script_runs_from_repo_root_and_elsewhere(tmp_path):
    """As a script (no installation): sys.path set up by convert.py itself; exit codes."""
    dst = tmp_path / "out.pkl"
    done = _run_script(DATA / "segnext_official_tiny.pth", dst, cwd=ROOT)
    assert done.returncode == 0 and "format: official" in done.stdout, done.stderr
    done = _run_script(tmp_path / "absent.pth", tmp_path / "x.pkl", cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    done = _run_script(DATA / "segnext_official_tiny.pth", dst, "--format", "resnet", cwd=tmp_path)
    assert done.returncode == 1 and "invalid choice" in done.stderr, done.stderr
