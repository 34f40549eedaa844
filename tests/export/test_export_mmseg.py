"""jseg.export.torch_writer, mapping.to_mmseg_state_dict and jseg.export.mmseg: our
weights written as an mmsegmentation 1.x checkpoint without torch.

Without torch: the writer's files read back exactly through our safe_pickle, its zip layout
is torch's (records, order, 64-byte alignment, zip64 past 4 GiB), failed writes leave an
existing file alone; the mapping inverts the mmseg conversion at full SegNeXt-T size; the
tiny torch-made fixtures go mmseg -> jseg -> mmseg unchanged; the class names come from the
checkpoint, a config or a training checkpoint's config.
With torch: the files load with torch.load(weights_only=True), every dtype exactly.
With the parity stack (torch + mmseg, as tests/diagnostics/test_parity.py): a randomised mmseg SegNeXt-T
with nonzero num_batches_tracked goes mmseg -> jseg -> mmseg with every tensor identical,
mmseg's model loads the export strictly, and mmseg.apis.init_model loads it with our classes.
"""
import collections
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jseg.checkpoint import save_checkpoint_file, write_checkpoint  # noqa: E402
from jseg.export import torch_writer  # noqa: E402
from jseg.checkpoint.convert import convert_checkpoint  # noqa: E402
from jseg.export.mmseg import export_mmseg_checkpoint  # noqa: E402
from jseg.checkpoint.mapping import (ConversionError, convert_state_dict,  # noqa: E402
                                     segnext_state_shapes, to_mmseg_state_dict)
from jseg.checkpoint.safe_pickle import CheckpointError, load_checkpoint_file  # noqa: E402
from jseg.export.torch_writer import save_torch_checkpoint  # noqa: E402
from jseg.config import config_to_yaml, load_config  # noqa: E402

DATA = ROOT / "tests" / "fixtures" / "checkpoints"
T_CONFIG = ROOT / "configs" / "segnext" / "segnext_mscan-t_ade20k-512x512.yaml"
REFERENCE_REASON = "needs the PyTorch reference: pip install -e .[parity]"
QUIET = dict(log=lambda *a: None)


