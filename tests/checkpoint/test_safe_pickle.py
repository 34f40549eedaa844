"""jseg.checkpoint.safe_pickle and jseg.utils.atomic: reading checkpoints safely, writing atomically.

The fixtures in tests/fixtures/checkpoints were written by real torch 2.13
(tests/fixtures/make_checkpoint_fixtures.py); these tests need numpy only.
"""
import errno
import hashlib
import io
import os
import pickle
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jseg.checkpoint import save_checkpoint_file
from jseg.utils.atomic import atomic_write
from jseg.checkpoint.safe_pickle import (JITTOR_MAGIC, CheckpointError, OpaqueObject,
                                    load_checkpoint_file, sniff_checkpoint_format,
                                    unwrap_state_dict)

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints"
MARKER = "PWNED_BY_CHECKPOINT"  # what the malicious fixtures try to create
TENSOR_FILES = ["tensors_zip.pth", "tensors_legacy.pth", "tensors_pickle.pkl",
                "tensors_bigendian.pth"]


def _lookup(obj, name):
    """'nested.list.1.0' -> obj['nested']['list'][1][0]."""
    for part in name.split("."):
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else obj[part]
    return obj


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _assert_one_line_error(excinfo, *needles):
    text = str(excinfo.value)
    assert "\n" not in text, f"error spans several lines: {text!r}"
    for needle in needles:
        assert needle in text, f"{needle!r} not in error: {text!r}"


# ---------------------------------------------------------------------------
# Tensors come back exactly

@pytest.mark.parametrize("name", TENSOR_FILES)
def test_tensors_exact(name):
    loaded = load_checkpoint_file(DATA / name)
    expected = np.load(DATA / "tensors_expected.npz")
    checked = 0
    for key in expected.files:
        try:
            got = _lookup(loaded, key)
        except KeyError:
            continue  # tensors_pickle/bigendian hold a subset
        want = expected[key]
        assert isinstance(got, np.ndarray), f"{key}: {type(got)}"
        assert got.dtype == want.dtype and got.shape == want.shape, \
            f"{key}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}"
        assert np.array_equal(got, want), f"{key}: got {got!r}, want {want!r}"
        checked += 1
    assert checked >= 4, f"only {checked} tensors compared in {name}"


@pytest.mark.parametrize("name", ["tensors_zip.pth", "tensors_legacy.pth"])
def test_tensor_layouts(name):
    d = load_checkpoint_file(DATA / name)
    assert d["scalar_f32"].shape == () and d["scalar_f32"] == np.float32(2.5), d["scalar_f32"]
    assert d["scalar_i64"].shape == () and d["scalar_i64"].dtype == np.int64
    assert d["bf16"].dtype == np.float32  # numpy has no bfloat16: widened exactly
    assert d["transposed"].shape == (6, 4) and not d["transposed"].flags.c_contiguous
    # views of one storage share memory, as in torch; they are writable
    assert np.shares_memory(d["offset_a"], d["offset_b"])
    assert d["offset_a"].flags.writeable
    # a stride-0 (expanded) view addresses one element several times: read-only
    assert d["expanded"].strides[0] == 0 and not d["expanded"].flags.writeable
    assert d["empty"].shape == (0, 3)


@pytest.mark.parametrize("name", ["tensors_zip.pth", "tensors_legacy.pth"])
def test_plain_values(name):
    d = load_checkpoint_file(DATA / name)
    assert d["size"] == (2, 3)
    assert d["bytes"] == b"\x00\xffab"
    assert d["set"] == {1, 2}
    assert d["plain"] == {"int": 3, "float": 0.5, "none": None, "str": "text", "tuple": (1, "a")}
    assert d["nested"]["list"][1][1] == "x"
    assert d["numpy"].dtype == np.int16 and d["numpy"].tolist() == [[1, 2], [3, 4]]


def test_sniff_formats():
    kinds = {name: sniff_checkpoint_format(DATA / name) for name in
             ["tensors_zip.pth", "tensors_legacy.pth", "tensors_pickle.pkl",
              "segnext_jseg_tiny.pkl"]}
    assert kinds == {"tensors_zip.pth": "torch-zip", "tensors_legacy.pth": "torch-legacy",
                     "tensors_pickle.pkl": "pickle",
                     "segnext_jseg_tiny.pkl": "jittor-pickle"}, kinds


