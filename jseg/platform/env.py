"""Start Jittor offline on whatever machine this is, and describe the result.

Jittor reads its settings from environment variables when it is first imported, so
`configure_jittor()` must run before `import jittor`; `jseg/__init__.py` calls it, which
makes every `import jseg...` safe (after `import jittor`, `adopt_imported_jittor` sets what
Jittor still reads and warns about the rest). Leaving every variable the user set alone, it
decides: the device and CUDA toolkit (`jseg.platform.toolkit`; no NVIDIA driver: CPU,
`JSEG_DEVICE=cpu` forces it), oneDNN (off with one warning when no offline copy exists,
never a download), no torch beside Jittor (`FIX_TORCH_ERROR=0`), kernel compiles on the
calling thread, OpenMP's spin count (`GOMP_SPINCOUNT`) and OpenBLAS's idle timeout, and a
quiet start (`_quiet_jittor_start`: Jittor's start-up log off unless `JSEG_VERBOSE=1`,
Ctrl-C raising KeyboardInterrupt again). Each setting's reason is a comment in
`configure_jittor`; measurements in docs/environment.md. `environment_report` describes it.
"""
import contextlib
import ctypes
import glob
import importlib.util
import logging
import os
import sys
import threading
from pathlib import Path

__all__ = ["configure_jittor", "gpu_available", "no_gpu_reason", "onednn_source", "init_device", "cuda_toolkit",
           "users_nvcc_path", "cuda_settings", "replace_jittor_signal_handlers",
           "environment_report", "restore_openmp_defaults", "adopt_imported_jittor",
           "DNNL_ARCHIVE", "OPENMP_SPINCOUNT"]

logger = logging.getLogger(__name__)

DNNL_ARCHIVE = "dnnl_lnx_2.2.0_cpu_gomp"  # the oneDNN build Jittor 1.3 looks for
OPENMP_SPINCOUNT = "1000"
# what jittor-before-jseg costs (GOMP_SPINCOUNT missed), for its warning: SegNeXt-T
# 512x512 CPU inference (tools/benchmark.py, 2-core Xeon, quiet) 164-166 vs 121-129 ms;
# beside one busy process the long spin cost 776 vs 428 ms (see configure_jittor)
IMPORT_ORDER_COST = ("SegNeXt-T 512x512 CPU inference measured 165 ms instead of 125 on 2 "
                     "cores, 1.8x slower beside a busy process")
_configured = False
_spincount_set_here = False
_toolkit = None
_users_nvcc_path = None


def no_gpu_reason():
    """None when an NVIDIA driver is usable here (device nodes and libcuda), else why not."""
    if os.environ.get("JSEG_DEVICE", "").lower() == "cpu":
        return "JSEG_DEVICE=cpu is set"
    if not glob.glob("/dev/nvidia[0-9]*"):
        return "no /dev/nvidia* device (no NVIDIA GPU or driver)"
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        return f"the NVIDIA driver library libcuda.so.1 cannot be loaded ({e})"
    return None


def gpu_available():
    """True when an NVIDIA driver is usable here (device nodes and libcuda)."""
    return no_gpu_reason() is None


def _jittor_home():
    """Jittor's home for caches: `~/.cache/jittor` unless its config.json moved it."""
    return Path(os.environ.get("JITTOR_HOME") or Path.home()) / ".cache" / "jittor"


def _cuda13_fix_ready():
    """Whether the installed Jittor can build with CUDA 13: patched by
    `tools/jittor_cuda13.py`, or a Jittor other than the 1.3.11 the fix is for."""
    from . import jittor_cuda13

    try:
        directory = jittor_cuda13.jittor_dir()
        if jittor_cuda13.jittor_version(directory) != jittor_cuda13.JITTOR_VERSION:
            return True
        return jittor_cuda13.state(directory) == "applied"
    except jittor_cuda13.PatchError:
        return False


def users_nvcc_path():
    """The `nvcc_path` variable as the user set it (None: unset), not as jseg set it for
    Jittor."""
    return _users_nvcc_path if _configured else os.environ.get("nvcc_path")


