"""jseg.export.onnx: the exported graph, run by onnxruntime, against our model.

SegNeXt-T and -S (the shipped ADE20K configs) with random weights (`_randomize_`: every
bias, norm weight, layer scale and BN running statistic perturbed, so that a dropped or
misplaced one shows) run in eval mode on the same input as the graph, with our NMF2D pinned
to the bases the graph uses (`bases_fn`). Tolerances as the parity checks
(jseg.diagnostics.parity.TOLERANCES): max|ours - onnx| / max|ours| <= 1e-4 and argmax
agreement >= 99.9%; each measured error is printed. What float32 alone gives: our model
with jseg's CPU kernels and with Jittor's own ops differs by about 3e-5 at MSCAN-T's
stage 4 with these weights, and the graph by about 2e-5 at the logits.

The tiny model of conftest.TINY_OVERRIDES covers the settings the shipped configs do not
use (md_s > 1, rand_init=False, align_corners=True, opset 18), the resize on its own covers
downscaling. Input sizes are the ones the parity tests compile (64x64, 75x53) and the tiny
model's 64x48.
"""
import os
import re
import sys

import cv2
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import jseg  # noqa: E402,F401  (configures Jittor before it is imported)
import jittor as jt  # noqa: E402

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES  # noqa: E402
from jseg.apis import inference_model  # noqa: E402
from jseg.data.datasets import image_key  # noqa: E402
from jseg.engine import evaluator  # noqa: E402
from jseg.config import Config, load_config  # noqa: E402
from jseg.export import onnx as export  # noqa: E402
from jseg.models import build_model  # noqa: E402
from jseg.models.ham_head import seeded_bases  # noqa: E402
from jseg.models.layers import resize  # noqa: E402

REL, AGREEMENT = 1e-4, 0.999
SIZES = [(64, 64), (75, 53)]


def _randomize_(model, seed):
    """Seeded noise in every weight of our model, in place (as parity.randomize_reference_
    does to mmseg's): biases N(0, 0.1^2), norm weights U(0.5, 1.5), layer scales U(0.1, 0.6),
    conv weights w * (1 + 0.2 N(0, 1)), BN running means N(0, 0.1^2) and variances
    U(0.5, 2). Without calibration; MSCAN-T/S stay finite with it (stage maxima about 6)."""
    rng = np.random.default_rng(seed)
    for name, value in sorted(model.state_dict().items()):
        leaf = name.rsplit(".", 1)[-1]
        old = value.numpy()
        if leaf == "bases":  # a rand_init=False NMF basis: stays as drawn (non-negative)
            continue
        if leaf == "running_mean" or leaf == "bias":
            new = rng.normal(0.0, 0.1, old.shape)
        elif leaf == "running_var":
            new = rng.uniform(0.5, 2.0, old.shape)
        elif leaf.startswith("layer_scale"):
            new = rng.uniform(0.1, 0.6, old.shape)
        elif old.ndim == 1:  # BN / LN / GN weight
            new = rng.uniform(0.5, 1.5, old.shape)
        else:  # conv weight
            new = old * (1.0 + 0.2 * rng.standard_normal(old.shape))
        value.assign(jt.array(new.astype(np.float32)))
    return model


def _build(config, overrides=(), seed=1):
    model = build_model(Config.unwrap(load_config(config, list(overrides)).model))
    return _randomize_(model, seed).eval()


def _image(shape, seed=10, batch=1):
    return np.random.default_rng(seed).standard_normal((batch, 3) + tuple(shape)).astype(
        np.float32)


def _ours(model, image, bases):
    """Our encode_decode logits with NMF2D pinned to `bases` (S, D, R) for every image."""
    ham = model.decode_head.hamburger.ham
    calls = []

    def pinned(B, S, D, R):
        calls.append((B, S, D, R))
        assert (S, D, R) == bases.shape, f"NMF2D asks for {(S, D, R)}, pinned {bases.shape}"
        return jt.array(np.tile(bases, (B, 1, 1)))

    ham.bases_fn = pinned
    try:
        with jt.no_grad():
            logits = model.encode_decode(jt.array(image)).numpy()
    finally:
        ham.bases_fn = None
    assert len(calls) == (1 if ham.rand_init else 0), f"bases_fn calls {calls}"
    return logits


