"""Which CUDA toolkit Jittor should build with, decided before Jittor starts.

Left to itself, Jittor 1.3.11 builds with the first nvcc it finds (its jtcuda download,
`nvcc_path`, PATH, /usr/local/cuda) or downloads jtcuda, which fails offline; its CUDA part
does not compile with CUDA 13 unless `tools/jittor_cuda13.py apply` has patched it.
`choose_toolkit` makes the choice explicit (the order is in its docstring), from facts
gathered by `detect_toolkit`; the answer is a `Toolkit`: CPU or an nvcc, why, and any
problem with its fix. `complete_toolkit` adds the CUDA libraries Jittor also needs (cuBLAS,
cuDNN, cuRAND, cuFFT, cuSPARSE) from pip wheels where the toolkit lacks them, through a
folder of symlinks (~/.cache/jseg/cuda-*). User's guide: docs/gpu.md.
"""
import ctypes
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

__all__ = ["Toolkit", "choose_toolkit", "detect_toolkit", "complete_toolkit",
           "driver_cuda_version", "nvcc_version", "nvcc_candidates", "find_system_nvcc",
           "find_jtcuda_nvcc",
           "toolkit_root", "has_toolkit_layout", "library_roots", "build_toolkit_view",
           "missing_libraries", "REQUIRED_LIBRARIES", "JTCUDA_INSTALL"]

# Jittor's own installer: for a driver >= 12.2 it downloads CUDA 12.2 + cuDNN 8 (needs internet).
JTCUDA_INSTALL = "python -m jittor_utils.install_cuda"
# Where Jittor 1.3.11 looks for a system nvcc after PATH, plus versioned installs.
_NVCC_PLACES = ("/usr/local/cuda/bin/nvcc", "/usr/bin/nvcc", "/opt/cuda/bin/nvcc")
_NVCC_GLOB = "/usr/local/cuda-*/bin/nvcc"


# Jittor 1.3.11 stops when any of these is missing on CUDA (compile_extern.setup_cuda_extern).
REQUIRED_LIBRARIES = ("cublas", "cudnn", "curand", "cufft", "cusparse")
_HEADERS = {"cublas": "cublas.h", "cudnn": "cudnn.h", "curand": "curand.h",
            "cufft": "cufft.h", "cusparse": "cusparse.h"}


@dataclass(frozen=True)
class Toolkit:
    """The choice: `nvcc` for Jittor's `nvcc_path` ("" = CPU, None = leave it to Jittor,
    which then takes its jtcuda), `version` as (major, minor) or None, `source` (cpu, user,
    jtcuda, system), `reason` in words, and `problem`: a one-line error with the fix when a
    GPU is there but cannot be used (then the choice is CPU)."""
    nvcc: object
    version: object
    source: str
    reason: str
    problem: object = None

    @property
    def uses_cuda(self):
        return self.source != "cpu"


def _text(version):
    return ".".join(map(str, version)) if version else "unknown"