def cuda_settings(toolkit):
    """Jittor's environment variables for the chosen `toolkit` (jseg.platform.toolkit.Toolkit);
    `configure_jittor` sets those the user has not set."""
    settings = {}
    if toolkit.nvcc is not None:
        # "" keeps Jittor from trying CUDA without a usable toolkit
        settings["nvcc_path"] = toolkit.nvcc
    if toolkit.uses_cuda:
        # Jittor 1.3.11 downloads CUTLASS at start on CUDA (not in jittor-offline, so
        # offline it fails) and then compiles nothing from it.
        settings["use_cutlass"] = "0"
    if toolkit.uses_cuda and toolkit.version and toolkit.version[0] >= 13:
        # Under MPI with GPUs Jittor builds NCCL 2.8.4 (from jittor-offline), which does not
        # build with CUDA 13 (struct cudaLaunchParams is gone) and then fails Jittor's
        # import. Without NCCL, Jittor's MPI all-reduce goes through host MPI: slower, runs.
        settings["use_nccl"] = "0"
    return settings


def cuda_toolkit():
    """The `jseg.platform.toolkit.Toolkit` chosen for this process (decided once)."""
    global _toolkit
    if _toolkit is None:
        from .toolkit import detect_toolkit
        _toolkit = detect_toolkit(str(_jittor_home()), _cuda13_fix_ready)
    return _toolkit


def onednn_source():
    """Where Jittor will get oneDNN from without a download, or None.

    Returns "cache" (already unpacked in Jittor's cache), "jittor-offline"
    (the pip package ships the archive) or None.
    """
    if (_jittor_home() / "mkl" / DNNL_ARCHIVE / "lib" / "libmkldnn.so").is_file():
        return "cache"
    spec = importlib.util.find_spec("jittor_offline")
    if spec is not None and spec.origin is not None:
        if (Path(spec.origin).parent / f"{DNNL_ARCHIVE}.tgz").is_file():
            return "jittor-offline"
    return None


def configure_jittor():
    """Set Jittor's environment variables for this machine; call before `import jittor`.

    Variables the user has already set are respected. Safe to call twice.
    """
    global _configured, _spincount_set_here, _users_nvcc_path
    if _configured:
        return
    _configured = True
    _users_nvcc_path = os.environ.get("nvcc_path")
    if "jittor" in sys.modules:
        adopt_imported_jittor()
        return
    # Jittor imports torch at start-up when it is installed (FIX_TORCH_ERROR), which
    # loads a second OpenMP and oneDNN into every process and changes os.RTLD_GLOBAL;
    # with torch in the environment (the parity extra) cold kernel compiles then
    # crashed now and then. jseg never needs torch beside Jittor, so leave it out.
    os.environ.setdefault("FIX_TORCH_ERROR", "0")
    # Jittor compiles new kernels on min(16, RAM / 3 GB) threads by default. A crash in one
    # of them (seen on cold caches, in CI and locally) makes the process hang in its exit
    # handler instead of failing; compiling on the calling thread avoids that path. It costs
    # cold starts roughly a minute or two on 2 cores; `use_parallel_op_compiler=16` in the
    # environment brings Jittor's default back.
    os.environ.setdefault("use_parallel_op_compiler", "0")
    # GNU OpenMP (jseg's kernels and oneDNN) lets a waiting thread spin 300,000 rounds before
    # it sleeps. Beside another busy process on the same cores that spinning takes the time
    # the working thread needs: on 2 cores beside one `yes`, SegNeXt-T 512x512 inference went
    # from 210 to 776 ms and a demo training step from 308 to 842 ms. 1000 rounds keep the
    # quiet speed (215 / 317 ms) and lose about 2x beside the neighbour (428 / 598 ms); a
    # passive wait (0 rounds) costs a quiet training step 60%. Only if the user set neither.
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT
        _spincount_set_here = True
    # numpy's OpenBLAS (the 1x1-conv matmuls on CPU, jseg.ops.sgemm) keeps its idle threads
    # polling for 2^28 cycles (~0.1 s) after every call, which slowed the OpenMP kernels
    # between the matmuls by up to 2x (SegNeXt-L 512x512: 1293 ms, 1061 ms with 2^4). Read
    # when OpenBLAS loads, i.e. when numpy is first imported: import jseg first.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", OPENBLAS_THREAD_TIMEOUT)
    toolkit = cuda_toolkit()
    for name, value in cuda_settings(toolkit).items():
        os.environ.setdefault(name, value)
    if toolkit.problem and toolkit.uses_cuda:  # your own nvcc_path: left as you set it
        logger.warning("nvcc_path=%s: %s", toolkit.nvcc, toolkit.problem)
    elif toolkit.problem:
        logger.warning("CUDA is not used, running on CPU: %s", toolkit.problem)
    if os.environ.get("use_mkl", "1") == "1" and onednn_source() is None:
        os.environ["use_mkl"] = "0"
        logger.warning(
            "oneDNN not found (neither in %s nor from the 'jittor-offline' package); "
            "running without it, CPU convolutions will be about 40x slower. "
            "Fix: pip install jittor-offline==0.0.7", _jittor_home() / "mkl")
    _quiet_jittor_start()


