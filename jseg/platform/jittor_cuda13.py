"""The fix that lets Jittor 1.3.11 build its CUDA part with CUDA 13, as data.

Each `FilePatch` names one file of the installed `jittor` package, the SHA-256 of the
file as Jittor 1.3.11 ships it, and its hunks: (reason, old text, new text), where the
old text occurs exactly once. Applying checks the hash first, so a file that is not
the one we studied is never edited. The patched state is recognised by undoing the
hunks in memory and finding the original hash again, so `apply` is idempotent and
`revert` restores the original bytes. Every hunk behaves the same with CUDA 12.

`tools/jittor_cuda13.py` is the command line; `state()` is what `jseg.platform.env`
asks before it lets Jittor build with a CUDA 13 nvcc.
"""
import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from jseg.utils.atomic import atomic_write

__all__ = ["JITTOR_VERSION", "PATCHES", "FilePatch", "PatchError", "jittor_dir",
           "jittor_version", "state", "apply", "revert"]

JITTOR_VERSION = "1.3.11.0"


class PatchError(Exception):
    """A Jittor installation this fix cannot be applied to or taken back from."""


@dataclass(frozen=True)
class FilePatch:
    path: str            # relative to the jittor package directory
    original_sha256: str
    hunks: tuple         # ((reason, old, new), ...)

    def patched(self, text):
        for reason, old, new in self.hunks:
            if text.count(old) != 1:
                raise PatchError(f"{self.path}: the text of hunk '{reason}' is not there once")
            text = text.replace(old, new)
        return text

    def unpatched(self, text):
        for reason, old, new in reversed(self.hunks):
            if text.count(new) != 1:
                return None
            text = text.replace(new, old)
        return text


_DEVICE_ATTRIBUTE = """\
// jseg: CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate; ask the runtime
// instead (cudaDeviceGetAttribute has both since CUDA 5, so CUDA 12 gives the same).
inline int jtDeviceAttribute(cudaDeviceAttr attr, int dev) {
  int value = 0;
  cudaDeviceGetAttribute(&value, attr, dev);
  return value;
}

inline int gpuDeviceInit(int devID) {"""

_CUTT_FIX = '''def _jseg_cuda13_cutt(dirname):
    # jseg: CUDA 13 removed cudaDeviceProp::clockRate and ::memoryClockRate, which cutt's
    # performance model reads; ask cudaDeviceGetAttribute instead (the same values on CUDA 12).
    attr = ("[&]{int d_ = 0, v_ = 0; cudaGetDevice(&d_); "
            "cudaDeviceGetAttribute(&v_, cudaDevAttr%s, d_); return v_;}()")
    for name in ("cuttGpuModel.cpp", "cuttplan.cpp"):
        path = os.path.join(dirname, "src", name)
        with open(path) as f:
            text = f.read()
        fixed = text.replace("prop.memoryClockRate", attr % "MemoryClockRate")
        fixed = fixed.replace("prop.clockRate", attr % "ClockRate")
        if fixed != text:
            with open(path, "w") as f:
                f.write(fixed)

def install_cutt(root_folder):'''

_CUDNN8_PARTS = """                for l in libs:
                    ex_cudnn_path = search_file([cuda_bin, cuda_lib, extra_lib_path, f"/usr/lib/{arch_key}-linux-gnu", "/usr/lib"], l, prefer_version)
                    ctypes.CDLL(ex_cudnn_path, dlopen_flags)"""
_CUDNN8_PARTS_IF_PRESENT = """                for l in libs:
                    try:  # jseg: cuDNN 9 (the cuDNN for CUDA 13) has none of these cuDNN 8 parts
                        ex_cudnn_path = search_file([cuda_bin, cuda_lib, extra_lib_path, f"/usr/lib/{arch_key}-linux-gnu", "/usr/lib"], l, prefer_version)
                    except RuntimeError:
                        continue
                    ctypes.CDLL(ex_cudnn_path, dlopen_flags)"""

_CUDNN_SOURCES = """
            culib_src_files.append(os.path.join(r, fname))
    if len(culib_src_files) == 0:"""