def test_framework_metadata_is_inert():
    """mmengine's HistoryBuffer in message_hub loads as an OpaqueObject, nothing imported."""
    before = set(sys.modules)  # other tests may have imported mmengine already
    ckpt = load_checkpoint_file(DATA / "segnext_mmseg_tiny.pth")
    buffer = ckpt["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(buffer, OpaqueObject), type(buffer)
    assert buffer.qualname == "mmengine.logging.history_buffer.HistoryBuffer"
    assert buffer.state["_log_history"].tolist() == [0.5, 0.25], buffer.state
    assert not [m for m in set(sys.modules) - before if m.startswith("mmengine")]


def test_jittor_vars_become_arrays():
    ckpt = load_checkpoint_file(DATA / "segnext_jseg_tiny.pkl")
    weights = ckpt["model"]
    assert all(isinstance(v, np.ndarray) for v in weights.values())
    assert ckpt["meta"]["iter"] == 8000


# ---------------------------------------------------------------------------
# Nothing from the file runs

@pytest.mark.parametrize("name, global_name", [("malicious.pth", "posix.system"),
                                               ("malicious_legacy.pth", "posix.system"),
                                               ("malicious.pkl", "builtins.exec")])
def test_malicious_fixture_refused(name, global_name, tmp_path, monkeypatch):
    path = DATA / name
    raw = path.read_bytes()
    if zipfile.is_zipfile(path):
        raw = zipfile.ZipFile(path).read(f"{path.stem}/data.pkl")
    # the payload really is there: a plain unpickler would run it
    assert global_name.split(".")[1].encode() in raw and MARKER.encode() in raw
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, f"'{global_name}'", str(path))
    assert not (tmp_path / MARKER).exists(), "the payload ran"


def _call_pickle(module, name, *args):
    """Protocol-2 pickle bytes that call module.name(*args) when unpickled."""
    body = pickle.dumps(tuple(args), protocol=2)[2:-1]  # drop PROTO and STOP
    return b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n" + body + b"R."


@pytest.mark.parametrize("module, name, args, needle", [
    ("posix", "system", ("touch " + MARKER,), "'posix.system'"),
    ("os", "system", ("touch " + MARKER,), "'os.system'"),
    ("builtins", "eval", ("open('%s', 'w')" % MARKER,), "'builtins.eval'"),
    ("builtins", "getattr", (1, "real"), "'builtins.getattr'"),
    ("subprocess", "Popen", (["touch", MARKER],), "'subprocess.Popen'"),
    ("__builtin__", "eval", ("1",), "'builtins.eval'"),             # Python 2 spelling
    ("numpy", "ndarray", ((2,),), "numpy.ndarray may only be named"),
    ("torch", "FloatStorage", (4,), "may only name a dtype"),
    ("_codecs", "encode", ("x", "zlib"), "latin-1"),
    ("torch._utils", "_rebuild_tensor_v2", (1, 0, (1,), (1,)), "must be built from a storage"),
    ("numpy.core.multiarray", "_reconstruct", (1, (0,), b"b"), "only allowed for numpy.ndarray"),
])
def test_forbidden_globals_never_run(module, name, args, needle, tmp_path, monkeypatch):
    path = tmp_path / "crafted.pkl"
    path.write_bytes(_call_pickle(module, name, *args))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, needle, str(path))
    assert not (tmp_path / MARKER).exists(), "the payload ran"


@pytest.mark.parametrize("module, name", [("torch", "FloatStorage"), ("_codecs", "encode"),
                                          ("torch", "Size"), ("numpy", "ndarray"),
                                          ("collections", "OrderedDict"), ("numpy", "dtype")])