def _quiet_jittor_start():
    """Keep Jittor's start-up log (ten lines: its paths, the compilers it found) off stderr
    unless JSEG_VERBOSE=1, so that a tool's error is its only line; and give Ctrl-C back
    to Python once Jittor has started.

    Jittor's core reads `log_silent` once, when it loads; set here, it drops the core's info
    and warning lines during the start. Its errors still print and raise, and kernel-compile
    progress is written directly, so both still show. A hook on `import jittor` then:
    - keeps Jittor's Python logger on from the start: under log_silent it would swallow
      Jittor's own errors (a missing CUDA library; "jit_utils updated, please rerun your
      command" before it exits 0); its info lines still pass through the silenced core;
    - once `import jittor` returns, turns the core's warnings back on (`flags.log_silent`)
      and prints those of the start (e.g. "CUDA found but cub is not loaded"), which the
      core kept (`log_capture_start`) while it dropped them;
    - puts back the SIGINT handler that Python had: Jittor's ends the process at once
      ("Caught SIGINT, quick exit", exit 1), skipping `finally` blocks, so a tool could not
      clean up or say "interrupted".
    """
    # "01": silent like any non-zero value; the leading zero says that jseg set it, so that a
    # child process, which inherits it, does not take it for the user's own setting
    quiet = os.environ.get("log_silent", "01") == "01"
    if quiet and os.environ.get("JSEG_VERBOSE", "0") not in ("", "0"):
        os.environ.pop("log_silent", None)
        quiet = False
    elif quiet:
        os.environ["log_silent"] = "01"
    sys.meta_path.insert(0, _AfterJittorImport(quiet))


class _AfterJittorImport:
    """Import hook of `_quiet_jittor_start`: imports jittor as usual, around the steps there
    (`quiet`: log_silent was set there, not by the user)."""

    def __init__(self, quiet):
        self.quiet = quiet

    def find_spec(self, name, path=None, target=None):
        if name != "jittor":
            return None
        sys.meta_path.remove(self)  # one use; find_spec below asks the other finders
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            import signal
            import jittor_utils  # jittor's first import; reads the environment set above
            sigint = signal.getsignal(signal.SIGINT)
            try:
                if not self.quiet:
                    run(module)
                    return
                jittor_utils.LOG.log_silent = 0
                with _start_warnings(jittor_utils) as warnings:
                    run(module)
                module.flags.log_silent = 0
                for fileline, message in warnings:
                    jittor_utils.cc.log(fileline, "w", 0, message)
            finally:
                if sigint is not None and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, sigint)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def _start_warnings(jittor_utils):
    """Collect the warnings that Jittor's core logs (silenced) in the block, from the moment
    it is loaded: yields a list of (file:line, message), filled when the block ends."""
    load = jittor_utils.try_import_jit_utils_core

    def load_and_capture(*args, **kwargs):
        load(*args, **kwargs)
        if jittor_utils.cc is not None:
            jittor_utils.cc.log_capture_start()

    jittor_utils.try_import_jit_utils_core = load_and_capture
    warnings = []
    try:
        yield warnings
    finally:
        jittor_utils.try_import_jit_utils_core = load
        if jittor_utils.cc is not None:
            warnings += [(f"{r['name']}:{r['lineno']}", r["msg"])
                         for r in jittor_utils.cc.log_capture_read() if r.get("level") == "w"]
            jittor_utils.cc.log_capture_stop()


