"""Read checkpoints safely, without torch and without running code from the file.

`pickle.load` (and `torch.load(weights_only=False)`, `jt.load`) calls whatever
function a pickle names, so a crafted checkpoint can run `os.system`. Here every
global a pickle asks for is looked up in an allow-list (our own stand-ins for
torch's functions, plus a few numpy and builtin types); a name that is not on it
stops the load with a `CheckpointError` naming the global and the file, before
anything is called. torch is never imported. Tensors come back as numpy arrays.

Readable files (the kind is told from the bytes, not from the file name):

- torch zip checkpoints (`torch.save` since 1.6): `<dir>/data.pkl` holds the
  object, each storage is a member `<dir>/data/<key>`, `<dir>/byteorder` says
  little or big endian (files without it are taken as little endian).
- legacy torch checkpoints (`_use_new_zipfile_serialization=False`): pickles of
  the magic number, the protocol version and a sys_info dict, then the object,
  then the list of storage keys, then each storage as an int64 element count
  followed by its raw bytes. (The even older tar format of torch < 0.4 is not read.)
- plain pickles (protocol 2 or higher) of dicts of numpy arrays: our own
  checkpoints and Jittor/JSeg's `jt.save` files. If the file ends with Jittor's 8-byte
  magic `HCAJSLHD`, the 20 bytes before it are the SHA1 of the pickle and are
  checked before anything is unpickled.

Tensors: every storage is read once (lazily, member by member, so a big file is
never held twice in memory) into a writable buffer; each tensor is a numpy view
of its storage with the tensor's offset, shape and strides, so tensors sharing a
storage share memory as in torch. Views whose elements overlap (stride 0) are
read-only. 0-dim tensors stay 0-dim. numpy has no bfloat16: bf16 tensors become
float32 by moving the 16 stored bits to the top of a 32-bit word (exact). Big
endian files are converted to native order (both of these make a copy).

The allow-list (`ALLOWED_GLOBALS`), and why each entry is there:

- torch tensor rebuilding, as torch.save writes it: `torch._utils._rebuild_tensor`,
  `_rebuild_tensor_v2` (every ordinary tensor), `_rebuild_tensor_v3` (dtypes
  without a legacy storage class, e.g. uint16), `_rebuild_parameter`,
  `_rebuild_parameter_with_state` (nn.Parameter), `torch._tensor._rebuild_from_type_v2`
  (tensors carrying Python attributes; only for plain Tensor / Parameter),
  `torch.storage._load_from_bytes` (tensors pickled with plain `pickle`; the
  bytes are a legacy torch file and are read by the same restricted reader).
- the storage classes named in storage references (`torch.FloatStorage`, ...,
  `torch.UntypedStorage`, and `torch.cuda.*Storage` of old GPU checkpoints), and
  the `torch.<dtype>` names `_rebuild_tensor_v3` passes; they only name a dtype.
- `torch.Size` (-> tuple), `torch.device` and `torch.torch_version.TorchVersion`
  (-> str): small values that appear in checkpoint metadata.
- containers and builtins pickle needs for plain data: `collections.OrderedDict`
  (state dicts, backward hooks), `builtins.set`, `frozenset`, `complex`,
  `bytearray`, and `_codecs.encode` (how protocol 2 writes `bytes`; latin-1 only).
- numpy, for arrays and scalars in our own and Jittor/JSeg files and in checkpoint
  metadata, under both the numpy 1.x and 2.x module paths:
  `numpy.core.multiarray._reconstruct` (only with numpy.ndarray), `numpy.ndarray`
  (only as that argument, never called), `numpy.dtype`,
  `numpy.core.multiarray.scalar`, `numpy.core.numeric._frombuffer` (protocol 5).
- `jittor.Var`: how `jt.save` pickles a Var (an ndarray inside); it becomes the ndarray.

The allowed functions are our own stand-ins wrapped in frozen objects (as are
the storage and type names), so a pickle can call them but cannot change them
with pickle's BUILD opcode to affect a later load.

Known harmless metadata classes of training frameworks (`PLACEHOLDER_GLOBALS`:
`argparse.Namespace` in timm/DeiT `args`, mmengine's `HistoryBuffer` in
`message_hub`) are not imported: they load as inert `OpaqueObject`s that only
keep the pickled arguments and state. Everything else is refused.
"""
import collections
import hashlib
import io
import os
import pickle
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib.stride_tricks import as_strided