_CUDNN_SOURCES_WITHOUT_RNN_ON_9 = """
            culib_src_files.append(os.path.join(r, fname))
    if lib_name == "cudnn" and link and _jseg_cudnn_major(cuda_include_name) >= 9:
        # jseg: cuDNN 9 removed the RNN API of these ops (cudnnSetRNNDescriptor_v6, ...)
        culib_src_files = [f for f in culib_src_files if "cudnn_rnn" not in os.path.basename(f)]
    if len(culib_src_files) == 0:"""
_CUDNN_MAJOR = '''def _jseg_cudnn_major(cudnn_h):
    # jseg: the major version of the cuDNN whose cudnn.h is `cudnn_h` (0 when unknown)
    import re
    for name in ("cudnn_version.h", "cudnn.h"):
        try:
            with open(os.path.join(os.path.dirname(cudnn_h), name)) as f:
                found = re.search(r"#define CUDNN_MAJOR\\s+(\\d+)", f.read())
        except OSError:
            continue
        if found:
            return int(found.group(1))
    return 0

def setup_cuda_lib(lib_name, link=True, extra_flags=""):'''

_NPP_INCLUDE = """#ifdef IS_CUDA
#include <npp.h>
#include <math_constants.h>
#else"""
_NPP_INCLUDE_IF_PRESENT = """#ifdef IS_CUDA
#if __has_include(<npp.h>)
#include <npp.h>
#else  // jseg: NPP is not in every CUDA install (nor in the pip wheels); only its limits are used
#define 	NPP_MIN_32U   ( 0 )
#define 	NPP_MAX_32U   ( 4294967295U )
#define 	NPP_MIN_32S   (-2147483647 - 1 )
#define 	NPP_MAX_32S   ( 2147483647 )
#define 	NPP_MIN_64U   ( 0 )
#define 	NPP_MAX_64U   ( 18446744073709551615ULL )
#define 	NPP_MIN_64S   (-9223372036854775807LL - 1)
#define 	NPP_MAX_64S   ( 9223372036854775807LL )
#endif
#include <math_constants.h>
#else"""

