"""Jittor start-up: CPU without a GPU driver, oneDNN from an installed package, the
env check tool's report and its failure path."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import jseg.platform.env as env

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK_ENV = os.path.join(ROOT, "tools", "check_env.py")


def run_python(code, **extra_env):
    environ = dict(os.environ, **extra_env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=environ, cwd=ROOT, timeout=600)


def test_check_env_reports_cpu_and_onednn():
    out = subprocess.run([sys.executable, CHECK_ENV], capture_output=True, text=True,
                         cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict((k, v.strip()) for k, v in (line.split(":", 1) for line in out.stdout.splitlines()))
    assert lines["jittor"].startswith("1.3"), out.stdout
    if not env.gpu_available():
        assert lines["device"].startswith("CPU"), out.stdout
        assert lines["CUDA driver"] == "none", out.stdout
        assert lines["CUDA toolkit"] == "none: no NVIDIA driver", out.stdout
    assert lines["oneDNN"].startswith("yes"), out.stdout
    assert lines["MPI"].split()[0] in ("yes", "no"), out.stdout
    assert os.path.isdir(lines["cache dir"]), out.stdout
    assert "Download" not in out.stdout + out.stderr


def test_check_env_writes_its_report_as_gpu_check_rows(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    out = subprocess.run([sys.executable, CHECK_ENV, "--jsonl", str(jsonl)], capture_output=True,
                         text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    import json
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    printed = [line.split(":", 1)[0] for line in out.stdout.splitlines()]
    assert [r["check"] for r in rows] == printed, (rows, out.stdout)
    assert {(r["id"], r["section"], r["verdict"]) for r in rows} == {
        ("environment", "environment", "info")}, rows


def test_check_env_refuses_an_unknown_option():
    out = subprocess.run([sys.executable, CHECK_ENV, "--bogus"], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 1 and out.stdout == "", (out.returncode, out.stdout)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unrecognized arguments: --bogus"), lines


def test_check_env_fails_with_a_hint_when_jittor_cannot_start():
    out = subprocess.run([sys.executable, CHECK_ENV], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, cc_path="/nonexistent/g++"), timeout=300)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr[-2000:])
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Jittor cannot start") and "fix: install a C++ compiler" in last, last


def test_no_gpu_means_cpu_without_trying_cuda():
    if env.gpu_available():
        pytest.skip("this machine has a usable GPU")
    out = run_python("import jseg, os; print(repr(os.environ.get('nvcc_path')))")
    assert out.returncode == 0 and out.stdout.strip() == "''", (out.stdout, out.stderr)


def test_jseg_device_cpu_forces_cpu():
    out = run_python("import jseg.platform.env as e; print(e.gpu_available())", JSEG_DEVICE="cpu")
    assert out.stdout.strip() == "False", out.stderr


def test_missing_onednn_switches_it_off_with_one_warning(tmp_path):
    # A home without Jittor's cache and an interpreter that cannot see jittor_offline.
    code = ("import importlib.util, logging, os; logging.basicConfig();"
            "real = importlib.util.find_spec;"
            "importlib.util.find_spec = lambda n, *a: None if n == 'jittor_offline' else real(n, *a);"
            "import jseg;"
            "print('use_mkl=' + os.environ.get('use_mkl', ''))")
    env_vars = {"HOME": str(tmp_path), "use_mkl": "1"}
    env_vars.pop("JITTOR_HOME", None)
    out = run_python(code, **env_vars)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "use_mkl=0", out.stdout
    warnings = [l for l in out.stderr.splitlines() if "oneDNN not found" in l]
    assert len(warnings) == 1 and "pip install jittor-offline" in warnings[0], out.stderr


def test_onednn_source_found_here():
    assert env.onednn_source() in ("cache", "jittor-offline")


def test_init_device_rejects_unknown_and_unavailable_devices():
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        env.init_device("tpu")
    if not env.gpu_available():
        with pytest.raises(RuntimeError, match="no usable GPU"):
            env.init_device("cuda")
        assert env.init_device("auto") == "cpu"


def test_config_only_use_does_not_start_jittor():
    out = run_python("import sys, jseg; from jseg.config import load_config; "
                     "load_config('configs/demo/segnext_mscan-t_demo.yaml'); "
                     "print('jittor' in sys.modules, callable(jseg.build_model))")
    assert out.returncode == 0 and out.stdout.strip() == "False True", (out.stdout, out.stderr)


def test_jittor_starts_without_torch_and_compiles_on_the_calling_thread():
    """The two start-up settings that keep cold kernel compiles from crashing or hanging:
    no torch loaded beside Jittor, no parallel op compiler; the user's own value wins."""
    code = ("import sys, jseg, jittor as jt; "
            "print(jt.flags.use_parallel_op_compiler, 'torch' in sys.modules)")
    environ = {k: v for k, v in os.environ.items()
               if k not in ("use_parallel_op_compiler", "FIX_TORCH_ERROR")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=environ, cwd=ROOT, timeout=600)
    assert out.returncode == 0 and out.stdout.split() == ["0", "False"], (out.stdout, out.stderr)
    out = run_python(code, use_parallel_op_compiler="4")
    assert out.returncode == 0 and out.stdout.split()[0] == "4", (out.stdout, out.stderr)