try:  # numpy >= 2 (numpy 1.26 also has it)
    from numpy._core import multiarray as _np_multiarray
    from numpy._core import numeric as _np_numeric
except ImportError:  # pragma: no cover - older numpy
    from numpy.core import multiarray as _np_multiarray
    from numpy.core import numeric as _np_numeric

__all__ = ["CheckpointError", "OpaqueObject", "load_checkpoint_file", "sniff_checkpoint_format",
           "unwrap_state_dict", "ALLOWED_GLOBALS", "PLACEHOLDER_GLOBALS", "JITTOR_MAGIC",
           "TORCH_LEGACY_MAGIC"]

JITTOR_MAGIC = b"HCAJSLHD"               # jt.save: pickle + sha1(pickle) (20 bytes) + magic
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a legacy torch file
TORCH_LEGACY_PROTOCOL = 1001


class CheckpointError(ValueError):
    """A file cannot be read as a checkpoint; the message names the file and the reason."""


# ---------------------------------------------------------------------------
# dtypes: torch dtype name -> numpy dtype of one stored element.
# bfloat16 is stored as raw uint16 and widened to float32 after reading.

_NUMPY_DTYPES = {
    "float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "u2",
    "int64": "i8", "int32": "i4", "int16": "i2", "int8": "i1",
    "uint64": "u8", "uint32": "u4", "uint16": "u2", "uint8": "u1", "bool": "b1",
    "complex128": "c16", "complex64": "c8",
}

# legacy storage class name -> torch dtype name (UntypedStorage holds bytes)
_STORAGE_CLASSES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64", "UntypedStorage": "uint8",
}

# torch dtypes that exist but have no numpy counterpart; named in the error
_UNSUPPORTED_DTYPES = ("complex32", "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz",
                       "float8_e4m3fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2", "bits8",
                       "bits16", "bits1x8", "bits2x4", "bits4x2", "qint8", "quint8", "qint32",
                       "quint4x2", "quint2x4")


class _Refused(Exception):
    """Raised inside the unpickler; turned into a CheckpointError naming the file."""


class _Frozen:
    """Base of the objects the allow-list hands to pickle. They are shared by every
    load, so pickle's BUILD opcode must not change them (no __dict__, no setattr)."""
    __slots__ = ()

    def __init__(self, **fields):
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise _Refused(f"the pickle tries to set {name!r} on an allowed global")


class _Call(_Frozen):
    """An allowed function, wrapped so that pickle can call it but not modify it."""
    __slots__ = ("fn", "qualname")

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class _DtypeName(str):
    """What `torch.float32` etc. load as: the dtype's name."""
    __slots__ = ()


class _StorageType(_Frozen):
    """What `torch.FloatStorage` etc. load as: only its element dtype is used."""
    __slots__ = ("name", "dtype")

    def __call__(self, *args, **kwargs):
        raise _Refused(f"storage class torch.{self.name} may only name a dtype, not be called")


class _RawStorage:
    """The bytes of one torch storage, read on first use and kept (views share them)."""

    def __init__(self, name, nbytes, read=None, dtype="uint8"):
        self.name, self.nbytes, self._read, self.dtype = name, nbytes, read, dtype
        self._buffer = None

    def buffer(self):
        if self._buffer is None:
            self._buffer = self._read()
        return self._buffer

    def fill(self, buffer):
        self._buffer = buffer


class _TypedStorage:
    """A storage reference as a tensor sees it: raw bytes, a dtype, a byte range."""

    def __init__(self, raw, dtype, byte_offset=0, nbytes=None):
        self.raw, self.dtype = raw, dtype
        self.byte_offset = byte_offset
        self.nbytes = raw.nbytes - byte_offset if nbytes is None else nbytes


class _TensorRef:
    """A tensor to build once its storage bytes are available."""

    def __init__(self, storage, offset, size, stride, dtype, metadata=None):
        if not isinstance(storage, _TypedStorage):
            raise _Refused(f"a tensor must be built from a storage, got {type(storage).__name__}")
        self.storage, self.dtype, self.metadata = storage, dtype, metadata or {}
        try:
            self.offset = int(offset)
            self.size = tuple(int(s) for s in size)
            self.stride = tuple(int(s) for s in stride)
        except (TypeError, ValueError):
            raise _Refused(f"bad tensor geometry: offset={offset!r} size={size!r} "
                           f"stride={stride!r}") from None
        if len(self.size) != len(self.stride):
            raise _Refused(f"tensor size {self.size} and stride {self.stride} differ in length")