def _check_close(ours, theirs, what):
    assert ours.shape == theirs.shape, f"{what}: shape {theirs.shape}, ours {ours.shape}"
    diff = float(np.abs(ours - theirs).max())
    rel = diff / float(np.abs(ours).max())
    agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
    report = (f"{what}: max|ours - onnx| {diff:.3e}, max|ours| {np.abs(ours).max():.3e}, "
              f"rel {rel:.3e} (tolerance {REL:g}); argmax agreement {100 * agreement:.3f}% "
              f"(tolerance {100 * AGREEMENT:g}%)")
    print(report)
    assert np.isfinite(ours).all(), f"{what}: our logits are not finite"
    assert rel <= REL and agreement >= AGREEMENT, report


class _Cache:
    """Models, our logits and exported files, made once per module."""

    def __init__(self, folder):
        self.folder, self.models, self.logits, self.files = folder, {}, {}, {}

    def model(self, variant):
        if variant not in self.models:
            config = ROOT + f"/configs/segnext/segnext_mscan-{variant}_ade20k-512x512.yaml"
            self.models[variant] = _build(config)
        return self.models[variant]

    def ours(self, variant, shape):
        key = (variant, tuple(shape))
        if key not in self.logits:
            model = self.model(variant)
            self.logits[key] = _ours(model, _image(shape), export.graph_bases(model, seed=0))
        return self.logits[key]

    def export(self, variant, shape, bases="seed", dynamic=False):
        key = (variant, tuple(shape), bases, dynamic)
        if key not in self.files:
            path = os.path.join(self.folder, f"{variant}_{len(self.files)}.onnx")
            summary = export.export_onnx(self.model(variant), path, shape, bases=bases,
                                         dynamic=dynamic)
            self.files[key] = (path, summary)
        return self.files[key]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _Cache(str(tmp_path_factory.mktemp("onnx")))


# ---------------------------------------------------------------------------
# The graph against our model

@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("bases", ["seed", "input"])
@pytest.mark.parametrize("variant", ["t", "s"])
def test_graph_matches_model(cache, variant, bases, size):
    path, summary = cache.export(variant, size, bases)
    model = cache.model(variant)
    onnx.checker.check_model(path, full_check=True)
    proto = onnx.load(path, load_external_data=False)
    opset = {o.domain: o.version for o in proto.opset_import}[""]
    assert opset >= 17 and summary["opset"] == opset, f"opset {opset}, summary {summary}"
    assert summary["bytes"] == os.path.getsize(path), summary
    expected = {"image": [1, 3, *size]}
    if bases == "input":
        expected["bases"] = [1, 256, 16]  # (S, D, R) of SegNeXt-T and -S
    assert summary["inputs"] == expected and summary["bases"] == bases, summary
    assert [i.name for i in proto.graph.input] == list(expected)
    assert summary["outputs"] == {"logits": [1, 150, *size], "pred": [1, *size]}, summary

    pinned = export.graph_bases(model, seed=0)
    theirs = export.run_onnx(path, _image(size), bases=pinned if bases == "input" else None,
                             threads=1)
    _check_close(cache.ours(variant, size), theirs,
                 f"SegNeXt-{variant.upper()}, bases {bases!r}, {size[0]}x{size[1]}")


@pytest.mark.parametrize("variant", ["t", "s"])
def test_dynamic_graph_matches_model_at_two_sizes(cache, variant):
    path, summary = cache.export(variant, (64, 64), dynamic=True)
    assert summary["inputs"] == {"image": ["batch", 3, "height", "width"]}, summary
    assert summary["outputs"]["logits"] == ["batch", 150, "height", "width"], summary
    session = export.open_session(path, threads=1)
    for size in SIZES:
        _check_close(cache.ours(variant, size), export.run_onnx(session, _image(size)),
                     f"SegNeXt-{variant.upper()}, dynamic graph, {size[0]}x{size[1]}")


