"""numpy's bundled OpenBLAS, found without importing Jittor (jseg.ops.sgemm calls it).

manylinux numpy wheels ship numpy.libs/libopenblas64_*.so: 64-bit integers and the `64_`
symbol suffix (`cblas_sgemm64_`). Other numpy builds (a distribution's, linked to the
system BLAS) have none, and jseg keeps Jittor's matmul there.
"""
import ctypes
import glob
import os

__all__ = ["library", "set_threads"]

_found = []


def library():
    """Path of numpy's bundled ILP64 OpenBLAS with cblas_sgemm64_, or None."""
    if not _found:
        import numpy
        folder = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
        path = None
        for candidate in sorted(glob.glob(os.path.join(folder, "libopenblas64_*.so*"))):
            try:
                if hasattr(ctypes.CDLL(candidate), "cblas_sgemm64_"):
                    path = candidate
                    break
            except OSError:
                continue
        _found.append(path)
    return _found[0]


def set_threads(n):
    """Threads of OpenBLAS's own pool (it is not OpenMP); no-op without the library."""
    path = library()
    if path is not None:
        ctypes.CDLL(path).openblas_set_num_threads64_(ctypes.c_int(int(n)))
