"""Write PyTorch's checkpoint format (what `torch.save` writes) without torch, atomically.

The file is the zip archive `torch.save` writes by default since torch 1.6, as torch 2.13
lays it out (every record stored uncompressed, its data starting on a 64-byte boundary):

    archive/data.pkl                the object: a protocol-2 pickle in which every tensor
                                    is a `torch._utils._rebuild_tensor_v2` call on a
                                    storage named by a persistent id
                                    ('storage', torch.FloatStorage, '<key>', 'cpu', numel)
    archive/.format_version         "1": storage keys are numbered in pickling order
    archive/.storage_alignment      "64"
    archive/byteorder               "little"
    archive/data/<key>              the raw little-endian bytes of one storage
    archive/version                 "3\\n", the zip container's format version
    archive/.data/serialization_id  an id of the archive from its record names and data

The pickle is written opcode by opcode here (`_PickleWriter`), because the globals a torch
pickle names (`torch._utils._rebuild_tensor_v2`, `torch.FloatStorage`) cannot be pickled
by Python's pickler without importing torch. It holds only what
`torch.load(weights_only=True)` accepts: dicts, `collections.OrderedDict`, lists, tuples,
str, bytes, int, float, bool, None and tensors; `jseg.checkpoint.safe_pickle` reads it too.
numpy arrays become tensors of the same dtype, shape and values (uint16/32/64, which have no
legacy storage class, go through `_rebuild_tensor_v3` as torch writes them); numpy scalars
become Python numbers. Two references to one array share one storage, as in torch.

Everything is checked and the pickle built before the first byte is written; the archive is
then written through `jseg.utils.atomic.atomic_write`, so on any error nothing is left
behind and an existing file at the path is untouched.
"""
import collections
import hashlib
import pickle
import struct
import zlib

import numpy as np

from jseg.utils.atomic import atomic_write
from jseg.utils.failpoint import failpoint

__all__ = ["save_torch_checkpoint", "ARCHIVE_NAME", "STORAGE_ALIGNMENT"]

ARCHIVE_NAME = "archive"  # the folder torch.save uses when writing to a file object (mmengine)
STORAGE_ALIGNMENT = 64    # torch aligns the data of every record to 64 bytes
FORMAT_VERSION = "1"
FILE_FORMAT_VERSION = "3\n"

# numpy dtype name -> torch's legacy storage class (pickled by name, as torch.save does)
_STORAGE_CLASSES = {
    "float64": "DoubleStorage", "float32": "FloatStorage", "float16": "HalfStorage",
    "int64": "LongStorage", "int32": "IntStorage", "int16": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
    "complex128": "ComplexDoubleStorage", "complex64": "ComplexFloatStorage",
}
# dtypes without a legacy storage class: an UntypedStorage (numel = bytes) and the dtype
_UNTYPED_DTYPES = ("uint16", "uint32", "uint64")