OPENBLAS_THREAD_TIMEOUT = "4"  # 2^4 cycles of polling: the minimum OpenBLAS accepts


def _mapped_files():
    """Paths of the shared libraries loaded in this process (empty where /proc is missing)."""
    try:
        with open("/proc/self/maps") as maps:
            rows = [line.split(None, 5) for line in maps]  # address perms offset dev inode path
    except OSError:
        return set()
    return {row[5].strip() for row in rows if len(row) == 6 and row[5].startswith("/")}


def adopt_imported_jittor():
    """`configure_jittor` when Jittor is already imported: take over what still takes effect
    now and warn once, with its cost and the fix, about what does not. Returns the list of
    settings missed (empty: none, no warning).

    Taken over, as `configure_jittor` would have set them (a value the user set is kept):
    - `use_parallel_op_compiler=0`: Jittor reads this flag at every compile;
    - `OPENBLAS_THREAD_TIMEOUT=4`: read when an OpenBLAS loads, and jseg's scipy-openblas32
      loads after this (`jseg.platform.openblas`); numpy's (loaded with Jittor) keeps its
      default, which matters where jseg uses it (`JSEG_OPENBLAS=numpy`, or no
      scipy-openblas32).
    Missed, because they are read when Jittor loads and never again:
    - `GOMP_SPINCOUNT`: GNU OpenMP reads it when it loads (with Jittor's oneDNN), and has
      no call to change it later; its threads then spin 300,000 rounds between the kernels,
      against the OpenBLAS threads of the matmuls and against any other busy process;
    - `FIX_TORCH_ERROR=0`: Jittor has imported torch if it is installed (memory; see
      `configure_jittor` for the crashes);
    - the CUDA toolkit (`nvcc_path`, `use_cutlass`, `use_nccl`) on a machine with a GPU.
    The device, oneDNN and which kernels jseg.ops picks are the same either way (Jittor
    loads oneDNN from its cache or jittor-offline by itself).
    """
    import jittor as jt
    import jittor.compile_extern as extern

    from . import openblas

    if "use_parallel_op_compiler" not in os.environ:
        os.environ["use_parallel_op_compiler"] = "0"
        jt.flags.use_parallel_op_compiler = 0
    missed = []
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        missed.append(f"OpenMP threads spin 300,000 rounds, not {OPENMP_SPINCOUNT} "
                      f"(GOMP_SPINCOUNT; {IMPORT_ORDER_COST})")
    if "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        loaded = _mapped_files()
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = OPENBLAS_THREAD_TIMEOUT
        blas = openblas.library()  # loads it now, with the timeout, unless numpy's
        if blas is not None and blas.path in loaded:
            missed.append(f"{blas.name}'s idle threads poll ~0.1 s after each matmul "
                          f"(OPENBLAS_THREAD_TIMEOUT)")
    if getattr(extern, "FIX_TORCH_ERROR", 0) and "torch" in sys.modules:
        missed.append("Jittor imported torch beside itself (FIX_TORCH_ERROR; ~180 MB)")
    if gpu_available() and _users_nvcc_path is None:
        missed.append("Jittor chose its own CUDA toolkit, not jseg's")
    if missed:
        logger.warning("jittor was imported before jseg: %s. Fix: import jseg before jittor",
                       "; ".join(missed))
    return missed


def restore_openmp_defaults():
    """Take back jseg's GOMP_SPINCOUNT from this process's environment (before OpenMP loads),
    for a process that should run with the OpenMP defaults, e.g. PyTorch in a benchmark."""
    global _spincount_set_here
    if os.environ.get("OPENBLAS_THREAD_TIMEOUT") == OPENBLAS_THREAD_TIMEOUT:
        os.environ.pop("OPENBLAS_THREAD_TIMEOUT")
    if _spincount_set_here:
        os.environ.pop("GOMP_SPINCOUNT", None)
        _spincount_set_here = False