def _sample():
    """Arrays of every kind the writer handles, and nested plain metadata."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    arrays = collections.OrderedDict([
        ("conv.weight", weight),
        ("conv.weight_again", weight),                      # one storage, two tensors
        ("half", rng.standard_normal((5, 2)).astype(np.float16)),
        ("double", rng.standard_normal(7)),
        ("big_endian", np.arange(6, dtype=">i4").reshape(2, 3)),
        ("transposed", weight[:, :, 0, 0].T),              # not contiguous
        ("steps", np.array(123456789012, dtype=np.int64)),  # 0-dim
        ("int8", np.array([-128, 0, 127], np.int8)),
        ("uint8", np.array([0, 255], np.uint8)),
        ("uint16", np.array([1, 65535], np.uint16)),       # _rebuild_tensor_v3
        ("uint64", np.array([2 ** 64 - 1], np.uint64)),
        ("mask", np.array([[True, False]])),
        ("complex", np.array([1 + 2j], np.complex64)),
        ("empty", np.zeros((3, 0), np.float32)),
    ])
    meta = {"classes": ["sky", "road"], "palette": [[1, 2, 3], [4, 5, 6]], "iter": 16000,
            "big": 2 ** 70, "negative": -(2 ** 40), "lr": 6e-5, "nan": float("nan"),
            "flags": (True, False, None), "nested": {"deep": [{"x": 1}, [], {}, ()]},
            "bytes": b"\x00\xffab", "numpy": np.float32(0.5), "text": "ünïcode ☃"}
    return {"state_dict": arrays, "meta": meta}


def _same_meta(a, b):
    """Plain data equal, NaN equal to NaN, numpy scalars equal to their Python numbers."""
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same_meta(a[k], b[k])
                                                                  for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same_meta, a, b))
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return a == b and type(b) in (type(a), float if isinstance(a, np.floating) else type(a))


def _assert_identical(got, expected, what):
    assert list(got) == list(expected), (what, sorted(set(got) ^ set(expected))[:5])
    for key, want in expected.items():
        have = got[key]
        assert have.dtype == want.dtype and have.shape == want.shape, \
            (what, key, have.dtype, have.shape, want.dtype, want.shape)
        assert np.array_equal(have, want), (what, key, np.abs(have - want).max())


# ---------------------------------------------------------------------------
# The writer

def test_writer_round_trip_through_safe_pickle(tmp_path):
    sample = _sample()
    path = tmp_path / "sample.pth"
    save_torch_checkpoint(path, sample)
    back = load_checkpoint_file(path)
    assert type(back["state_dict"]) is collections.OrderedDict, type(back["state_dict"])
    want = {k: v.astype(v.dtype.newbyteorder("=")) for k, v in sample["state_dict"].items()}
    _assert_identical(back["state_dict"], want, "safe_pickle")
    assert _same_meta(sample["meta"], back["meta"]), back["meta"]
    assert np.shares_memory(back["state_dict"]["conv.weight"],
                            back["state_dict"]["conv.weight_again"])


def test_writer_layout_is_torchs(tmp_path):
    """Records, their order and contents as torch 2.13 writes them; every record's data on
    a 64-byte boundary; stored uncompressed; readable by zipfile with correct CRCs."""
    path = tmp_path / "sample.pth"
    save_torch_checkpoint(path, _sample())
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
        infos = archive.infolist()
        names = [i.filename for i in infos]
        storages = [f"archive/data/{i}" for i in range(13)]  # 14 arrays, one shared
        assert names == ["archive/data.pkl", "archive/.format_version",
                         "archive/.storage_alignment", "archive/byteorder", *storages,
                         "archive/version", "archive/.data/serialization_id"], names
        assert archive.read("archive/.format_version") == b"1"
        assert archive.read("archive/.storage_alignment") == b"64"
        assert archive.read("archive/byteorder") == b"little"
        assert archive.read("archive/version") == b"3\n"
        ident = archive.read("archive/.data/serialization_id")
        assert len(ident) == 40 and ident.isdigit(), ident
        assert archive.read("archive/data/0") == _sample()["state_dict"]["conv.weight"].tobytes()
        assert archive.read("archive/data/3") == np.arange(6, dtype="<i4").tobytes()
    for info in infos:
        assert info.compress_type == zipfile.ZIP_STORED, info
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:
                                                       info.header_offset + 30])
        start = info.header_offset + 30 + name_len + extra_len
        assert start % 64 == 0, (info.filename, start)


def test_writer_zip64(tmp_path, monkeypatch):
    """Past 4 GiB sizes and offsets go into zip64 fields: exercised by lowering the limit."""
    sample = _sample()
    for limit in (0, 700, 1500):
        monkeypatch.setattr(torch_writer, "_ZIP64_LIMIT", limit)
        path = tmp_path / f"zip64_{limit}.pth"
        save_torch_checkpoint(path, sample)
        with zipfile.ZipFile(path) as archive:
            assert archive.testzip() is None, limit
        back = load_checkpoint_file(path)["state_dict"]
        assert np.array_equal(back["conv.weight"], sample["state_dict"]["conv.weight"]), limit


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("bad, needle", [
    ({"x": [1, object()]}, r"the checkpoint\['x'\]\[1\]: a builtins.object cannot be saved"),
    ({"x": {1, 2}}, r"the checkpoint\['x'\]: a builtins.set cannot be saved"),
    ({"w": np.array(["a"])}, r"the checkpoint\['w'\]: numpy arrays of dtype <U1 have no torch"),
    ({"w": np.array([1], object)}, r"numpy arrays of dtype object have no torch"),
    ({"t": np.datetime64("2024-01-01")}, "a numpy datetime64"),
])
def test_writer_refuses_other_objects_before_writing(tmp_path, bad, needle):
    dst = tmp_path / "existing.pth"
    dst.write_bytes(b"previous")
    with pytest.raises(TypeError, match=needle):
        save_torch_checkpoint(dst, bad)
    assert dst.read_bytes() == b"previous" and _listing(tmp_path) == ["existing.pth"]


def test_writer_refuses_cycles(tmp_path):
    loop = []
    loop.append(loop)
    with pytest.raises(TypeError, match="contains itself"):
        save_torch_checkpoint(tmp_path / "x.pth", {"loop": loop})
    assert _listing(tmp_path) == []


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk while writing the storages) leaves the old
    file as it was and no temporary file."""
    dst = tmp_path / "existing.pth"
    dst.write_bytes(b"previous")
    real_add, calls = torch_writer._ZipWriter.add, []

    def failing_add(self, name, data):
        calls.append(name)
        if len(calls) == 7:
            raise OSError(28, "No space left on device")
        return real_add(self, name, data)

    monkeypatch.setattr(torch_writer._ZipWriter, "add", failing_add)
    with pytest.raises(OSError, match="No space left on device"):
        save_torch_checkpoint(dst, _sample())
    assert len(calls) == 7, calls
    assert dst.read_bytes() == b"previous" and _listing(tmp_path) == ["existing.pth"]