def choose_toolkit(driver, candidates, jtcuda=None, user_nvcc=None, cuda13_fix=False,
                   forced_cpu=False):
    """Decide the toolkit from facts, first rule that applies:

    1. no NVIDIA driver (or `JSEG_DEVICE=cpu`) -> CPU;
    2. `nvcc_path` set by the user -> that one (empty: CPU);
    3. Jittor's jtcuda installed (`python -m jittor_utils.install_cuda`) -> jtcuda;
    4. a system nvcc of CUDA 12 or older that the driver can run -> the newest such;
    5. only CUDA 13 or newer that the driver can run -> it, if Jittor carries the CUDA 13
       fix; otherwise CPU, with the fix named;
    6. no nvcc the driver can run -> CPU, with the fix named.

    driver: the CUDA version the driver supports, (major, minor), or None without a driver.
    candidates: [(nvcc path, (major, minor) or None)] of system nvcc, in search order.
    jtcuda: path of Jittor's jtcuda nvcc, or None.  user_nvcc: the `nvcc_path` variable, or
    None when unset.  cuda13_fix: whether Jittor carries the CUDA 13 fix.
    """
    if forced_cpu:
        return Toolkit("", None, "cpu", "JSEG_DEVICE=cpu")
    if driver is None:
        return Toolkit("", None, "cpu", "no NVIDIA driver")
    if user_nvcc is not None:
        if not user_nvcc:
            return Toolkit("", None, "cpu", "nvcc_path is empty (set by you)")
        version = dict(candidates).get(user_nvcc)
        problem = None
        if version and version[0] >= 13 and not cuda13_fix:
            problem = _cuda13_problem(user_nvcc, version)
        return Toolkit(user_nvcc, version, "user", "nvcc_path set by you", problem)
    if jtcuda:
        return Toolkit(None, None, "jtcuda", f"Jittor's own CUDA download ({jtcuda})")
    runnable = [(p, v) for p, v in candidates if v is not None and v[0] <= driver[0]]
    older = [(p, v) for p, v in runnable if v[0] <= 12]
    if older:
        path, version = max(older, key=lambda c: c[1])
        return Toolkit(path, version, "system", f"CUDA {_text(version)} at {path}, "
                       f"supported by Jittor 1.3.11 and by the driver (CUDA {_text(driver)})")
    if runnable:
        path, version = max(runnable, key=lambda c: c[1])
        if cuda13_fix:
            return Toolkit(path, version, "system", f"CUDA {_text(version)} at {path} (the only "
                           "toolkit here) with jseg's CUDA 13 fix applied to Jittor")
        return Toolkit("", None, "cpu", "Jittor cannot build with this toolkit unpatched",
                       _cuda13_problem(path, version))
    if candidates:
        path, version = candidates[0]
        return Toolkit("", None, "cpu", "the toolkit is newer than the driver",
                       f"the NVIDIA driver supports CUDA {_text(driver)} but the only toolkit "
                       f"here, {path}, is CUDA {_text(version)}; fix: update the driver, or "
                       f"install Jittor's CUDA 12.2 with `{JTCUDA_INSTALL}` (needs internet)")
    return Toolkit("", None, "cpu", "no CUDA toolkit",
                   f"an NVIDIA driver (CUDA {_text(driver)}) is here but no CUDA toolkit (nvcc); "
                   f"fix: `{JTCUDA_INSTALL}` (downloads CUDA 12.2 + cuDNN 8 into "
                   "~/.cache/jittor/jtcuda, needs internet), or install a CUDA toolkit and set "
                   "nvcc_path=/path/to/nvcc")


def _cuda13_problem(path, version):
    return (f"Jittor 1.3.11 does not build its CUDA part with CUDA {_text(version)} ({path}); "
            "fix: `python tools/jittor_cuda13.py apply` (patches the installed Jittor), or use a "
            f"CUDA 12 toolkit (nvcc_path=/path/to/nvcc, or `{JTCUDA_INSTALL}` with internet)")


def driver_cuda_version():
    """(major, minor) of the CUDA version the NVIDIA driver supports, or None."""
    if not glob.glob("/dev/nvidia[0-9]*"):
        return None
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        value = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(value)) != 0 or value.value <= 0:
            return None
    except (OSError, AttributeError):
        return None
    return value.value // 1000, value.value % 1000 // 10