@pytest.mark.parametrize("user,expected", [({}, "1000"), ({"GOMP_SPINCOUNT": "5"}, "5"),
                                           ({"OMP_WAIT_POLICY": "passive"}, "None")])
def test_openmp_threads_spin_briefly_unless_the_user_says_otherwise(user, expected):
    """GNU OpenMP's 300,000 spin rounds made a busy neighbour cost ~3x; jseg sets 1000."""
    env_ = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", "import jseg, os; "
                          "print(os.environ.get('GOMP_SPINCOUNT')); "
                          "from jseg.platform.env import restore_openmp_defaults as r; r(); "
                          "print(os.environ.get('GOMP_SPINCOUNT'))"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(env_, **user))
    assert out.stdout.split() == [expected, "None" if not user else expected], \
        (out.stdout, out.stderr[-1000:])


def test_openblas_threads_sleep_when_idle_unless_the_user_says_otherwise():
    """import jseg sets OPENBLAS_THREAD_TIMEOUT before numpy loads OpenBLAS (jseg.ops.sgemm's
    library), and leaves a value the user set alone."""
    code = "import os, jseg, numpy; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert out.stdout.strip() == "4", (out.stdout, out.stderr[-500:])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(env, OPENBLAS_THREAD_TIMEOUT="10"), timeout=120)
    assert out.stdout.strip() == "10", (out.stdout, out.stderr[-500:])


def test_openblas_choice_follows_jseg_openblas():
    """scipy-openblas32 by default (numpy's bundled one when it is missing), numpy's with
    JSEG_OPENBLAS=numpy, none with =none; a bad value warns with the choices and is ignored."""
    code = ("import jseg; from jseg.platform import openblas as o; b = o.library(); "
            "print(b.sgemm if b else None)")
    env = {k: v for k, v in os.environ.items() if k != "JSEG_OPENBLAS"}

    def run(value):
        extra = {} if value is None else {"JSEG_OPENBLAS": value}
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(env, **extra), timeout=120, cwd=ROOT)

    try:
        import scipy_openblas32  # noqa: F401
        default = "scipy_cblas_sgemm"
    except ImportError:
        default = "cblas_sgemm64_"
    assert run(None).stdout.split()[-1] == default
    assert run("numpy").stdout.split()[-1] in ("cblas_sgemm64_", "None")
    assert run("none").stdout.split()[-1] == "None"
    bad = run("mkl")
    assert bad.returncode == 0 and bad.stdout.split()[-1] == default
    assert "JSEG_OPENBLAS='mkl'" in bad.stderr
    assert "scipy-openblas32, numpy, none" in bad.stderr