class _PickleWriter:
    """Protocol-2 pickle of plain data with tensors as torch writes them.

    `storages` collects (key, its little-endian C-contiguous data, the array given) in
    pickling order.
    Only globals are memoised; everything else is written where it occurs.
    """

    def __init__(self):
        self.out = bytearray(pickle.PROTO + bytes([2]))
        self.memo = {}
        self.storages = []
        self._keys = {}    # id(array) -> storage key
        self._open = set()  # ids of the containers being written (a cycle is an error)

    def dump(self, obj):
        self.value(obj, "the checkpoint")
        self.out += pickle.STOP
        return bytes(self.out)

    # -- opcodes ------------------------------------------------------------------------------
    def global_(self, module, name):
        key = (module, name)
        if key in self.memo:
            index = self.memo[key]
            self.out += (pickle.BINGET + bytes([index]) if index < 256
                         else pickle.LONG_BINGET + struct.pack("<I", index))
            return
        self.out += pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii")
        index = self.memo[key] = len(self.memo)
        self.out += (pickle.BINPUT + bytes([index]) if index < 256
                     else pickle.LONG_BINPUT + struct.pack("<I", index))

    def int_(self, x):
        if 0 <= x < 256:
            self.out += pickle.BININT1 + bytes([x])
        elif 0 <= x < 65536:
            self.out += pickle.BININT2 + struct.pack("<H", x)
        elif -2 ** 31 <= x < 2 ** 31:
            self.out += pickle.BININT + struct.pack("<i", x)
        else:  # two's complement, little endian, as short as pickle's encode_long makes it
            data = x.to_bytes((x.bit_length() >> 3) + 1, "little", signed=True)
            if x < 0 and len(data) > 1 and data[-1] == 0xFF and data[-2] & 0x80:
                data = data[:-1]
            self.out += (pickle.LONG1 + bytes([len(data)]) if len(data) < 256
                         else pickle.LONG4 + struct.pack("<i", len(data)))
            self.out += data

    def str_(self, text):
        data = text.encode("utf-8", "surrogatepass")
        self.out += pickle.BINUNICODE + struct.pack("<I", len(data)) + data

    def tuple_(self, items, where):
        if not items:
            self.out += pickle.EMPTY_TUPLE
            return
        if len(items) > 3:
            self.out += pickle.MARK
        for i, item in enumerate(items):
            self.value(item, f"{where}[{i}]")
        self.out += {1: pickle.TUPLE1, 2: pickle.TUPLE2, 3: pickle.TUPLE3}.get(
            len(items), pickle.TUPLE)

    # -- values -------------------------------------------------------------------------------
    def value(self, x, where):
        if x is None:
            self.out += pickle.NONE
        elif isinstance(x, (bool, np.bool_)):
            self.out += pickle.NEWTRUE if x else pickle.NEWFALSE
        elif isinstance(x, np.ndarray):
            self.tensor(x, where)
        elif isinstance(x, np.generic):  # before float: np.float64 is a float subclass
            if x.dtype.kind not in "iuf":
                raise TypeError(f"{where}: a numpy {x.dtype} scalar cannot be saved in a torch "
                                "checkpoint; use Python numbers or arrays")
            self.value(x.item(), where)
        elif isinstance(x, int):
            self.int_(int(x))
        elif isinstance(x, float):
            self.out += pickle.BINFLOAT + struct.pack(">d", x)
        elif isinstance(x, str):
            self.str_(str(x))
        elif isinstance(x, bytes):
            # protocol 2 has no bytes opcode: _codecs.encode(text, 'latin1'), as pickle writes
            self.global_("_codecs", "encode")
            self.str_(x.decode("latin1"))
            self.str_("latin1")
            self.out += pickle.TUPLE2 + pickle.REDUCE
        elif isinstance(x, (dict, list, tuple)):
            if id(x) in self._open:
                raise TypeError(f"{where}: the object contains itself; a checkpoint must be a "
                                "tree of containers")
            self._open.add(id(x))
            try:
                self.container(x, where)
            finally:
                self._open.discard(id(x))
        else:
            raise TypeError(f"{where}: a {type(x).__module__}.{type(x).__qualname__} cannot be "
                            "saved in a torch checkpoint; use dicts, lists, tuples, str, int, "
                            "float, bool, None and numpy arrays")

    def container(self, x, where):
        if isinstance(x, dict):
            if isinstance(x, collections.OrderedDict):  # OrderedDict() then its items
                self.global_("collections", "OrderedDict")
                self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
            else:  # other dict subclasses (a Config) are saved as plain dicts
                self.out += pickle.EMPTY_DICT
            if x:
                self.out += pickle.MARK
                for key, item in x.items():
                    self.value(key, f"{where} (a key)")
                    self.value(item, f"{where}[{key!r}]")
                self.out += pickle.SETITEMS
        elif isinstance(x, list):
            self.out += pickle.EMPTY_LIST
            if x:
                self.out += pickle.MARK
                for i, item in enumerate(x):
                    self.value(item, f"{where}[{i}]")
                self.out += pickle.APPENDS
        else:
            self.tuple_(tuple(x), where)

    def tensor(self, array, where):
        dtype = array.dtype
        name = dtype.newbyteorder("=").name if dtype.fields is None else "structured"
        if name not in _STORAGE_CLASSES and name not in _UNTYPED_DTYPES:
            known = ", ".join(list(_STORAGE_CLASSES) + list(_UNTYPED_DTYPES))
            raise TypeError(f"{where}: numpy arrays of dtype {dtype} have no torch counterpart; "
                            f"use one of {known}")
        key = self._keys.get(id(array))
        if key is None:
            key = self._keys[id(array)] = str(len(self.storages))
            data = np.asarray(array, dtype=dtype.newbyteorder("<"), order="C")  # keeps 0-dim
            self.storages.append((key, data, array))  # `array` kept alive: its id is the key
        shape = tuple(int(s) for s in array.shape)
        stride, step = [], 1
        for size in reversed(shape):  # contiguous strides as torch computes them
            stride.insert(0, step)
            step *= max(size, 1)
        numel = int(array.size)
        v3 = name in _UNTYPED_DTYPES
        self.global_("torch._utils", "_rebuild_tensor_v3" if v3 else "_rebuild_tensor_v2")
        self.out += pickle.MARK
        # the storage: a persistent id ('storage', storage class, key, location, numel)
        self.out += pickle.MARK
        self.str_("storage")
        if v3:
            self.global_("torch.storage", "UntypedStorage")
        else:
            self.global_("torch", _STORAGE_CLASSES[name])
        self.str_(key)
        self.str_("cpu")
        self.int_(numel * dtype.itemsize if v3 else numel)
        self.out += pickle.TUPLE + pickle.BINPERSID
        # storage_offset, size, stride, requires_grad, backward_hooks (an empty OrderedDict)
        self.int_(0)
        self.tuple_(shape, where)
        self.tuple_(tuple(stride), where)
        self.out += pickle.NEWFALSE
        self.global_("collections", "OrderedDict")
        self.out += pickle.EMPTY_TUPLE + pickle.REDUCE
        if v3:
            self.global_("torch", name)
        self.out += pickle.TUPLE + pickle.REDUCE