PATCHES = (
    FilePatch(
        "extern/cuda/inc/helper_cuda.h",
        "5faa2b18470a970658cfc0b70504f98aa6fb85695b2a116408895ad11edc57da",
        (
            ("a helper for the fields CUDA 13 removed",
             "inline int gpuDeviceInit(int devID) {", _DEVICE_ATTRIBUTE),
            ("computeMode in gpuDeviceInit",
             "if (deviceProp.computeMode == cudaComputeModeProhibited) {",
             "if (jtDeviceAttribute(cudaDevAttrComputeMode, devID) == cudaComputeModeProhibited) {"),
            ("computeMode in gpuGetMaxGflopsDeviceId",
             "    if (deviceProp.computeMode != cudaComputeModeProhibited) {",
             "    if (jtDeviceAttribute(cudaDevAttrComputeMode, current_device) != "
             "cudaComputeModeProhibited) {"),
            ("clockRate in gpuGetMaxGflopsDeviceId",
             "sm_per_multiproc * deviceProp.clockRate;",
             "sm_per_multiproc * jtDeviceAttribute(cudaDevAttrClockRate, current_device);"),
            ("computeMode in findIntegratedGPU",
             "(deviceProp.computeMode != cudaComputeModeProhibited)) {",
             "(jtDeviceAttribute(cudaDevAttrComputeMode, current_device) != "
             "cudaComputeModeProhibited)) {"),
        ),
    ),
    FilePatch(
        "compiler.py",
        "3398b120fb43014db85d0beaccfc9775088956e46cec0b16cf62cd8581dd6898",
        (
            ("CUDA 13's CUB, Thrust and libcu++ (CCCL 3) refuse C++14, which Jittor gives nvcc; "
             "compile CUDA sources as C++17 from CUDA 13 on (CUDA 12 keeps C++14)",
             '''            nvcc_flags = nvcc_flags.replace("-std=c++17", "")
''',
             '''            nvcc_flags = nvcc_flags.replace("-std=c++17", "")
        if nvcc_version >= [13]:  # jseg: CCCL 3 (CUB, Thrust, libcu++) requires C++17
            nvcc_flags = nvcc_flags.replace("-std=c++14", "-std=c++17")
'''),
        ),
    ),
    FilePatch(
        "depthwise_conv.py",
        "ca12ae9b7262844c0b89c3865ab71ff9b89bcdbf9bf815c19766ea3e9ade8ec1",
        (
            ("cub::LaneId() is gone in CCCL 3 (CUDA 13): read the %laneid register itself, "
             "which is what it did (the depthwise convolution's weight gradient on CUDA)",
             """    if (cub::LaneId() == 0) 
        atomicAdd(sum, value);""",
             """    unsigned int lane;  // jseg: cub::LaneId() is gone in CCCL 3 (CUDA 13)
    asm("mov.u32 %0, %%laneid;" : "=r"(lane));
    if (lane == 0)
        atomicAdd(sum, value);"""),
        ),
    ),
    FilePatch(
        "other/code_softmax.py",
        "d4d533239f569cbbc5586c7b72257bc59ad0359ca12f110710a5470fcb90cc40",
        (
            ("cub::Max is gone in CCCL 3 (CUDA 13): a functor with its rule (softmax on CUDA)",
             """self.save_vars = jt.code(x.shape, x.dtype, [x], cuda_header=f'''
#include <{jt.compile_extern.cub_home}cub/cub.cuh>""",
             """self.save_vars = jt.code(x.shape, x.dtype, [x], cuda_header=f'''
#include <{jt.compile_extern.cub_home}cub/cub.cuh>
struct JtMaxOp {{  // jseg: cub::Max is gone in CCCL 3 (CUDA 13); the same rule
    template <typename T> __device__ __forceinline__ T operator()(const T &a, const T &b) const
    {{ return (b > a) ? b : a; }}
}};"""),
            ("use it", "Reduce(v1, cub::Max())", "Reduce(v1, JtMaxOp())"),
        ),
    ),
    FilePatch(
        "extern/cuda/cub/ops/cub_where_op.cc",
        "b54b158ccab3204384b54728ed585f0a8c81e2575a23e867889acce5a98d7fe9",
        (
            ("cub's CountingInputIterator and TransformInputIterator are gone in CCCL 3 "
             "(CUDA 13); Thrust's iterators do the same and exist in every CUDA (jt.where)",
             "#include <thrust/transform.h>\n#endif",
             "#include <thrust/transform.h>\n#include <thrust/iterator/counting_iterator.h>\n"
             "#include <thrust/iterator/transform_iterator.h>\n#endif"),
            ("use them",
             """    cub::CountingInputIterator<To> counting_itr(0);
    cub::TransformInputIterator<bool, NonZeroOp<Ti>, Ti*> itr(cond->ptr<Ti>(), NonZeroOp<Ti>());""",
             """    thrust::counting_iterator<To> counting_itr(0);  // jseg: cub's are gone in CCCL 3
    thrust::transform_iterator<NonZeroOp<Ti>, Ti*, bool> itr(cond->ptr<Ti>(), NonZeroOp<Ti>());"""),
        ),
    ),
    FilePatch(
        "src/misc/cuda_limits.h",
        "bd143b0920689412d0e6409e9eb6dfc50e16092bb9faa8a8684ace1d40645504",
        (
            ("the generated kernels include npp.h for a few integer limits; NPP is a separate "
             "part of CUDA (its own pip wheel), so define those limits where it is missing",
             _NPP_INCLUDE, _NPP_INCLUDE_IF_PRESENT),
        ),
    ),
    FilePatch(
        "compile_extern.py",
        "d1d02ba4314b3390f70a91d3347267920cb77999b1241d01849c85fbcaa7d56c",
        (
            ("cutt reads the device-property fields CUDA 13 removed; fix its sources after "
             "they are unpacked (cutt comes as an archive, from jittor-offline or a download)",
             "def install_cutt(root_folder):", _CUTT_FIX),
            ("run that fix before cutt is compiled (not on a user's own CUTT_PATH)",
             '''        LOG.i("installing cutt...")''',
             '''        LOG.i("installing cutt...")
        if not CUTT_PATH:
            _jseg_cuda13_cutt(dirname)'''),
            ("cuDNN 9, the only cuDNN for CUDA 13, has no libcudnn_{ops,cnn}_{infer,train}.so "
             "(it loads its parts itself); load them only where they exist (cuDNN 8)",
             _CUDNN8_PARTS, _CUDNN8_PARTS_IF_PRESENT),
            ("a helper that reads the cuDNN major version from its headers",
             "def setup_cuda_lib(lib_name, link=True, extra_flags=\"\"):", _CUDNN_MAJOR),
            ("cuDNN 9 removed the RNN API of Jittor's cudnn_rnn ops: leave those ops out there "
             "(jittor.nn.RNN on CUDA then has no cuDNN path; SegNeXt has no RNN)",
             _CUDNN_SOURCES, _CUDNN_SOURCES_WITHOUT_RNN_ON_9),
        ),
    ),
)