def test_writer_round_trip_through_torch(tmp_path):
    torch = pytest.importorskip("torch", reason="checks the file with torch.load")
    sample = _sample()
    path = tmp_path / "sample.pth"
    save_torch_checkpoint(path, sample)
    for mmap in (False, True):  # mmap needs torch's record alignment
        back = torch.load(path, weights_only=True, mmap=mmap)
        state = back["state_dict"]
        assert type(state) is collections.OrderedDict and list(state) == list(
            sample["state_dict"]), list(state)
        for key, want in sample["state_dict"].items():
            have = state[key]
            dtype = str(have.dtype).replace("torch.", "")
            assert dtype == want.dtype.newbyteorder("=").name and tuple(have.shape) == want.shape, \
                (key, have.dtype, have.shape, want.dtype, want.shape)
            assert np.array_equal(have.numpy(), want), key
        assert state["conv.weight"].untyped_storage().data_ptr() == \
            state["conv.weight_again"].untyped_storage().data_ptr()
        assert _same_meta(sample["meta"], back["meta"]), back["meta"]


def test_writer_zip64_through_torch(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch", reason="checks the file with torch.load")
    monkeypatch.setattr(torch_writer, "_ZIP64_LIMIT", 0)  # every record in zip64 form
    path = tmp_path / "zip64.pth"
    save_torch_checkpoint(path, _sample())
    back = torch.load(path, weights_only=True)
    want = _sample()["state_dict"]["conv.weight"]
    assert np.array_equal(back["state_dict"]["conv.weight"].numpy(), want)


# ---------------------------------------------------------------------------
# The mapping back to mmseg's keys

def _mmseg_t_layout(counter_start=1):
    """A full-size SegNeXt-T state dict as mmseg 1.x holds it: our keys, and after every
    BatchNorm's running_var its num_batches_tracked (distinct nonzero values)."""
    rng = np.random.default_rng(3)
    shapes = segnext_state_shapes((32, 64, 160, 256), (3, 3, 5, 2),
                                  head=dict(ham_channels=256, channels=256, num_classes=150))
    state, count = {}, counter_start
    for key, shape in shapes.items():
        state[key] = rng.standard_normal(shape).astype(np.float32)
        if key.endswith(".running_var"):
            state[key[:-len("running_var")] + "num_batches_tracked"] = np.array(count, np.int64)
            count += 1
    return state


def test_to_mmseg_inverts_the_mmseg_conversion():
    source = _mmseg_t_layout()
    ours, report = convert_state_dict(source, "mmseg")
    counters = report["num_batches_tracked"]
    assert len(counters) == 31 and counters["backbone.patch_embed1.proj.1.num_batches_tracked"] \
        == 1, counters
    back, summary = to_mmseg_state_dict(ours, counters)
    assert summary == {"mapped": 519, "recorded": 31, "zero": 0}, summary
    _assert_identical(back, source, "mmseg -> ours -> mmseg")


def test_to_mmseg_unknown_counters_are_zero():
    source = _mmseg_t_layout()
    ours, _ = convert_state_dict(source, "mmseg")
    back, summary = to_mmseg_state_dict(ours)
    assert summary == {"mapped": 519, "recorded": 0, "zero": 31}, summary
    counters = {k: v for k, v in back.items() if k.endswith("num_batches_tracked")}
    assert sorted(counters) == sorted(k for k in source if k.endswith("num_batches_tracked"))
    assert all(v.dtype == np.int64 and v.shape == () and v == 0 for v in counters.values())


def test_imagenet_counters_are_recorded_in_our_naming():
    source = {k[len("backbone."):]: v for k, v in _mmseg_t_layout().items()
              if k.startswith("backbone.")}
    _, report = convert_state_dict(source, "imagenet")
    assert report["num_batches_tracked"]["backbone.block1.0.norm1.num_batches_tracked"] == 6, \
        report["num_batches_tracked"]


def test_to_mmseg_lists_leftovers_and_stray_counters():
    ours, _ = convert_state_dict(_mmseg_t_layout(), "mmseg")
    official = dict(ours)
    official["backbone.block1.0.mlp.dwconv.dwconv.weight"] = official.pop(
        "backbone.block1.0.mlp.dwconv.weight")
    official["auxiliary_head.conv_seg.weight"] = np.zeros((150, 64, 1, 1), np.float32)
    with pytest.raises(ConversionError) as excinfo:
        to_mmseg_state_dict(official)
    text = str(excinfo.value)
    for needle in ("2 of 520 keys are not keys of our SegNeXt layout",
                   "auxiliary_head.conv_seg.weight", "backbone.block1.0.mlp.dwconv.dwconv.weight",
                   "convert it to ours with weights_convert/convert.py first"):
        assert needle in text, text
    with pytest.raises(ConversionError) as excinfo:
        to_mmseg_state_dict(ours, {"backbone.norm1.num_batches_tracked": 3,
                                   "backbone.block1.0.norm1.num_batches_tracked": -1})
    text = str(excinfo.value)
    assert "1 for no BatchNorm of the state dict (backbone.norm1.num_batches_tracked)" in text \
        and "1 not a non-negative int (backbone.block1.0.norm1.num_batches_tracked)" in text, text


# ---------------------------------------------------------------------------
# export_mmseg_checkpoint without torch: the tiny torch-made fixtures

def test_tiny_mmseg_fixture_round_trip(tmp_path):
    """mmseg -> jseg -> mmseg on the tiny fixture (num_batches_tracked 7 everywhere):
    the same keys in the same order, every array identical; the fixture's classes and
    palette become dataset_meta."""
    source = DATA / "segnext_mmseg_tiny.pth"
    converted, exported = tmp_path / "converted.pkl", tmp_path / "exported.pth"
    convert_checkpoint(source, converted, **QUIET)
    lines = []
    summary = export_mmseg_checkpoint(converted, exported, log=lines.append)
    assert summary == {"keys": 246, "num_batches_tracked": {"recorded": 15, "zero": 0},
                       "classes": 3, "classes_from": "the checkpoint's meta"}, summary
    assert "keys: 231 -> 246 mmseg 1.x keys (15 num_batches_tracked as recorded, 0 set to 0)" \
        in lines, lines
    original = load_checkpoint_file(source)
    back = load_checkpoint_file(exported)
    assert set(back) == {"meta", "state_dict"}, list(back)
    _assert_identical(back["state_dict"], original["state_dict"], "tiny mmseg round trip")
    meta = back["meta"]
    assert meta["dataset_meta"] == {"classes": ["sky", "road", "tree"],
                                    "palette": [[0, 0, 255]] * 3}, meta
    assert meta["source_file"] == "converted.pkl" and meta["jseg_version"], meta


def test_jseg_fixture_counters_are_zero(tmp_path):
    """A Jittor/JSeg checkpoint has no counters: mmseg gets zeros; the classes come from
    the config given."""
    converted, exported = tmp_path / "converted.pkl", tmp_path / "exported.pth"
    convert_checkpoint(DATA / "segnext_jseg_tiny.pkl", converted, **QUIET)
    config = tmp_path / "tiny.yaml"
    config.write_text(f"_base_: {ROOT / 'configs' / 'demo' / 'segnext_mscan-t_demo.yaml'}\n"
                      "model: {decode_head: {num_classes: 3}}\n"
                      "data: {type: custom, classes: [a, b, c], palette: [[1, 1, 1], [2, 2, 2], "
                      "[3, 3, 3]]}\n")
    summary = export_mmseg_checkpoint(converted, exported, config_file=config, **QUIET)
    assert summary["num_batches_tracked"] == {"recorded": 0, "zero": 15}, summary
    assert summary["classes_from"] == f"the config {config}", summary
    back = load_checkpoint_file(exported)
    assert back["meta"]["dataset_meta"] == {"classes": ["a", "b", "c"],
                                            "palette": [[1, 1, 1], [2, 2, 2], [3, 3, 3]]}
    ours = load_checkpoint_file(converted)["state_dict"]
    state = back["state_dict"]
    assert all(np.array_equal(state[k], v) for k, v in ours.items())
    assert state["backbone.block1.1.norm2.num_batches_tracked"] == 0


def test_training_checkpoint_classes_from_its_config(tmp_path):
    """A training checkpoint carries its resolved config: the classes and palette of its
    data section (a benchmark's palette, or a custom one's fixed random palette)."""
    weights = dict(np.load(DATA / "segnext_tiny_expected.npz"))  # our layout, 3 classes
    cfg = load_config(ROOT / "configs" / "demo" / "segnext_mscan-t_demo.yaml",
                      ["data.type=custom", "data.classes=[sky,road,tree]", "data.palette=null",
                       "model.decode_head.num_classes=3"])
    training = tmp_path / "iter_00000004.pkl"
    write_checkpoint(training, {"meta": {"iter": 4, "seed": 0, "config": config_to_yaml(cfg)},
                                "state_dict": weights,
                                "optimizer": {"n_step": 4, "m": {}, "v": {}}})
    exported = tmp_path / "exported.pth"
    summary = export_mmseg_checkpoint(training, exported, **QUIET)
    assert summary["classes_from"] == "the config in the checkpoint's meta", summary
    from jseg.data.palettes import default_palette
    meta = load_checkpoint_file(exported)["meta"]["dataset_meta"]
    assert meta == {"classes": ["sky", "road", "tree"],
                    "palette": [list(c) for c in default_palette(3)]}, meta


def _converted(tmp_path, name):
    path = tmp_path / f"{name}.pkl"
    convert_checkpoint(DATA / name, path, **QUIET)
    return path


@pytest.mark.parametrize("case", ["no classes", "class count", "backbone only", "not ours"])
def test_export_errors_keep_the_old_file(tmp_path, case):
    dst = tmp_path / "out" / "existing.pth"
    dst.parent.mkdir()
    dst.write_bytes(b"previous")
    kwargs = {}
    if case == "no classes":
        src, error, needle = (_converted(tmp_path, "segnext_jseg_tiny.pkl"), CheckpointError,
                              "no class names: its meta has neither 'classes' nor a training "
                              "config; pass the config")
    elif case == "class count":
        src, error = _converted(tmp_path, "segnext_jseg_tiny.pkl"), ConversionError
        kwargs["config_file"] = T_CONFIG
        needle = f"has 3 classes but the config {T_CONFIG} names 150"
    elif case == "backbone only":
        src, error = _converted(tmp_path, "mscan_imagenet_tiny.pth"), ConversionError
        needle = "a backbone without a decode head"
    else:  # an mmseg checkpoint that was not converted to ours
        src, error = DATA / "segnext_mmseg_tiny.pth", ConversionError
        needle = "15 of 246 keys are not keys of our SegNeXt layout"
    with pytest.raises(error) as excinfo:
        export_mmseg_checkpoint(src, dst, **kwargs, **QUIET)
    text = str(excinfo.value)
    assert text.startswith(str(src)) and needle in text and "\n" not in text, text
    assert dst.read_bytes() == b"previous" and _listing(dst.parent) == ["existing.pth"]


def test_export_unwritable_destination(tmp_path):
    src = _converted(tmp_path, "segnext_mmseg_tiny.pth")
    dst = tmp_path / "no" / "such" / "out.pth"
    with pytest.raises(OSError, match=f"cannot write {dst}"):
        export_mmseg_checkpoint(src, dst, **QUIET)


def test_export_rejects_a_checkpoint_it_cannot_read(tmp_path):
    bad = tmp_path / "bad.pkl"
    save_checkpoint_file(bad, {"state_dict": {"conv1.weight": np.zeros((2, 3, 3, 3))}})
    with pytest.raises(ConversionError, match="bad.pkl: a backbone without a decode head"):
        export_mmseg_checkpoint(bad, tmp_path / "out.pth", **QUIET)


# ---------------------------------------------------------------------------
# With the parity stack: mmseg's own SegNeXt-T, its loader and init_model

@pytest.fixture(scope="module")
def ref():
    pytest.importorskip("torch", reason=REFERENCE_REASON)
    pytest.importorskip("mmseg", reason=REFERENCE_REASON)
    from jseg.diagnostics import parity
    return parity.import_reference()


@pytest.fixture(scope="module")
def exported_t(ref, tmp_path_factory):
    """mmseg's SegNeXt-T with random weights and num_batches_tracked 1000, 1001, ...,
    saved by torch, converted to ours, exported back: (original state dict, exported path)."""
    from jseg.diagnostics import parity
    folder = tmp_path_factory.mktemp("export_mmseg")
    model = parity.build_reference_model(ref, load_config(T_CONFIG)["model"], seed=0)
    parity.randomize_reference_(ref, model, seed=1)
    counters = [t for k, t in model.state_dict().items() if k.endswith("num_batches_tracked")]
    for i, t in enumerate(counters):
        t.fill_(1000 + i)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    source, converted, exported = (folder / "mmseg.pth", folder / "converted.pkl",
                                   folder / "exported.pth")
    parity.save_reference_checkpoint(ref, model, source)
    convert_checkpoint(source, converted, fmt="mmseg", **QUIET)
    export_mmseg_checkpoint(converted, exported, config_file=T_CONFIG, **QUIET)
    return original, exported


def test_round_trip_is_identical_in_torch(ref, exported_t):
    original, exported = exported_t
    torch = ref.torch
    back = torch.load(exported, map_location="cpu", weights_only=True)
    state = back["state_dict"]
    assert set(state) == set(original) and len(state) == 550, \
        (len(state), sorted(set(state) ^ set(original))[:5])
    for key, want in original.items():
        have = state[key]
        assert have.dtype == want.dtype and have.shape == want.shape, \
            (key, have.dtype, have.shape, want.dtype, want.shape)
        assert torch.equal(have, want), (key, (have.double() - want.double()).abs().max())
    counters = [int(v) for k, v in state.items() if k.endswith("num_batches_tracked")]
    assert counters == list(range(1000, 1031)), counters


def test_mmseg_model_loads_the_export_strictly(ref, exported_t):
    from jseg.diagnostics import parity
    original, exported = exported_t
    torch = ref.torch
    fresh = parity.build_reference_model(ref, load_config(T_CONFIG)["model"], seed=5)
    state = torch.load(exported, map_location="cpu", weights_only=True)["state_dict"]
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, original[key]), key