class OpaqueObject:
    """Stands in for an allowed metadata object (see PLACEHOLDER_GLOBALS).

    Nothing of the real class is imported or run: the object only keeps the
    arguments it was built with (`args`) and the state pickle gave it (`state`).
    """
    qualname = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<OpaqueObject {self.qualname}>"


# ---------------------------------------------------------------------------
# Our stand-ins for the allowed globals. None of them imports torch.

def _rebuild_tensor(storage, storage_offset, size, stride):
    return _TensorRef(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return _TensorRef(storage, storage_offset, size, stride, getattr(storage, "dtype", None),
                      metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DtypeName):
        raise _Refused(f"_rebuild_tensor_v3 needs a torch dtype, got {dtype!r}")
    return _TensorRef(storage, storage_offset, size, stride, str(dtype), metadata)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return data  # the state holds Python attributes set on the Parameter


class _Marker(_Frozen):
    """What `torch.Tensor`, `torch.nn.parameter.Parameter` and `numpy.ndarray` load as:
    names that other allowed functions accept as arguments; never called."""
    __slots__ = ("name",)

    def __call__(self, *args, **kwargs):
        raise _Refused(f"{self.name} may only be named, not called")


_TENSOR = _Marker(name="torch.Tensor")
_PARAMETER = _Marker(name="torch.nn.parameter.Parameter")
_NDARRAY = _Marker(name="numpy.ndarray")
_TENSOR_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
                      _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
    if not (isinstance(func, _Call) and func.fn in _TENSOR_REBUILDERS) or \
            new_type not in (_TENSOR, _PARAMETER):
        raise _Refused("_rebuild_from_type_v2 is only allowed for plain tensors and parameters")
    return func(*args)


def _load_from_bytes(data):
    if not isinstance(data, (bytes, bytearray)):
        raise _Refused("torch.storage._load_from_bytes needs bytes")
    # the bytes are a whole legacy torch file whose object is one storage
    try:
        storage = _read_legacy(io.BytesIO(bytes(data)), "a storage pickled inside the file",
                               materialise=False)
    except CheckpointError as e:
        raise _Refused(str(e)) from None
    if not isinstance(storage, _TypedStorage):
        raise _Refused("torch.storage._load_from_bytes did not hold a storage")
    return storage


def _torch_size(dims=()):
    return tuple(int(d) for d in dims)


def _as_text(value="", *rest):
    if not isinstance(value, str):
        raise _Refused(f"expected a string, got {type(value).__name__}")
    return str(value)


def _torch_device(kind, index=None):
    text = _as_text(kind)
    return text if index is None else f"{text}:{int(index)}"


def _codecs_encode(text, encoding="utf-8"):
    # protocol 2 writes bytes b as _codecs.encode(b.decode('latin1'), 'latin1')
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode is only allowed for latin-1 text, "
                       f"got encoding {encoding!r}")
    return text.encode("latin1")


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise _Refused("numpy _reconstruct is only allowed for numpy.ndarray")
    return _np_multiarray._reconstruct(np.ndarray, shape, dtype)


def _jittor_var(data):
    if not isinstance(data, np.ndarray):
        raise _Refused(f"jittor.Var must wrap a numpy array, got {type(data).__name__}")
    return data


def _build_allowed_globals():
    functions = {
        "torch._utils._rebuild_tensor": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter_with_state,
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.tensor._rebuild_from_type_v2": _rebuild_from_type_v2,  # torch < 1.8 module name
        "torch.storage._load_from_bytes": _load_from_bytes,
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "torch.torch_version.TorchVersion": _as_text,
        "_codecs.encode": _codecs_encode,
        "jittor.Var": _jittor_var,
    }
    for core in ("numpy.core", "numpy._core"):
        functions[f"{core}.multiarray._reconstruct"] = _np_reconstruct
        functions[f"{core}.numeric._frombuffer"] = _np_numeric._frombuffer
    table = {name: _Call(fn=fn, qualname=name) for name, fn in functions.items()}
    # built-in types and functions: pickle cannot set attributes on them
    table.update({"collections.OrderedDict": collections.OrderedDict, "builtins.set": set,
                  "builtins.frozenset": frozenset, "builtins.complex": complex,
                  "builtins.bytearray": bytearray, "numpy.dtype": np.dtype,
                  "numpy.core.multiarray.scalar": _np_multiarray.scalar,
                  "numpy._core.multiarray.scalar": _np_multiarray.scalar})
    table.update({"torch.Tensor": _TENSOR, "torch._tensor.Tensor": _TENSOR,
                  "torch.nn.parameter.Parameter": _PARAMETER, "numpy.ndarray": _NDARRAY})
    for name, dtype in _STORAGE_CLASSES.items():
        for module in ("torch", "torch.cuda"):
            table[f"{module}.{name}"] = _StorageType(name=name, dtype=dtype)
    table["torch.storage.UntypedStorage"] = _StorageType(name="UntypedStorage", dtype="uint8")
    for dtype in list(_NUMPY_DTYPES) + list(_UNSUPPORTED_DTYPES):
        table[f"torch.{dtype}"] = _DtypeName(dtype)
    return table