def jittor_dir():
    """The installed `jittor` package directory, found without importing it."""
    spec = importlib.util.find_spec("jittor")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("jittor is not installed in this Python; fix: pip install jittor==1.3.11")
    return Path(list(spec.submodule_search_locations)[0])


def jittor_version(directory):
    text = (Path(directory) / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", text, re.M)
    return match.group(1) if match else "unknown"


def _sha256(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read(directory, patch):
    path = Path(directory) / patch.path
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as e:
        raise PatchError(f"cannot read {path}: {e.strerror}") from e


def _file_state(text, patch):
    if _sha256(text) == patch.original_sha256:
        return "original"
    undone = patch.unpatched(text)
    if undone is not None and _sha256(undone) == patch.original_sha256:
        return "patched"
    return "changed"


def state(directory=None):
    """"applied", "original", "partial" (some files patched), or raises PatchError for
    another Jittor version or files changed by someone else."""
    directory = Path(directory) if directory is not None else jittor_dir()
    version = jittor_version(directory)
    if version != JITTOR_VERSION:
        raise PatchError(f"Jittor {version} at {directory} is not {JITTOR_VERSION}, the version "
                         f"this CUDA 13 fix was made for; fix: pip install jittor=={JITTOR_VERSION[:-2]}")
    states = {}
    for patch in PATCHES:
        states[patch.path] = _file_state(_read(directory, patch), patch)
    changed = [p for p, s in states.items() if s == "changed"]
    if changed:
        raise PatchError(f"{', '.join(changed)} in {directory} differ from Jittor {JITTOR_VERSION} "
                         "as released, and the fix was not made for them; fix: reinstall Jittor "
                         f"(pip install --force-reinstall --no-deps jittor=={JITTOR_VERSION[:-2]})")
    kinds = set(states.values())
    if kinds == {"patched"}:
        return "applied"
    return "original" if kinds == {"original"} else "partial"


def _write(directory, patch, text):
    with atomic_write(str(Path(directory) / patch.path)) as f:  # keeps the file's mode
        f.write(text.encode("utf-8"))


def _rewrite(directory, when, change):
    """Give every file in state `when` the text `change(patch, text)`; returns their paths.
    The whole installation is checked first (`state`), so nothing is written to another
    version or to files changed by someone else."""
    directory = Path(directory) if directory is not None else jittor_dir()
    state(directory)
    done = []
    for patch in PATCHES:
        text = _read(directory, patch)
        if _file_state(text, patch) == when:
            _write(directory, patch, change(patch, text))
            done.append(patch.path)
    return done


def apply(directory=None):
    """Patch every file not yet patched; returns the relative paths changed now."""
    return _rewrite(directory, "original", FilePatch.patched)


def revert(directory=None):
    """Restore every patched file to Jittor's original; returns the relative paths restored."""
    return _rewrite(directory, "patched", FilePatch.unpatched)