MMSEG_T_CONFIG = "segnext/segnext_mscan-t_1xb16-adamw-160k_ade20k-512x512.py"


def test_mmseg_init_model_loads_the_export(ref, exported_t):
    """mmseg.apis.init_model with mmseg's own SegNeXt-T ADE20K config (from the installed
    package's .mim/configs; offline: init_model drops the backbone's pretrained init_cfg, and
    nothing else downloads) loads the export, and takes our class names and palette."""
    import mmseg
    from mmseg.apis import init_model
    from jseg.data.palettes import ADE20K_CLASSES, ADE20K_PALETTE
    original, exported = exported_t
    config = Path(mmseg.__file__).parent / ".mim" / "configs" / MMSEG_T_CONFIG
    if not config.is_file():
        pytest.skip(f"mmseg's config {MMSEG_T_CONFIG} is not installed with the package")
    model = init_model(str(config), str(exported), device="cpu")
    state = model.state_dict()
    assert set(state) == set(original), sorted(set(state) ^ set(original))[:5]
    for key, value in state.items():
        assert ref.torch.equal(value, original[key]), key
    assert list(model.dataset_meta["classes"]) == list(ADE20K_CLASSES), \
        model.dataset_meta["classes"][:5]
    assert [list(c) for c in model.dataset_meta["palette"]] == \
        [list(c) for c in ADE20K_PALETTE]