@pytest.mark.parametrize("slot_state", [False, True])
def test_allowed_globals_cannot_be_modified(module, name, slot_state, tmp_path):
    """pickle's BUILD on an allowed global must fail: it would persist into later loads."""
    state = (None, {"dtype": "int64", "fn": 1}) if slot_state else {"dtype": "int64", "fn": 1}
    body = pickle.dumps(state, protocol=2)[2:-1]
    path = _write(tmp_path, "tamper.pkl", b"\x80\x02c" + module.encode() + b"\n"
                  + name.encode() + b"\n" + body + b"b.")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, str(path))
    assert "holds a" not in str(excinfo.value), str(excinfo.value)  # BUILD itself failed
    test_tensors_exact("tensors_zip.pth")  # later loads unaffected


def test_jittor_checksum_does_not_make_a_file_trusted():
    # malicious.pkl carries a valid SHA1 trailer: integrity is not safety
    data = (DATA / "malicious.pkl").read_bytes()
    assert hashlib.sha1(data[:-28]).digest() == data[-28:-8] and data.endswith(JITTOR_MAGIC)
    with pytest.raises(CheckpointError, match="builtins.exec"):
        load_checkpoint_file(DATA / "malicious.pkl")


# ---------------------------------------------------------------------------
# Bad files: one clear line each

@pytest.mark.parametrize("source, cut, needle", [
    ("segnext_mmseg_tiny.pth", 0.5, "truncated or corrupt zip"),
    ("segnext_mmseg_tiny.pth", 0.98, "truncated or corrupt zip"),
    ("tensors_legacy.pth", 0.9, "truncated"),
    ("mscan_imagenet_tiny.pth", 0.3, "truncated"),
    ("tensors_pickle.pkl", 0.5, "corrupt or truncated pickle"),
    ("segnext_jseg_tiny.pkl", 0.5, "corrupt or truncated pickle"),  # trailer cut off too
])
def test_truncated(source, cut, needle, tmp_path):
    data = (DATA / source).read_bytes()
    path = _write(tmp_path, "cut_" + source, data[:int(len(data) * cut)])
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, needle, str(path))


def test_corrupt_storage_in_zip(tmp_path):
    src = DATA / "tensors_zip.pth"
    data = bytearray(src.read_bytes())
    offset = zipfile.ZipFile(src).getinfo("tensors_zip/data/0").header_offset
    # the local header's name and extra lengths (torch pads the extra field to align data)
    name_len, extra_len = int.from_bytes(data[offset + 26:offset + 28], "little"), \
        int.from_bytes(data[offset + 28:offset + 30], "little")
    data[offset + 30 + name_len + extra_len] ^= 0xFF  # first byte of the storage
    path = _write(tmp_path, "corrupt.pth", bytes(data))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, "CRC", "truncated or corrupt")


def test_corrupt_jittor_checksum(tmp_path):
    data = bytearray((DATA / "segnext_jseg_tiny.pkl").read_bytes())
    data[len(data) // 2] ^= 0x01
    path = _write(tmp_path, "flipped.pkl", bytes(data))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, "SHA1 checksum does not match")


@pytest.mark.parametrize("data, needle", [
    (b"", "the file is empty"),
    (b"model = dict(type='EncoderDecoder')\n", "a text file"),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), "a PNG image"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "a Git LFS pointer"),
    (pickle.dumps([1, 2, 3], protocol=4), "holds a list, not a dict"),
    (pickle.dumps(7, protocol=0), "neither a torch zip archive nor a pickle"),
])
def test_not_a_checkpoint(data, needle, tmp_path):
    path = _write(tmp_path, "weights.pth", data)
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(path)
    _assert_one_line_error(excinfo, needle, str(path))