ALLOWED_GLOBALS = _build_allowed_globals()

PLACEHOLDER_GLOBALS = (
    "argparse.Namespace",                            # `args` in timm / DeiT checkpoints
    "mmengine.logging.history_buffer.HistoryBuffer",  # `message_hub` in mmengine checkpoints
)

_PY2_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class _RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves globals only through the allow-list."""

    def __init__(self, file, persistent_load=None):
        # latin1: Python 2 `str` payloads (old numpy arrays) are raw bytes
        super().__init__(file, encoding="latin1")
        self._persistent_load = persistent_load

    def find_class(self, module, name):
        module = _PY2_MODULES.get(module, module)
        qualname = f"{module}.{name}"
        if qualname in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[qualname]
        if qualname in PLACEHOLDER_GLOBALS:
            # a new class for every load: what one file does to it cannot reach another
            return type(name, (OpaqueObject,), {"qualname": qualname})
        raise _Refused(f"refused to load: the pickle asks for the global '{qualname}', "
                       "which is not on the allow-list of tensor and plain-data types "
                       "(a malicious file, or one holding Python objects other than weights)")

    def persistent_load(self, pid):
        if self._persistent_load is None:
            raise _Refused("the pickle refers to external storages, but it is not a torch file")
        return self._persistent_load(pid)


def _unpickle(file, source, persistent_load=None):
    """Load one pickle from `file`; every failure becomes a CheckpointError."""
    try:
        return _RestrictedUnpickler(file, persistent_load).load()
    except CheckpointError:
        raise
    except _Refused as e:
        raise CheckpointError(f"{source}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{source}: the pickle nests too deeply to be read") from None
    except MemoryError:
        raise CheckpointError(f"{source}: the pickle asks for more memory than there is "
                              "(corrupt or malicious)") from None
    except Exception as e:  # whatever a corrupt byte stream makes pickle raise
        raise CheckpointError(f"{source}: corrupt or truncated pickle "
                              f"({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------
# From tensor references to numpy arrays

def _overlapping(size, stride):
    """True when two indices of a tensor with this size/stride can address one element."""
    reach = 0
    for st, sz in sorted((st, sz) for sz, st in zip(size, stride) if sz > 1):
        if st <= reach:
            return True
        reach += (sz - 1) * st
    return False


def _to_array(ref, byteorder, source):
    if ref.dtype not in _NUMPY_DTYPES:
        raise CheckpointError(f"{source}: tensor dtype torch.{ref.dtype} has no numpy "
                              "counterpart and cannot be read")
    storage = ref.storage
    elem = np.dtype(_NUMPY_DTYPES[ref.dtype]).newbyteorder("<" if byteorder == "little" else ">")
    raw = storage.raw.buffer()[storage.byte_offset:storage.byte_offset + storage.nbytes]
    count = len(raw) // elem.itemsize
    base = raw[:count * elem.itemsize].view(elem)
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise CheckpointError(f"{source}: tensor with negative size, stride or offset")
    if 0 in ref.size:
        array = np.zeros(ref.size, dtype=elem)
    else:
        last = ref.offset + sum((sz - 1) * st for sz, st in zip(ref.size, ref.stride))
        if last >= count:
            raise CheckpointError(
                f"{source}: a tensor of shape {ref.size} reaches element {last} of storage "
                f"{storage.raw.name}, which has only {count} (truncated or corrupt)")
        writeable = base.flags.writeable and not _overlapping(ref.size, ref.stride)
        array = as_strided(base[ref.offset:], shape=ref.size,
                           strides=tuple(st * elem.itemsize for st in ref.stride),
                           writeable=writeable)
    if not elem.isnative:
        array = array.astype(elem.newbyteorder("="))
    if ref.dtype == "bfloat16":
        # bfloat16 is the top half of a float32: widen the bits, exactly
        array = (array.astype(np.uint32) << 16).view(np.float32)
    if ref.metadata.get("neg"):
        array = np.negative(array)
    if ref.metadata.get("conj"):
        array = np.conj(array)
    return array


def _materialise(obj, byteorder, source):
    """Replace every tensor reference inside containers by its numpy array."""
    done = {}

    def walk(x):
        if isinstance(x, (str, bytes, int, float, bool, type(None), np.ndarray, np.generic)):
            return x
        key = id(x)
        if key in done:
            return done[key]
        if isinstance(x, _TensorRef):
            done[key] = _to_array(x, byteorder, source)
        elif isinstance(x, _TypedStorage):
            raise CheckpointError(f"{source}: holds a bare torch storage; only tensors are read")
        elif isinstance(x, dict):
            done[key] = x
            for k in list(x):
                x[k] = walk(x[k])
        elif isinstance(x, list):
            done[key] = x
            x[:] = [walk(v) for v in x]
        elif isinstance(x, tuple):
            done[key] = x
            done[key] = type(x)(walk(v) for v in x) if type(x) is tuple else x
        elif isinstance(x, OpaqueObject):
            done[key] = x
            x.args, x.state = walk(x.args), walk(x.state)
        else:
            done[key] = x
        return done[key]

    try:
        return walk(obj)
    except RecursionError:
        raise CheckpointError(f"{source}: the object nests too deeply to be read") from None


# ---------------------------------------------------------------------------
# File formats

def _read_exact(f, n, what, source):
    buffer = bytearray(n)
    got = f.readinto(buffer)
    if got != n:
        raise CheckpointError(f"{source}: file ends inside {what} ({got} of {n} bytes; truncated)")
    return np.frombuffer(buffer, dtype=np.uint8)


def _storage_ref(pid, source):
    """Decode a torch storage reference: (storage type, key, location, numel[, view])."""
    if not isinstance(pid, tuple) or not pid:
        raise CheckpointError(f"{source}: malformed storage reference {pid!r}")
    kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
    if kind == "module":
        raise CheckpointError(f"{source}: the file pickles a whole nn.Module; only state dicts "
                              "can be read safely: save model.state_dict() instead")
    if kind != "storage" or len(pid) not in (5, 6):
        raise CheckpointError(f"{source}: malformed storage reference {pid!r}")
    storage_type, key, numel = pid[1], pid[2], pid[4]
    if not isinstance(storage_type, _StorageType):
        raise CheckpointError(f"{source}: storage reference without a storage class: {pid!r}")
    if not isinstance(numel, int) or numel < 0:
        raise CheckpointError(f"{source}: bad storage size {numel!r}")
    key = key.decode("ascii") if isinstance(key, bytes) else str(key)
    view = pid[5] if len(pid) == 6 else None
    return storage_type.dtype, key, numel, view


def _itemsize(dtype):
    return np.dtype(_NUMPY_DTYPES[dtype]).itemsize if dtype in _NUMPY_DTYPES else 1


def _read_zip(f, source):
    try:
        archive = zipfile.ZipFile(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{source}: truncated or corrupt zip archive ({e})") from None
    with archive:
        names = archive.namelist()
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
            raise CheckpointError(f"{source}: a TorchScript archive (torch.jit.save), not a "
                                  "checkpoint; save model.state_dict() with torch.save instead")
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pickles:
            raise CheckpointError(f"{source}: a zip archive without data.pkl, not a torch "
                                  "checkpoint")
        prefix = pickles[0][:-len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise CheckpointError(f"{source}: unknown byte order {byteorder!r}")
        raws = {}

        def read_member(name, nbytes):
            def read():
                try:
                    info = archive.getinfo(name)
                    if info.file_size < nbytes:
                        raise CheckpointError(f"{source}: storage {name} has {info.file_size} "
                                              f"bytes, {nbytes} expected (corrupt)")
                    with archive.open(info) as member:
                        return _read_exact(member, nbytes, f"storage {name}", source)
                except KeyError:
                    raise CheckpointError(f"{source}: storage {name} is missing from the "
                                          "archive (corrupt)") from None
                except CheckpointError:
                    raise
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
                    raise CheckpointError(f"{source}: cannot read storage {name} "
                                          f"({e}; truncated or corrupt)") from None
            return read

        def persistent_load(pid):
            dtype, key, numel, _ = _storage_ref(pid, source)
            nbytes = numel * _itemsize(dtype)
            if key not in raws:
                name = f"{prefix}data/{key}"
                raws[key] = _RawStorage(name, nbytes, read_member(name, nbytes))
            return _TypedStorage(raws[key], dtype, 0, nbytes)

        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise CheckpointError(f"{source}: cannot read {pickles[0]} ({e}; truncated or "
                                  "corrupt)") from None
        obj = _unpickle(io.BytesIO(data), source, persistent_load)
        return _materialise(obj, byteorder, source)


def _read_legacy(f, source, header_done=False, materialise=True):
    """Legacy torch format from file object `f` (positioned at its start, or after the
    magic number when header_done). materialise=False returns the object with tensor
    references still unresolved (for a storage pickled inside another pickle)."""
    if not header_done:
        magic = _unpickle(f, source)
        if magic != TORCH_LEGACY_MAGIC:
            raise CheckpointError(f"{source}: not a legacy torch file (bad magic number)")
    protocol = _unpickle(f, source)
    if protocol != TORCH_LEGACY_PROTOCOL:
        raise CheckpointError(f"{source}: unsupported legacy torch protocol {protocol!r}")
    sys_info = _unpickle(f, source)
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    raws, views = {}, {}

    def persistent_load(pid):
        dtype, key, numel, view = _storage_ref(pid, source)
        if key not in raws:
            raws[key] = _RawStorage(f"storage {key}", numel * _itemsize(dtype), dtype=dtype)
        raw = raws[key]
        if view is None:
            return _TypedStorage(raw, dtype)
        view_key, offset, view_size = view
        if view_key not in views:
            item = _itemsize(dtype)
            views[view_key] = _TypedStorage(raw, dtype, int(offset) * item, int(view_size) * item)
        return views[view_key]

    obj = _unpickle(f, source, persistent_load)
    keys = _unpickle(f, source)
    if not isinstance(keys, list):
        raise CheckpointError(f"{source}: corrupt legacy torch file (no storage key list)")
    for key in keys:
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        if key not in raws:
            raise CheckpointError(f"{source}: storage {key} is listed but never used (corrupt)")
        raw = raws[key]
        header = f.read(8)
        if len(header) != 8:
            raise CheckpointError(f"{source}: file ends before storage {key} (truncated)")
        numel = struct.unpack("<q" if little else ">q", header)[0]
        nbytes = numel * _itemsize(raw.dtype)
        if nbytes != raw.nbytes:
            raise CheckpointError(f"{source}: storage {key} holds {nbytes} bytes, "
                                  f"{raw.nbytes} expected (corrupt)")
        raw.fill(_read_exact(f, nbytes, f"storage {key}", source))
    missing = [k for k, raw in raws.items() if raw._buffer is None]
    if missing:
        raise CheckpointError(f"{source}: storages {missing} have no data (corrupt)")
    if not materialise:
        return obj
    return _materialise(obj, "little" if little else "big", source)


def _verify_jittor_checksum(f, size, source):
    """Check the SHA1 of a jt.save-style file; returns the pickle's length."""
    if size < 28 + 2:
        raise CheckpointError(f"{source}: too short for a pickle with a checksum")
    f.seek(size - 28)
    expected = f.read(20)
    f.seek(0)
    digest, left = hashlib.sha1(), size - 28
    while left:
        chunk = f.read(min(left, 1 << 22))
        if not chunk:
            raise CheckpointError(f"{source}: file shrank while being read")
        digest.update(chunk)
        left -= len(chunk)
    if digest.digest() != expected:
        raise CheckpointError(f"{source}: SHA1 checksum does not match the pickle (corrupt "
                              "or truncated file; download or save it again)")
    f.seek(0)
    return size - 28