@pytest.mark.parametrize("bases", ["seed", "input"])
def test_dynamic_batch_equals_one_image_at_a_time(cache, bases):
    """A batch through the dynamic graph = each image alone (with its own bases as input)."""
    path, summary = cache.export("t", (64, 64), bases=bases, dynamic=True)
    session = export.open_session(path, threads=1)
    size = SIZES[1]
    images = np.concatenate([_image(size, seed=10), _image(size, seed=11)])
    if bases == "input":
        assert summary["inputs"]["bases"] == ["batch", 256, 16], summary
        own = [export.graph_bases(cache.model("t"), seed=0),
               export.graph_bases(cache.model("t"), seed=5)]
        batch = export.run_onnx(session, images, bases=np.concatenate(own))
        alone = [export.run_onnx(session, images[i:i + 1], bases=own[i]) for i in range(2)]
    else:
        batch = export.run_onnx(session, images)
        alone = [export.run_onnx(session, images[i:i + 1]) for i in range(2)]
    for i in range(2):
        diff = float(np.abs(batch[i] - alone[i][0]).max() / np.abs(alone[i]).max())
        assert diff <= 1e-5, f"image {i} in a batch of 2 vs alone: rel {diff:.3e}"
    assert not np.allclose(batch[0], batch[1]), "the two images gave the same logits"
    # image 0 with bases of seed 0 is what test_graph_matches_model compared with our model
    _check_close(cache.ours("t", size), batch[:1], "SegNeXt-T, dynamic graph, batch of 2")


def test_pred_is_the_argmax_of_the_logits(cache):
    path, _ = cache.export("t", (64, 64))
    session = export.open_session(path, threads=1)
    logits, pred = session.run(["logits", "pred"], {"image": _image((64, 64))})
    assert pred.dtype == np.int64 and pred.shape == (1, 64, 64), (pred.dtype, pred.shape)
    assert np.array_equal(pred, logits.argmax(1)), "pred differs from argmax(logits)"


# ---------------------------------------------------------------------------
# Settings of the tiny model

TINY_CASES = {
    "md_s2": (["model.decode_head.ham.md_s=2"], {}),
    "fixed_bases": (["model.decode_head.ham.rand_init=false", "model.decode_head.ham.md_s=4"],
                    dict(bases="input")),
    "align_corners": (["model.decode_head.align_corners=true"], {}),
    "align_corners_dynamic": (["model.decode_head.align_corners=true"], dict(dynamic=True)),
    "opset18_input": ([], dict(opset=18, bases="input")),
}


