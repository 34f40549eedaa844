"""The OpenBLAS that jseg.ops.sgemm calls, found without importing Jittor.

Two candidates, in this order:
- `scipy-openblas32` (a jseg dependency): the OpenBLAS build numpy's and scipy's own
  wheels are made from, as a package; 32-bit integers, `scipy_` symbol prefix
  (`scipy_cblas_sgemm`). OpenBLAS 0.3.34 there runs SegNeXt's 1x1-conv shapes 5-50%
  faster than the 0.3.23 that numpy 1.26's wheels bundle (2-core AMD EPYC, Zen 3).
- numpy's bundled one: manylinux numpy wheels ship numpy.libs/libopenblas64_*.so, 64-bit
  integers and the `64_` symbol suffix (`cblas_sgemm64_`).
A numpy built against the system BLAS has none; without either, jseg keeps Jittor's matmul.
`JSEG_OPENBLAS=numpy` (or `=none`) in the environment skips the first (or both); any
other value warns and is ignored.

Both read OPENBLAS_NUM_THREADS and OPENBLAS_THREAD_TIMEOUT when they load.
"""
import ctypes
import glob
import os
import warnings
from dataclasses import dataclass

__all__ = ["Blas", "library", "set_threads"]

CHOICES = ("scipy-openblas32", "numpy", "none")


@dataclass(frozen=True)
class Blas:
    """One OpenBLAS shared library and how to call it."""
    name: str         # "scipy-openblas32 0.3.34", "numpy's OpenBLAS 0.3.23"
    path: str         # the .so
    sgemm: str        # the cblas_sgemm symbol
    int_type: str     # C type of its integers: "int" or "long long"
    set_threads: str  # the openblas_set_num_threads symbol


_found = []


def _version(lib, prefix, suffix):
    get = getattr(lib, f"{prefix}openblas_get_config{suffix}")
    get.restype = ctypes.c_char_p
    words = get().decode(errors="replace").split()
    return words[1] if len(words) > 1 else "?"


def _scipy_openblas32():
    try:
        import scipy_openblas32
    except ImportError:
        return None
    path = os.path.join(scipy_openblas32.get_lib_dir(), scipy_openblas32.get_library(True))
    try:
        lib = ctypes.CDLL(path)
        return Blas(f"scipy-openblas32 {_version(lib, 'scipy_', '')}", path,
                    "scipy_cblas_sgemm", "int", "scipy_openblas_set_num_threads")
    except (OSError, AttributeError):
        return None


def _numpy_bundled():
    import numpy
    folder = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(folder, "libopenblas64_*.so*"))):
        try:
            lib = ctypes.CDLL(path)
            if hasattr(lib, "cblas_sgemm64_"):
                return Blas(f"numpy's OpenBLAS {_version(lib, '', '64_')}", path,
                            "cblas_sgemm64_", "long long", "openblas_set_num_threads64_")
        except (OSError, AttributeError):
            continue
    return None


def library():
    """The Blas that jseg's sgemm uses in this process, or None (then Jittor's matmul)."""
    if not _found:
        choice = os.environ.get("JSEG_OPENBLAS", "").strip() or CHOICES[0]
        if choice not in CHOICES:
            warnings.warn(f"JSEG_OPENBLAS={choice!r} is not one of {', '.join(CHOICES)}; "
                          f"using {CHOICES[0]} (unset it, or pick one of those)")
            choice = CHOICES[0]
        order = {"scipy-openblas32": [_scipy_openblas32, _numpy_bundled],
                 "numpy": [_numpy_bundled], "none": []}[choice]
        blas = None
        for find in order:
            blas = find()
            if blas is not None:
                break
        _found.append(blas)
    return _found[0]


def set_threads(n):
    """Threads of OpenBLAS's own pool (it is not OpenMP); no-op without the library."""
    blas = library()
    if blas is not None:
        getattr(ctypes.CDLL(blas.path), blas.set_threads)(ctypes.c_int(int(n)))
