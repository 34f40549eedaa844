"""Start Jittor offline on whatever machine this is, and describe the result.

Jittor reads its settings from environment variables when it is first imported,
so `configure_jittor()` must run before `import jittor`; `jseg/__init__.py`
calls it, which makes every `import jseg...` safe. It decides four things:

- device and CUDA toolkit (`jseg.utils.toolkit`): without an NVIDIA driver (no
  `/dev/nvidia*`, no `libcuda.so.1`) Jittor is told there is no nvcc, so it starts on
  CPU instead of failing on a missing libcudart; with one, Jittor gets the toolkit
  `choose_toolkit` picks (a CUDA 12 nvcc, Jittor's jtcuda, or CUDA 13 once
  `tools/jittor_cuda13.py apply` has patched Jittor), or CPU with one warning that
  names the fix. `JSEG_DEVICE=cpu` forces CPU on a GPU machine.
- oneDNN: Jittor downloads its oneDNN archive on first use unless it is
  already in its cache or shipped by the `jittor-offline` package. If neither
  is present we switch oneDNN off (`use_mkl=0`, about 40x slower convolutions)
  with one warning, instead of letting Jittor try the network.
- torch: Jittor would import torch at start-up when installed; we turn that
  off (`FIX_TORCH_ERROR=0`), see `configure_jittor`.
- kernel compiles run on the calling thread (`use_parallel_op_compiler=0`), see
  `configure_jittor`.
- OpenMP threads that wait spin 1000 rounds, not GNU OpenMP's 300,000, before they
  sleep (`GOMP_SPINCOUNT`), so that a busy neighbour on the same cores costs at
  most about 2x, see `configure_jittor`.
"""
import ctypes
import glob
import importlib.util
import logging
import os
import sys
from pathlib import Path

__all__ = ["configure_jittor", "gpu_available", "no_gpu_reason", "onednn_source", "init_device", "cuda_toolkit",
           "users_nvcc_path", "cuda_settings", "replace_jittor_signal_handlers",
           "environment_report", "restore_openmp_defaults", "DNNL_ARCHIVE", "OPENMP_SPINCOUNT"]

logger = logging.getLogger(__name__)

DNNL_ARCHIVE = "dnnl_lnx_2.2.0_cpu_gomp"  # the oneDNN build Jittor 1.3 looks for
OPENMP_SPINCOUNT = "1000"
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
    """Jittor's environment variables for the chosen `toolkit` (jseg.utils.toolkit.Toolkit);
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
    """The `jseg.utils.toolkit.Toolkit` chosen for this process (decided once)."""
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
        logger.warning("jittor was imported before jseg; jseg could not choose its "
                       "device and oneDNN settings (import jseg first)")
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


OPENBLAS_THREAD_TIMEOUT = "4"  # 2^4 cycles of polling: the minimum OpenBLAS accepts


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