FATAL_SIGNALS = ("SIGSEGV", "SIGBUS", "SIGFPE", "SIGILL")


def replace_jittor_signal_handlers():
    """After `import jittor`, for a long unattended run (tools/gpu_check.py): take back two
    signal handlers that Jittor installs when it starts.

    - A fatal signal in any thread dumps every thread's Python stack and ends the process.
      Jittor's handler calls exit() on the faulting thread; when that is one of its kernel
      compile threads (`use_parallel_op_compiler` > 0), exit's handlers join the compile
      threads, the faulting one included, which holds its own mutex while it compiles: the
      process never ends (gdb: `segfault_sigaction` -> `exit` -> `SimpleThreads::stop` ->
      `pthread_mutex_lock`). A hang costs a GPU slot its time; a crash costs one task.
    - A child process ended by a signal (other than SIGTERM) no longer ends this process:
      Jittor's SIGCHLD handler takes it for an out-of-memory kill of its own workers and
      quits at once, without a word from Python; a crash of, say, mmseg's child process
      would end the whole check.
    """
    import faulthandler
    import signal
    libc = ctypes.CDLL(None)
    libc.signal.restype = ctypes.c_void_p
    libc.signal.argtypes = (ctypes.c_int, ctypes.c_void_p)
    faulthandler.disable()  # enabled before Jittor replaced its handlers, it would not re-arm
    for name in FATAL_SIGNALS:
        libc.signal(int(getattr(signal, name)), None)  # SIG_DFL: the dump, then the default
    faulthandler.enable(all_threads=True)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def init_device(device="auto"):
    """Point Jittor at `device` ("auto", "cpu" or "cuda") and return the one in use."""
    import jittor as jt

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    has_cuda = bool(jt.compiler.has_cuda)
    if device == "cuda" and not has_cuda:
        toolkit = cuda_toolkit()
        why = toolkit.problem or f"{toolkit.reason}; use device 'cpu'"
        raise RuntimeError(f"device 'cuda' was asked for but Jittor found no usable GPU: {why}")
    use_cuda = has_cuda and device != "cpu"
    jt.flags.use_cuda = int(use_cuda)
    return "cuda" if use_cuda else "cpu"


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def _gpu_model():
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown GPU"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown GPU"


def environment_report():
    """Import Jittor and describe it: an ordered dict of name -> text.

    Raises whatever Jittor raises when it cannot start.
    """
    configure_jittor()
    import jittor as jt
    import jittor.compile_extern as extern

    device = init_device("auto")
    report = {
        "python": sys.version.split()[0],
        "jittor": jt.__version__,
        "device": f"GPU ({_gpu_model()})" if device == "cuda" else f"CPU ({_cpu_model()})",
        "cpu threads": str(os.cpu_count()),
        "oneDNN": ("yes" if extern.mkl_ops is not None else "no")
        + (f" (from {onednn_source()})" if extern.mkl_ops is not None else ""),
        "MPI": ("yes" if getattr(extern, "mpi", None) is not None else "no")
        + (f" (rank {jt.rank} of {jt.world_size})" if jt.in_mpi else ""),
        "cache dir": str(jt.flags.cache_path),
    }
    toolkit = cuda_toolkit()
    from .toolkit import driver_cuda_version
    driver = driver_cuda_version()
    report["CUDA driver"] = "none" if driver is None else "CUDA %d.%d" % driver
    if toolkit.uses_cuda:
        version = "%d.%d" % toolkit.version if toolkit.version else "unknown version"
        report["CUDA toolkit"] = f"{toolkit.nvcc or 'jtcuda'} ({version}): {toolkit.reason}"
        if jt.compiler.has_cuda:
            for name in ("cublas", "cudnn"):
                loaded = getattr(extern, name + "_ops", None) is not None
                report["cuBLAS" if name == "cublas" else "cuDNN"] = (
                    "yes" if loaded else "no (Jittor runs its own CUDA kernels instead)")
    else:
        report["CUDA toolkit"] = f"none: {toolkit.reason}"
    if toolkit.problem:
        report["CUDA problem"] = toolkit.problem
    return report