# What a process runs with, after `import jittor` and `import jseg` in the order given by
# argv[1], and `import jseg.ops.matmul` (which loads the OpenBLAS of the 1x1 convs). The
# settings read when a library loads are taken at the moment it loaded: GOMP_SPINCOUNT
# before `import jittor` (GNU OpenMP loads with Jittor's oneDNN), OPENBLAS_THREAD_TIMEOUT
# when the chosen OpenBLAS was dlopen'ed (or, for numpy's, before the step that mapped it).
_BACK_ENDS = r"""
import ctypes, json, os, sys

def mapped(path):
    with open("/proc/self/maps") as maps:
        return any(line.rstrip().endswith(path) for line in maps)

timeout_at_load = {}
_dlopen = ctypes.CDLL.__init__
def dlopen(self, name, *args, **kwargs):
    if name and "openblas" in str(name) and str(name) not in timeout_at_load and not mapped(str(name)):
        timeout_at_load[str(name)] = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    _dlopen(self, name, *args, **kwargs)
ctypes.CDLL.__init__ = dlopen

order = ("jittor", "jseg") if sys.argv[1] == "jittor" else ("jseg", "jittor")
snapshots = []  # per import: (OPENBLAS_THREAD_TIMEOUT before it, the libraries mapped after)
for name in order + ("jseg.ops.matmul",):
    if name == "jittor":
        spin = os.environ.get("GOMP_SPINCOUNT")
    before = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    __import__(name)
    with open("/proc/self/maps") as maps:
        snapshots.append((before, maps.read()))

import jittor as jt
import jittor.compile_extern as extern
import jseg.ops
from jseg.ops import sgemm
blas = sgemm.library()
if blas is None:
    timeout = threads = None
elif blas.path in timeout_at_load:
    timeout = timeout_at_load[blas.path]
else:  # loaded by numpy's import: as the step that first mapped it found the environment
    timeout = next(before for before, maps in snapshots if blas.path in maps)
if blas is not None:
    threads = getattr(ctypes.CDLL(blas.path), blas.set_threads.replace("_set_", "_get_"))()
print(json.dumps({
    "use_parallel_op_compiler": jt.flags.use_parallel_op_compiler,
    "use_cuda": jt.flags.use_cuda,
    "oneDNN loaded": extern.mkl_ops is not None,
    "jseg.ops kernels on": jseg.ops.enabled(jt.zeros((1,), "float32")),
    "1x1 convs on": blas.name if blas else "Jittor's matmul",
    "OPENBLAS_THREAD_TIMEOUT at its load": timeout,
    "OpenBLAS threads": threads,
    "OpenMP threads": ctypes.CDLL("libgomp.so.1").omp_get_max_threads(),
    "GOMP_SPINCOUNT at Jittor's start": spin,
    "torch loaded": "torch" in sys.modules,
}))
"""

# what jseg sets at start-up (and the user may set): cleared, so that each probe starts fresh
_JSEG_SETTINGS = ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY", "OPENBLAS_THREAD_TIMEOUT", "FIX_TORCH_ERROR",
                  "use_parallel_op_compiler", "log_silent", "JSEG_OPENBLAS", "use_mkl")


def _back_ends(first, **extra_env):
    """The back ends of a process that imports `first` ("jittor" or "jseg") first, and its
    warnings about the import order. nvcc_path="" lets a bare `import jittor` start here."""
    environ = {k: v for k, v in os.environ.items() if k not in _JSEG_SETTINGS}
    environ.update(nvcc_path="", **extra_env)
    out = subprocess.run([sys.executable, "-c", _BACK_ENDS, first], capture_output=True,
                         text=True, env=environ, cwd=ROOT, timeout=600)
    assert out.returncode == 0, (first, out.stdout[-2000:], out.stderr[-3000:])
    warnings = [line for line in out.stderr.splitlines() if "imported before jseg" in line]
    return json.loads(out.stdout.strip().splitlines()[-1]), warnings


# read when Jittor starts, and never again: what `import jittor` first cannot get
_AT_JITTOR_START = ("GOMP_SPINCOUNT at Jittor's start", "torch loaded")