@pytest.mark.parametrize("case", list(TINY_CASES))
def test_tiny_model_settings(tmp_path, case):
    overrides, kwargs = TINY_CASES[case]
    model = _build(DEMO_CONFIG, TINY_OVERRIDES + overrides, seed=2)
    size = (64, 48)
    path = str(tmp_path / "tiny.onnx")
    summary = export.export_onnx(model, path, size, seed=3, **kwargs)
    ham = model.decode_head.hamburger.ham
    pinned = export.graph_bases(model, seed=3)
    assert pinned.shape == (ham.S, 16 // ham.S, 4), pinned.shape
    if not ham.rand_init:  # the stored basis, whatever `bases` says; no bases input
        assert np.array_equal(pinned, ham.bases.numpy()), "graph_bases is not ham.bases"
        assert summary["bases"] == "fixed" and list(summary["inputs"]) == ["image"], summary
    feed = pinned if "bases" in summary["inputs"] else None
    ours = _ours(model, _image(size), pinned)
    _check_close(ours, export.run_onnx(path, _image(size), bases=feed), f"tiny model, {case}")


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("src,dst", [((16, 12), (64, 48)), ((75, 53), (19, 14)),
                                     ((9, 7), (1, 3)), ((5, 6), (13, 6))],
                         ids=["up", "down", "down-to-1", "mixed"])
def test_resize_node_matches_our_resize(src, dst, align_corners):
    """The Resize node alone against jseg.models.layers.resize, up- and downscaling."""
    x = _image(src, seed=7)
    g = export._Graph(onnx, 17, dynamic=False)
    out = export._resize(g, "x", g.ints([1, 3, *dst]), align_corners, "y")
    graph = onnx.helper.make_graph(
        g.nodes, "resize", [onnx.helper.make_tensor_value_info("x", 1, [1, 3, *src])],
        [onnx.helper.make_tensor_value_info(out, 1, [1, 3, *dst])], initializer=g.initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    ours = resize(jt.array(x), dst, align_corners).numpy()
    # Both sides round the source positions in float32 (each is within 1.5e-5 of the float64
    # formula on these N(0, 1) inputs); another coordinate mode is off by whole pixels.
    diff = float(np.abs(ours - theirs).max())
    print(f"{src} -> {dst}, align_corners {align_corners}: max|ours - onnx| {diff:.3e}")
    assert diff <= 1e-4, (f"{src} -> {dst}, align_corners {align_corners}: max|ours - onnx| "
                          f"{diff:.3e} (tolerance 1e-4)")


# ---------------------------------------------------------------------------
# The by-hand recipe of docs/deploy.md: an image in, class ids out, as inference_model

RECIPE_DOC = os.path.join(ROOT, "docs", "deploy.md")


def _readme_recipe():
    """docs/deploy.md's python block that defines `segment`, split before its usage lines
    (`session = ...` onwards)."""
    with open(RECIPE_DOC) as f:
        blocks = [b for b in re.findall(r"```python\n(.*?)```", f.read(), re.S)
                  if "def segment(" in b]
    assert len(blocks) == 1, f"{len(blocks)} python blocks in {RECIPE_DOC} define segment()"
    definitions, usage = blocks[0].split("\nsession = ", 1)
    return definitions, "session = " + usage


def _replace(code, old, new):
    assert code.count(old) == 1, f"docs/deploy.md's recipe no longer has {old!r}:\n{code}"
    return code.replace(old, new)


def test_readme_recipe_numbers_are_the_ade20k_configs():
    definitions, _ = _readme_recipe()
    ns = {}
    exec(definitions, ns)
    data = load_config(ROOT + "/configs/segnext/segnext_mscan-t_ade20k-512x512.yaml").data
    readme = (tuple(ns["TEST_SCALE"]), ns["SIZE_DIVISOR"], ns["MEAN"].tolist(), ns["STD"].tolist())
    config = (tuple(data.test_scale), data.size_divisor, np.float32(data.mean).tolist(),
              np.float32(data.std).tolist())
    assert readme == config, f"docs/deploy.md {readme}, config {config}"
    assert data.size_divisor_mode == "pad" and data.test_keep_ratio, data


@pytest.mark.parametrize("bases", ["input", "seed"])
def test_readme_recipe_equals_inference_model(tmp_path, monkeypatch, bases):
    """docs/deploy.md's recipe, run as written (its file names and TEST_SCALE swapped for the
    tiny model's), gives inference_model's class ids at every pixel. Two images: 150x200,
    larger than test_scale (64, 48): resized to 48x64, padded to 64x64, logits cropped and
    resized back up; 40x56, smaller: resized up to 46x64, padded to 64x64.
    NMF bases: "input" feeds the graph the bases inference_model draws for the image (as the
    doc says); "seed" runs the usage lines as written on a graph with constant bases, and
    inference_model's per-image bases are replaced by that constant."""
    cfg = load_config(DEMO_CONFIG, TINY_OVERRIDES)
    model = _build(DEMO_CONFIG, TINY_OVERRIDES, seed=4)
    model.cfg = cfg  # as init_model leaves it
    path = str(tmp_path / "tiny.onnx")
    export.export_onnx(model, path, (64, 64), bases=bases, dynamic=True)
    shape = export.graph_bases(model).shape  # (S, D, R)
    if bases == "seed":
        constant = export.graph_bases(model, seed=0)  # export's default seed
        monkeypatch.setattr(evaluator, "ImageBases", lambda seed, key: (
            lambda B, S, D, R: jt.array(np.tile(constant, (B, 1, 1)))))

    definitions, usage = _readme_recipe()
    definitions = _replace(definitions, "TEST_SCALE, SIZE_DIVISOR = (2048, 512), 32",
                           f"TEST_SCALE, SIZE_DIVISOR = {tuple(cfg.data.test_scale)}, "
                           f"{cfg.data.size_divisor}")
    ns = {}
    exec(definitions, ns)
    assert (ns["MEAN"].tolist(), ns["STD"].tolist()) == (
        np.float32(cfg.data.mean).tolist(), np.float32(cfg.data.std).tolist()), cfg.data
    usage = _replace(usage, '"segnext_t.onnx"', repr(path))
    rng = np.random.default_rng(6)
    for size in [(150, 200), (40, 56)]:
        image = str(tmp_path / f"{size[0]}x{size[1]}.png")
        cv2.imwrite(image, rng.integers(0, 256, size + (3,), dtype=np.uint8))
        if bases == "seed":  # the usage lines as written
            exec(_replace(usage, '"street.jpg"', repr(image)), ns)
            theirs = ns["pred"]
        else:  # inference_model's bases for this image, as docs/deploy.md gives them
            rgb = cv2.cvtColor(cv2.imread(image), cv2.COLOR_BGR2RGB)
            fed = seeded_bases(shape, cfg.seed or 0, (*image_key(rgb), 0))
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            theirs = ns["segment"](session, rgb, fed)
        ours = inference_model(model, image)["pred"]
        assert theirs.shape == ours.shape == size, (theirs.shape, ours.shape, size)
        differ = int((theirs != ours).sum())
        print(f"{size[0]}x{size[1]}, bases {bases!r}: {differ} of {ours.size} pixels differ "
              f"from inference_model (tolerance 0)")
        assert differ == 0, f"{differ} of {ours.size} pixels differ at {size}"


# ---------------------------------------------------------------------------
# Errors

@pytest.fixture(scope="module")
def tiny_model():
    return _build(DEMO_CONFIG, TINY_OVERRIDES)


@pytest.mark.parametrize("kwargs,message", [
    (dict(shape=(64,)), "shape must be (H, W)"),
    (dict(shape=(0, 64)), "two integers >= 1"),
    (dict(shape=(64.0, 64)), "two integers >= 1"),
    (dict(shape="64x64"), "shape must be (H, W)"),
    (dict(bases="random"), "bases must be 'seed'"),
    (dict(seed=-1), "seed must be an integer >= 0"),
    (dict(opset=16), "opset must be an integer from 17"),
    (dict(opset=999), "opset must be an integer from 17"),
])
def test_bad_arguments_are_named(tiny_model, tmp_path, kwargs, message):
    path = tmp_path / "bad.onnx"
    kwargs = {"shape": (64, 48), **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export.export_onnx(tiny_model, path, **kwargs)
    assert not os.listdir(tmp_path), f"left behind: {os.listdir(tmp_path)}"


def test_model_must_be_ours_and_in_eval_mode(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="EncoderDecoder with an MSCAN backbone"):
        export.export_onnx(tiny_model.backbone, tmp_path / "x.onnx", (64, 48))
    tiny_model.train()
    try:
        with pytest.raises(ValueError, match=r"eval mode \(call model.eval\(\) first\)"):
            export.export_onnx(tiny_model, tmp_path / "x.onnx", (64, 48))
        tiny_model.eval()
        tiny_model.backbone.block1[0].drop_path.train()  # one module left in training mode
        with pytest.raises(ValueError, match="backbone.block1.0.drop_path"):
            export.export_onnx(tiny_model, tmp_path / "x.onnx", (64, 48))
    finally:
        tiny_model.eval()
    assert not os.listdir(tmp_path), f"left behind: {os.listdir(tmp_path)}"


def test_failed_export_leaves_the_old_file(tiny_model, tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def failing_check(*args, **kwargs):
        raise onnx.checker.ValidationError("planted failure")

    monkeypatch.setattr(onnx.checker, "check_model", failing_check)
    with pytest.raises(onnx.checker.ValidationError, match="planted"):
        export.export_onnx(tiny_model, path, (64, 48))
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]


def test_run_onnx_checks_the_bases_it_is_given(tiny_model, tmp_path):
    constant, fed = str(tmp_path / "seed.onnx"), str(tmp_path / "input.onnx")
    export.export_onnx(tiny_model, constant, (64, 48))
    export.export_onnx(tiny_model, fed, (64, 48), bases="input")
    bases = export.graph_bases(tiny_model)
    with pytest.raises(ValueError, match="input `bases`"):
        export.run_onnx(fed, _image((64, 48)))
    with pytest.raises(ValueError, match="holds its NMF bases as a constant"):
        export.run_onnx(constant, _image((64, 48)), bases=bases)
    with pytest.raises(ValueError, match=r"image must be \(B, C, H, W\)"):
        export.run_onnx(constant, _image((64, 48))[0])
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        export.run_onnx(constant, _image((64, 48)), threads=0)


def test_missing_packages_name_the_install_line(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(ImportError, match="pip install onnx onnxruntime"):
        export.export_onnx(tiny_model, tmp_path / "x.onnx", (64, 48))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="install it with: pip install onnxruntime"):
        export.open_session(tmp_path / "x.onnx")
