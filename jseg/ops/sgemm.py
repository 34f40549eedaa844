"""2-D float32 matmuls on OpenBLAS, from inside Jittor (instead of Jittor's oneDNN sgemm).

`matmul(a, b, trans_a, trans_b)` is a Jittor op (`jt.code`) that calls OpenBLAS's
`cblas_sgemm`, found once per process with dlopen/dlsym. `available()` says whether an
OpenBLAS was found (jseg.platform.openblas: scipy-openblas32, else numpy's bundled one);
where none was, callers keep Jittor's matmul.

OpenBLAS runs its own thread pool (not OpenMP): `set_threads(n)` sizes it, and at import it
follows OMP_NUM_THREADS when that is set. Its idle threads sleep at once only when
OPENBLAS_THREAD_TIMEOUT was short when it loaded, which `import jseg` arranges
(jseg.platform.env). Speeds and the thread timeout's effect: docs/performance.md.
"""
import os

import jittor as jt

from jseg.platform.openblas import library, set_threads

__all__ = ["available", "library", "matmul", "set_threads"]


def available():
    """True when an OpenBLAS that `matmul` can call was found (jseg.platform.openblas)."""
    return library() is not None


if available() and os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
    set_threads(int(os.environ["OMP_NUM_THREADS"]))  # one thread count for both pools


_HEADER = r"""
#include <dlfcn.h>
#include <cstdio>
#include <cstdlib>
// cblas_sgemm (JSEG_BLASINT: the library's integer type)
typedef void (*jseg_sgemm_t)(int, int, int, JSEG_BLASINT, JSEG_BLASINT, JSEG_BLASINT, float,
                             const float*, JSEG_BLASINT, const float*, JSEG_BLASINT, float,
                             float*, JSEG_BLASINT);
static jseg_sgemm_t jseg_sgemm() {
    static jseg_sgemm_t f = nullptr;
    if (!f) {
        void* h = dlopen(JSEG_OPENBLAS, RTLD_NOW | RTLD_GLOBAL);
        f = h ? (jseg_sgemm_t)dlsym(h, JSEG_SGEMM) : nullptr;
        if (!f) { std::fprintf(stderr, "jseg: cannot load %s from %s\n", JSEG_SGEMM,
                               JSEG_OPENBLAS); std::abort(); }
    }
    return f;
}
"""

# out (M, N) = op(a) @ op(b); op = transpose when TA / TB (101: row major, 111/112: N/T)
_SOURCE = r"""
const long long M = out_shape0, N = out_shape1;
const long long K = TA ? in0_shape0 : in0_shape1;
jseg_sgemm()(101, TA ? 112 : 111, TB ? 112 : 111, M, N, K, 1.f,
             in0_p, in0_shape1, in1_p, in1_shape1, 0.f, out_p, N);
"""


def matmul(a, b, trans_a=False, trans_b=False):
    """op(a) @ op(b) for 2-D float32 Vars (op: transpose when asked); no gradient (callers
    that train define theirs with this same function)."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    blas = library()
    header = (f'#define JSEG_OPENBLAS "{blas.path}"\n#define JSEG_SGEMM "{blas.sgemm}"\n'
              f"#define JSEG_BLASINT {blas.int_type}\n"
              f"#define TA {int(trans_a)}\n#define TB {int(trans_b)}\n" + _HEADER)
    return jt.code((m, n), "float32", [a, b], cpu_header=header, cpu_src=_SOURCE)