def test_jittor_imported_first_runs_the_same_back_ends():
    """`import jittor` before `import jseg`: every setting that can still take effect is the
    one jseg sets (compiles on the calling thread, OpenBLAS that sleeps when idle, oneDNN, the
    kernels jseg.ops picks, thread counts); the ones read at Jittor's start are named in one
    warning with the fix."""
    ours, quiet = _back_ends("jseg")
    theirs, warnings = _back_ends("jittor")
    print("jseg first:  ", ours)
    print("jittor first:", theirs)
    print("\n".join(warnings))
    differ = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert set(differ) <= set(_AT_JITTOR_START), f"jseg first vs jittor first: {differ}"
    assert ours["use_parallel_op_compiler"] == 0 and ours["OPENBLAS_THREAD_TIMEOUT at its load"] \
        == env.OPENBLAS_THREAD_TIMEOUT and ours["oneDNN loaded"], ours
    assert quiet == [], quiet
    assert len(warnings) == 1 and warnings[0].endswith("Fix: import jseg before jittor"), warnings
    assert "GOMP_SPINCOUNT" in warnings[0], warnings
    assert ("FIX_TORCH_ERROR" in warnings[0]) == theirs["torch loaded"], warnings


def test_jittor_first_with_numpys_openblas_names_the_timeout_it_missed():
    """numpy's OpenBLAS loads with Jittor (numpy), before jseg can set its timeout."""
    theirs, warnings = _back_ends("jittor", JSEG_OPENBLAS="numpy")
    if theirs["1x1 convs on"] == "Jittor's matmul":
        pytest.skip("this numpy has no bundled OpenBLAS")
    assert theirs["OPENBLAS_THREAD_TIMEOUT at its load"] is None, theirs
    assert len(warnings) == 1 and "OPENBLAS_THREAD_TIMEOUT" in warnings[0], warnings


# A fatal signal in one of Jittor's kernel compile threads (use_parallel_op_compiler > 0):
# the child below compiles three new kernels (new each run: nothing cached) in one sync,
# and a watcher process sends SIGSEGV to compile thread C0 (the first thread created after
# the watcher started) once it runs the compiler (has a child). Jittor's sync holds the
# GIL, so the watcher cannot be a thread of the same process. (A fault in another compile
# thread tends to end the process by luck: several threads then tear down the same thread
# list at once; C0 hangs every time.) The child runs behind `sh -c` under
# `timeout`: a child of this process ended by a signal would end pytest too, once it has
# imported Jittor (its SIGCHLD handler, the second thing replace_jittor_signal_handlers
# takes back).
_COMPILE_AND_CRASH = r"""
import os, subprocess, sys, time
os.environ["use_parallel_op_compiler"] = "2"
import jseg
import jittor as jt
if sys.argv[1] == "replace":
    from jseg.platform.env import replace_jittor_signal_handlers
    replace_jittor_signal_handlers()
tag = f"{os.getpid()}_{time.time_ns()}"
outs = [jt.code([4], "float32", [], cpu_src=f"// {tag} {i}\nfor (int j = 0; j < 4; j++) "
                f"@out(j) = {i};") for i in range(3)]
watcher = subprocess.Popen([sys.executable, "-c", sys.argv[2], str(os.getpid())],
                           stdout=subprocess.PIPE, text=True)
assert watcher.stdout.readline().strip() == "ready"
jt.sync(outs)
print("compiled", flush=True)
"""
_WATCHER = r"""
import ctypes, os, signal, sys, time
pid = int(sys.argv[1])
before = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
print("ready", flush=True)
end = time.time() + 60
while time.time() < end:
    new = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    new = [t for t in new if t not in before]  # compile threads, C0 first
    try:
        busy = new and open(f"/proc/{pid}/task/{new[0]}/children").read().split()
    except OSError:
        busy = False
    if busy:
        ctypes.CDLL(None).syscall(234, pid, new[0], int(signal.SIGSEGV))  # tgkill
        print(f"SIGSEGV sent to compile thread {new[0]}", file=sys.stderr, flush=True)
        sys.exit(0)
    time.sleep(0.02)
"""


def _crash_a_compile_thread(mode, seconds):
    """(exit status of the child as the shell saw it, stdout, stderr)."""
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("this kernel has no /proc/<pid>/task/<tid>/children")
    script = ('timeout -s KILL "$1" "$2" -c "$3" "$4" "$5"; echo "status $?"')
    out = subprocess.run(["sh", "-c", script, "sh", str(seconds), sys.executable,
                          _COMPILE_AND_CRASH, mode, _WATCHER], capture_output=True, text=True,
                         cwd=ROOT, timeout=seconds + 60)
    status = int(out.stdout.strip().splitlines()[-1].split()[1])
    return status, out.stdout, out.stderr