# ---------------------------------------------------------------------------
# The zip container: stored records, each one's data aligned to STORAGE_ALIGNMENT

_MAX32 = 0xFFFFFFFF        # a 32-bit size or offset field saying: see the zip64 field
_ZIP64_LIMIT = _MAX32      # sizes and offsets from here on need zip64 fields
_PADDING_ID = 0x4246       # "FB", the extra field torch pads its local headers with


class _ZipWriter:
    """Writes stored (uncompressed) zip records to a file, as torch's writer lays them out:
    a padding extra field in each local header puts the record's data on a 64-byte
    boundary, and the archive ends with zip64 end records (plus the classic one)."""

    def __init__(self, f):
        self.f, self.offset, self.entries = f, 0, []

    def _write(self, data):
        self.f.write(data)
        self.offset += memoryview(data).nbytes

    def add(self, name, data):
        data = memoryview(data).cast("B")
        name_bytes = name.encode("utf-8")
        size, crc, header_offset = data.nbytes, zlib.crc32(data), self.offset
        zip64 = size >= _ZIP64_LIMIT or header_offset >= _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if zip64 else b""
        pad = -(header_offset + 30 + len(name_bytes) + len(extra)) % STORAGE_ALIGNMENT
        if 0 < pad < 4:  # too small for an extra field's own 4-byte header
            pad += STORAGE_ALIGNMENT
        if pad:
            extra += struct.pack("<HH", _PADDING_ID, pad - 4) + b"Z" * (pad - 4)
        stored_size = _MAX32 if zip64 else size
        self._write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if zip64 else 20, 0, 0, 0, 0,
                                crc, stored_size, stored_size, len(name_bytes), len(extra)))
        self._write(name_bytes + extra)
        assert self.offset % STORAGE_ALIGNMENT == 0, f"record {name} starts at {self.offset}"
        self._write(data)
        self.entries.append((name_bytes, crc, size, header_offset))

    def finish(self):
        directory_offset = self.offset
        for name_bytes, crc, size, header_offset in self.entries:
            zip64 = size >= _ZIP64_LIMIT or header_offset >= _ZIP64_LIMIT
            extra = struct.pack("<HHQQQ", 1, 24, size, size, header_offset) if zip64 else b""
            size32 = _MAX32 if zip64 else size
            offset32 = _MAX32 if zip64 else header_offset
            self._write(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if zip64 else 20,
                                    45 if zip64 else 20, 0, 0, 0, 0, crc, size32, size32,
                                    len(name_bytes), len(extra), 0, 0, 0, 0, offset32))
            self._write(name_bytes + extra)
        directory_size = self.offset - directory_offset
        count = len(self.entries)
        end64 = self.offset
        self._write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count,
                                directory_size, directory_offset))
        self._write(struct.pack("<IIQI", 0x07064B50, 0, end64, 1))
        # the classic end record; a field that does not fit says "see the zip64 record"
        count16 = count if count < 0xFFFF else 0xFFFF
        size32 = directory_size if directory_size < _ZIP64_LIMIT else _MAX32
        offset32 = directory_offset if directory_offset < _ZIP64_LIMIT else _MAX32
        self._write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count16, count16, size32,
                                offset32, 0))


def _serialization_id(names, crc):
    """20 digits from the record names and 20 from the CRC32 of all record data, as torch
    composes its id (the digits differ from torch's own: it is an id, not a checksum)."""
    name_hash = int.from_bytes(hashlib.sha256("\n".join(names).encode()).digest()[:8], "little")
    return f"{name_hash:020d}{crc:020d}"


def save_torch_checkpoint(path, obj):
    """Write `obj` to `path` atomically in torch.save's zip format (see module doc).

    `obj`: nested dicts (OrderedDicts stay OrderedDicts), lists, tuples, str, bytes, int,
    float, bool, None, numpy arrays of a numeric or bool dtype, numpy scalars. Anything else
    raises TypeError naming where it is, before anything is written; OSError when the file
    cannot be written (then an existing file at `path` is left as it was).
    """
    writer = _PickleWriter()
    pickled = writer.dump(obj)
    records = [("data.pkl", pickled), (".format_version", FORMAT_VERSION.encode()),
               (".storage_alignment", str(STORAGE_ALIGNMENT).encode()),
               ("byteorder", b"little")]
    with atomic_write(path) as f:
        zf = _ZipWriter(f)
        names, crc = [], 0

        def add(name, data):
            nonlocal crc
            zf.add(f"{ARCHIVE_NAME}/{name}", data)
            names.append(name)
            crc = zlib.crc32(memoryview(data).cast("B"), crc)

        for name, data in records:
            add(name, data)
        failpoint("mid-write", path)  # the pickle is on disk, the storages are not
        for key, array, _ in writer.storages:
            add(f"data/{key}", array.reshape(-1).view(np.uint8))
        add("version", FILE_FORMAT_VERSION.encode())
        zf.add(f"{ARCHIVE_NAME}/.data/serialization_id", _serialization_id(names, crc).encode())
        zf.finish()