def test_zip_archives_that_are_not_checkpoints(tmp_path):
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.zeros(2))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(npz)
    _assert_one_line_error(excinfo, "without data.pkl")
    script = tmp_path / "script.pt"
    with zipfile.ZipFile(script, "w") as z:
        z.writestr("script/data.pkl", pickle.dumps({}, protocol=2))
        z.writestr("script/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(script)
    _assert_one_line_error(excinfo, "TorchScript")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(tmp_path / "nope.pth")
    _assert_one_line_error(excinfo, "no such file", "nope.pth")
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint_file(tmp_path)
    _assert_one_line_error(excinfo, "is a directory")


# ---------------------------------------------------------------------------
# unwrap_state_dict

def test_unwrap_containers():
    w = {"a.weight": np.zeros(2), "a.bias": np.ones(2)}
    for obj in (w, {"state_dict": w, "meta": {"epoch": 1}, "optimizer": {"state": {}}},
                {"model": w, "scheduler": {}, "meta": {"epoch": 1}},
                {"model": {"state_dict": w}, "meta": {"epoch": 1}},
                {"state_dict": {"module." + k: v for k, v in w.items()}, "meta": {"epoch": 1}}):
        state, meta = unwrap_state_dict(obj)
        assert sorted(state) == ["a.bias", "a.weight"], (sorted(state), list(obj))
        assert meta in ({}, {"epoch": 1}), meta


def test_unwrap_fixture_with_module_prefix():
    state, meta = unwrap_state_dict(load_checkpoint_file(DATA / "segnext_official_tiny.pth"))
    assert not any(k.startswith("module.") for k in state), list(state)[:3]
    assert meta["CLASSES"] == ("sky", "road", "tree"), meta


def test_unwrap_errors():
    with pytest.raises(CheckpointError) as excinfo:
        unwrap_state_dict({"epoch": 3, "weights": [np.zeros(1)]})
    _assert_one_line_error(excinfo, "no state dict found", "'epoch', 'weights'")
    with pytest.raises(CheckpointError):
        unwrap_state_dict({})


# ---------------------------------------------------------------------------
# atomic_write and our checkpoint format

def _leftovers(directory, keep):
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def test_atomic_write_replaces(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new")
        assert path.read_bytes() == b"old"  # not visible before the block ends
    assert path.read_bytes() == b"new"
    with atomic_write(tmp_path / "out.txt", "w") as f:
        f.write("text ä")
    assert (tmp_path / "out.txt").read_text(encoding="utf-8") == "text ä"
    assert _leftovers(tmp_path, {"out.bin", "out.txt"}) == []


def test_atomic_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"out.bin"}) == []


def test_atomic_write_full_disk(tmp_path, monkeypatch):
    """A write that fails with ENOSPC midway leaves the old file and no temp file."""
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(b"old checkpoint")
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written + len(data) > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += len(data)
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(os, "fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k)))
    with pytest.raises(OSError) as excinfo:
        save_checkpoint_file(path, {"w": np.zeros(1000, np.float32)})
    assert excinfo.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old checkpoint"
    assert _leftovers(tmp_path, {"ckpt.pkl"}) == []


def test_atomic_write_keeps_permissions(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with atomic_write(path) as f:
        f.write(b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640, oct(path.stat().st_mode)


def test_checkpoint_round_trip(tmp_path):
    obj = {"state_dict": {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                          "b": np.array(3, dtype=np.int64),
                          "c": np.ones(2, np.float16)},
           "meta": {"iter": 10, "lr": 1e-4, "name": "x", "classes": ["a", "b"], "none": None,
                    "shape": (2, 3), "loss": np.float64(0.25)}}
    path = tmp_path / "ckpt.pkl"
    save_checkpoint_file(path, obj)
    data = path.read_bytes()
    # jt.save layout: pickle + sha1(pickle) + magic, so jt.load reads it too
    assert data.endswith(JITTOR_MAGIC) and hashlib.sha1(data[:-28]).digest() == data[-28:-8]
    assert sniff_checkpoint_format(path) == "jittor-pickle"
    back = load_checkpoint_file(path)
    for k, v in obj["state_dict"].items():
        got = back["state_dict"][k]
        assert got.dtype == v.dtype and got.shape == v.shape and np.array_equal(got, v), (k, got)
    assert back["meta"] == obj["meta"], back["meta"]


def test_checkpoint_refuses_objects(tmp_path):
    class Thing:
        pass
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(b"old")
    with pytest.raises(TypeError, match=r"the checkpoint\['meta'\]\['obj'\]"):
        save_checkpoint_file(path, {"meta": {"obj": Thing()}})
    assert path.read_bytes() == b"old"
    # dict subclasses (a Config) are saved as plain dicts
    class Config(dict):
        pass
    save_checkpoint_file(path, {"meta": Config(a=Config(b=1))})
    assert load_checkpoint_file(path) == {"meta": {"a": {"b": 1}}}