def nvcc_version(path):
    """(major, minor) from `nvcc --version`, or None when it does not run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"release (\d+)\.(\d+)", out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else None


def toolkit_root(nvcc):
    """The folder Jittor takes as the toolkit of `nvcc`: its real location's parent, where
    Jittor looks for include/ and lib64/libcudart.so."""
    return os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


def has_toolkit_layout(nvcc):
    """Whether Jittor can use `nvcc` as it is: bin/nvcc beside include/ and lib64/ (a wrapper
    script elsewhere, e.g. /usr/local/bin/nvcc, is not; /usr/bin/nvcc of a distribution
    package is, Jittor knows that one)."""
    root = toolkit_root(nvcc)
    lib = "/usr/lib/x86_64-linux-gnu" if nvcc == "/usr/bin/nvcc" else os.path.join(root, "lib64")
    return (os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))
            and os.path.exists(os.path.join(lib, "libcudart.so")))


def find_system_nvcc():
    """nvcc executables in Jittor's search order, then versioned /usr/local/cuda-X.Y; only
    those with a toolkit layout Jittor can use."""
    found, seen = [], set()
    for path in [shutil.which("nvcc"), *_NVCC_PLACES, *sorted(glob.glob(_NVCC_GLOB))]:
        if path and os.access(path, os.X_OK) and os.path.realpath(path) not in seen \
                and has_toolkit_layout(path):
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


def nvcc_candidates(user):
    """[(nvcc path, (major, minor) or None)]: the user's `nvcc_path` if set, else
    `find_system_nvcc()`'s. (An empty `nvcc_path` means CPU to `choose_toolkit`; here it
    finds the system's, as a child of a jseg process inherits jseg's empty value.)"""
    paths = [user] if user else find_system_nvcc()
    return [(p, nvcc_version(p)) for p in paths]


def find_jtcuda_nvcc(jittor_home):
    """Jittor's jtcuda nvcc under `jittor_home` (~/.cache/jittor), or None."""
    hits = sorted(glob.glob(os.path.join(jittor_home, "jtcuda", "*", "bin", "nvcc")))
    return hits[-1] if hits else None


def library_roots():
    """Folders with include/ and lib/ of CUDA libraries from pip wheels (site-packages/nvidia/*)."""
    roots = []
    for entry in sys.path:
        for folder in sorted(glob.glob(os.path.join(entry, "nvidia", "*"))):
            if os.path.isdir(os.path.join(folder, "include")) and \
                    os.path.isdir(os.path.join(folder, "lib")) and folder not in roots:
                roots.append(folder)
    return roots


def _link_all(sources, target):
    """Symlink every entry of the `sources` folders into `target`; the first one wins."""
    target.mkdir(parents=True, exist_ok=True)
    for source in sources:
        for path in sorted(Path(source).iterdir()) if Path(source).is_dir() else []:
            link = target / path.name
            if not os.path.lexists(link):
                link.symlink_to(path)


def build_toolkit_view(nvcc, roots, view):
    """A folder Jittor takes for a CUDA toolkit: bin/nvcc (runs the real one), include/ and
    lib64/ joining the toolkit's own with the `roots`' include/ and lib/, and an unversioned
    libX.so beside each libX.so.N. Jittor derives include and lib64 from nvcc's folder."""
    toolkit, view = Path(toolkit_root(nvcc)), Path(view)
    (view / "bin").mkdir(parents=True)
    wrapper = view / "bin" / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec "{os.path.realpath(nvcc)}" "$@"\n')
    wrapper.chmod(0o755)
    _link_all([toolkit / "include"] + [Path(r) / "include" for r in roots], view / "include")
    _link_all([toolkit / "lib64"] + [Path(r) / "lib" for r in roots], view / "lib64")
    for versioned in sorted((view / "lib64").glob("*.so.*")):
        plain = view / "lib64" / (versioned.name.split(".so.")[0] + ".so")
        if not os.path.lexists(plain):
            plain.symlink_to(versioned.name)
    return wrapper


def missing_libraries(root):
    """The REQUIRED_LIBRARIES whose header (include/) or library (lib64/) `root` lacks."""
    root = Path(root)
    return [n for n in REQUIRED_LIBRARIES
            if not (root / "include" / _HEADERS[n]).exists()
            or not os.path.exists(root / "lib64" / f"lib{n}.so")]


