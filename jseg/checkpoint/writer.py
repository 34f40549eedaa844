"""Our checkpoint format, written atomically: a pickle of plain data and numpy arrays.

The file is a pickle (protocol 4) of dicts, lists, tuples, str/int/float/bool/None and
numpy arrays and scalars, followed by the SHA1 of the pickle and Jittor's magic
`HCAJSLHD`, the layout `jt.save` writes, so the file also opens with `jt.load`.
`jseg.checkpoint.safe_pickle.load_checkpoint_file` reads it back, checking the SHA1
first. The write goes through `jseg.utils.atomic.atomic_write`: a reader sees the old
file or the complete new one.
"""
import collections
import hashlib
import pickle

import numpy as np

from jseg.utils.atomic import atomic_write
from jseg.utils.failpoint import failpoint

from .safe_pickle import JITTOR_MAGIC

__all__ = ["save_checkpoint_file"]


_PLAIN_TYPES = (str, bytes, int, float, bool, complex, type(None), np.generic)


def _plain(obj, where="the checkpoint"):
    """`obj` as data `load_checkpoint_file` reads back: dict subclasses (a Config)
    become dicts; anything else that is not plain data is refused with its path."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError(f"{where}: numpy arrays of Python objects cannot be saved; "
                            "use numeric arrays")
        return np.asarray(obj)  # subclasses (memmap, matrix) would pickle their class
    if isinstance(obj, _PLAIN_TYPES):
        return obj
    if isinstance(obj, dict):
        items = [(_plain(k, f"{where} (a key)"), _plain(v, f"{where}[{k!r}]"))
                 for k, v in obj.items()]
        return collections.OrderedDict(items) if type(obj) is collections.OrderedDict \
            else dict(items)
    if type(obj) in (list, tuple, set, frozenset):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be "
                    "saved in a checkpoint; convert it to numpy arrays or plain Python data "
                    "(jittor Vars: var.numpy())")


class _HashingWriter:
    """Write-through file wrapper that hashes what passes (pickle streams into it)."""

    def __init__(self, f):
        self.f, self.sha1 = f, hashlib.sha1()

    def write(self, data):
        self.sha1.update(data)
        return self.f.write(data)


def save_checkpoint_file(path, obj):
    """Write `obj` (dicts, lists, tuples, str/int/float/bool/None, numpy arrays and
    scalars) to `path` atomically, in our checkpoint format (see module doc).

    Dict subclasses are saved as plain dicts; other objects raise TypeError naming
    where they are, before anything is written.
    """
    obj = _plain(obj)
    with atomic_write(path) as f:
        writer = _HashingWriter(f)
        pickle.dump(obj, writer, protocol=4)
        f.flush()
        failpoint("mid-write", path)  # the pickle is on disk, its checksum and magic are not
        f.write(writer.sha1.digest())
        f.write(JITTOR_MAGIC)