def test_jittor_hangs_when_a_compile_thread_crashes():
    """The reproducer: Jittor's handler calls exit() on the faulting compile thread, whose
    exit handlers then wait for that same thread: the process never ends."""
    status, stdout, stderr = _crash_a_compile_thread("jittor", 25)
    assert "SIGSEGV sent to compile thread" in stderr, stderr[-2000:]
    assert status == 128 + 9, (status, stdout, stderr[-2000:])  # still there: timeout's KILL
    assert "compiled" not in stdout, stdout


def test_replaced_handlers_turn_that_hang_into_a_crash_with_stacks():
    start = time.monotonic()
    status, stdout, stderr = _crash_a_compile_thread("replace", 120)
    seconds = time.monotonic() - start
    assert "SIGSEGV sent to compile thread" in stderr, stderr[-3000:]
    assert status == 128 + 11, (status, stdout, stderr[-3000:])  # died of SIGSEGV
    assert "Fatal Python error: Segmentation fault" in stderr, stderr[-3000:]
    assert "compiled" not in stdout and seconds < 60, (seconds, stdout)


_CHILD_KILLED = r"""
import subprocess, sys
import jseg
import jittor as jt
if sys.argv[1] == "replace":
    from jseg.platform.env import replace_jittor_signal_handlers
    replace_jittor_signal_handlers()
subprocess.run([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
print("still here", flush=True)
"""


@pytest.mark.parametrize("mode, survives", [("jittor", False), ("replace", True)])
def test_a_child_ended_by_a_signal_ends_a_jittor_process_unless_replaced(mode, survives):
    out = subprocess.run([sys.executable, "-c", _CHILD_KILLED, mode], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    if survives:
        assert out.returncode == 0 and out.stdout.strip() == "still here", out.stderr[-2000:]
    else:  # Jittor's SIGCHLD handler: "maybe out of memory", quick_exit(1)
        assert out.returncode == 1 and "still here" not in out.stdout, out.stdout
        assert "Caught SIGCHLD" in out.stderr, out.stderr[-2000:]


_START = r"""
import json, os, signal, sys, time
import jseg, jittor_utils
if sys.argv[1] == "warn":  # Jittor's Python info lines of the start become warnings
    jittor_utils.Logwrapper.i = lambda self, *msg: self._log("w", 0, *msg)
import jittor as jt
jt.LOG.w("a warning after the start")
try:  # Jittor's own handler would end the process here: "Caught SIGINT, quick exit", exit 1
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)
    ctrl_c = "nothing"
except KeyboardInterrupt:
    ctrl_c = "KeyboardInterrupt"
print(json.dumps({"log_silent": jt.flags.log_silent, "python logger silent": jt.LOG.log_silent,
                  "Ctrl-C": ctrl_c}))
"""


def _start(code, *args, **extra_env):
    environ = {k: v for k, v in os.environ.items() if k not in ("log_silent", "JSEG_VERBOSE")}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env={**environ, **extra_env}, cwd=ROOT, timeout=600,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout, out.stderr


def test_jittor_starts_quietly_and_gives_ctrl_c_back():
    """Jittor's start-up info lines are off (JSEG_VERBOSE=1: on); its warnings, those of the
    start included, still show; Ctrl-C raises KeyboardInterrupt, not Jittor's quick exit."""
    _, jseg_says = _start("import jseg")  # its own warnings, if any (e.g. no oneDNN)
    out, err = _start(_START, "plain")
    assert json.loads(out) == {"log_silent": 0, "python logger silent": 0,
                               "Ctrl-C": "KeyboardInterrupt"}, out
    assert err.startswith(jseg_says) and "cache_path:" not in err and "Load cc_path" not in err
    assert err.count("\n") == jseg_says.count("\n") + 1 and "a warning after the start" in err
    out, err = _start(_START, "warn")  # Python-side warnings of the start, C++ info lines
    assert "cache_path:" in err and "Load cc_path" not in err, err
    out, err = _start(_START, "plain", JSEG_VERBOSE="1")
    assert "cache_path:" in err and "Load cc_path" in err and "a warning after the start" in err