def _describe_start(head):
    known = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
             b"%PDF": "a PDF document", b"\x93NUMPY": "a .npy array (use numpy.load)",
             b"\x1f\x8b": "a gzip archive", b"<": "an HTML/XML document",
             b"{": "a JSON/text file", b"version https://git-lfs": "a Git LFS pointer"}
    for magic, what in known.items():
        if head.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:64]):
        return "a text file"
    return f"unknown data starting with {head[:8]!r}"


def sniff_checkpoint_format(path):
    """Which reader `load_checkpoint_file` will use: 'torch-zip', 'torch-legacy',
    'jittor-pickle' (pickle + SHA1 + magic) or 'pickle'. Reads only a few bytes."""
    source = os.fspath(path)
    try:
        size = os.path.getsize(source)
        with open(source, "rb") as f:
            head = f.read(512)
            if head.startswith(b"PK\x03\x04"):
                return "torch-zip"
            if len(head) >= 262 and head[257:262] == b"ustar":
                raise CheckpointError(f"{source}: legacy tar checkpoint of torch < 0.4; "
                                      "load and re-save it with a newer torch first")
            if not head:
                raise CheckpointError(f"{source}: not a checkpoint: the file is empty")
            if len(head) < 2 or head[0] != 0x80 or not 2 <= head[1] <= 5:
                raise CheckpointError(f"{source}: not a checkpoint: neither a torch zip archive "
                                      f"nor a pickle; it looks like {_describe_start(head)}")
            f.seek(max(size - len(JITTOR_MAGIC), 0))
            if f.read() == JITTOR_MAGIC:
                return "jittor-pickle"
            if head[2:3] == b"\x8a" and head[3:4] == b"\x0a" and \
                    int.from_bytes(head[4:14], "little", signed=True) == TORCH_LEGACY_MAGIC:
                return "torch-legacy"  # LONG1 opcode with the 10-byte magic number
            return "pickle"
    except FileNotFoundError:
        raise CheckpointError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{source}: is a directory, not a checkpoint file") from None
    except PermissionError:
        raise CheckpointError(f"{source}: permission denied") from None