_PIP_NAMES = {"cublas": "nvidia-cublas", "cudnn": "nvidia-cudnn-cu{major}",
              "curand": "nvidia-curand", "cufft": "nvidia-cufft", "cusparse": "nvidia-cusparse"}


def _pip_names(libraries, major):
    suffix = "" if major >= 13 else f"-cu{major}"  # CUDA 13's wheels dropped the suffix
    return " ".join(_PIP_NAMES[n].format(major=major) + ("" if n == "cudnn" else suffix)
                    for n in libraries)


def complete_toolkit(toolkit, views_dir, roots=None):
    """Jittor 1.3.11 needs REQUIRED_LIBRARIES beside nvcc (include/, lib64/). When the chosen
    toolkit lacks some and pip wheels have them (site-packages/nvidia/*, as torch installs
    them), Jittor gets a view joining both (`build_toolkit_view`, under `views_dir`); when
    nothing has them, the choice becomes CPU with the fix named."""
    if not toolkit.uses_cuda or not toolkit.nvcc or toolkit.nvcc == "/usr/bin/nvcc":
        return toolkit  # jtcuda and distribution packages: Jittor's own search
    missing = missing_libraries(toolkit_root(toolkit.nvcc))
    if not missing:
        return toolkit
    roots = library_roots() if roots is None else list(roots)
    key = hashlib.sha256("\n".join([os.path.realpath(toolkit.nvcc), *roots]).encode())
    version = _text(toolkit.version)
    view = Path(views_dir) / f"cuda-{version}-{key.hexdigest()[:10]}"
    if not view.exists():  # built aside, then renamed: ranks starting together may race
        temp = view.parent / f".{view.name}.{os.getpid()}.tmp"
        shutil.rmtree(temp, ignore_errors=True)
        build_toolkit_view(toolkit.nvcc, roots, temp)
        try:
            os.rename(temp, view)
        except OSError:
            shutil.rmtree(temp, ignore_errors=True)
            if not view.exists():
                raise
    still = missing_libraries(view)
    if still:
        major = toolkit.version[0] if toolkit.version else 13
        return Toolkit("", None, "cpu", "CUDA libraries missing",
                       f"Jittor needs {', '.join(REQUIRED_LIBRARIES)} beside nvcc, and neither "
                       f"the toolkit at {toolkit_root(toolkit.nvcc)} nor the pip wheels in "
                       f"site-packages have {', '.join(still)}; fix: pip install "
                       f"{_pip_names(still, major)} (or install them into the toolkit), or run "
                       "on CPU with JSEG_DEVICE=cpu")
    return replace(toolkit, nvcc=str(view / "bin" / "nvcc"),
                   reason=f"{toolkit.reason}; {', '.join(missing)} from pip wheels "
                          f"({', '.join(roots)}), joined in {view}")


def detect_toolkit(jittor_home, cuda13_fix_applied, views_dir=None):
    """Gather the facts of this machine and choose. `cuda13_fix_applied` is called only
    when it matters (a driver and a CUDA 13 nvcc); `views_dir` holds the views of
    `complete_toolkit` (default ~/.cache/jseg)."""
    views_dir = views_dir or os.path.join(os.path.expanduser("~"), ".cache", "jseg")
    forced_cpu = os.environ.get("JSEG_DEVICE", "").lower() == "cpu"
    driver = None if forced_cpu else driver_cuda_version()
    if driver is None:
        return choose_toolkit(driver, [], forced_cpu=forced_cpu)
    user = os.environ.get("nvcc_path")
    candidates = nvcc_candidates(user)
    needs_fix = any(v and v[0] >= 13 for _, v in candidates)
    choice = choose_toolkit(driver, candidates, find_jtcuda_nvcc(jittor_home), user,
                            cuda13_fix_applied() if needs_fix else False)
    return choice if choice.source == "user" else complete_toolkit(choice, views_dir)