def load_checkpoint_file(path):
    """Read a checkpoint (torch zip, legacy torch, pickle or jt.save file) safely.

    Returns the checkpoint's top-level dict with every tensor as a numpy array.
    Raises CheckpointError (one line naming the file) when the file is missing,
    truncated, corrupt, not a checkpoint, or asks for a global off the allow-list.
    """
    source = os.fspath(path)
    kind = sniff_checkpoint_format(source)
    with open(source, "rb") as f:
        if kind == "torch-zip":
            obj = _read_zip(f, source)
        elif kind == "torch-legacy":
            obj = _read_legacy(f, source)
        else:
            if kind == "jittor-pickle":
                _verify_jittor_checksum(f, os.path.getsize(source), source)
            obj = _unpickle(f, source)
            if isinstance(obj, int) and obj == TORCH_LEGACY_MAGIC:
                # a legacy torch file pickled with a protocol the sniffer does not spot
                obj = _read_legacy(f, source, header_done=True)
            else:
                obj = _materialise(obj, "little", source)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict; a "
                              "checkpoint is a dict (a state dict or a container of one)")
    return obj


# ---------------------------------------------------------------------------
# Containers

STATE_DICT_KEYS = ("state_dict", "model")  # mmcv/mmengine/timm, then Jittor/JSeg/DeiT


def _is_flat_state_dict(obj):
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def unwrap_state_dict(obj):
    """Find the state dict inside a checkpoint; returns (flat_dict, meta).

    Accepts a flat dict of arrays, or a container with the weights under
    'state_dict' (mmcv, mmengine, timm, ours) or 'model' (Jittor/JSeg, DeiT), nested up
    to twice. Everything else in the container (optimizer, scheduler,
    message_hub, ...) is left out; `meta` is the container's 'meta' dict ({} if
    none). A 'module.' prefix (DataParallel) on every key is removed.
    """
    meta = {}
    for _ in range(3):
        if _is_flat_state_dict(obj):
            break
        if not isinstance(obj, dict):
            raise CheckpointError(f"expected a dict of arrays, found a {type(obj).__name__}")
        if not meta and isinstance(obj.get("meta"), dict):
            meta = obj["meta"]
        inner = next((obj[k] for k in STATE_DICT_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(obj)[:10])
            non_arrays = [k for k, v in obj.items() if not isinstance(v, np.ndarray)][:5]
            raise CheckpointError(
                f"no state dict found: the top-level keys are {keys}; expected a 'state_dict' "
                f"or 'model' entry, or a flat dict of arrays (non-array entries: {non_arrays})")
        obj = inner
    else:
        raise CheckpointError("no state dict found within three levels of nesting")
    state = dict(obj)
    while state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, dict(meta)
