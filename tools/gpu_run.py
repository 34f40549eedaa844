"""The one command for an offline GPU host: install the bundle, probe the machine, start
Jittor, then run tools/gpu_check.py within a deadline; everything lands in OUT_DIR.

    python3 tools/gpu_run.py OUT_DIR                # the first command of a slot
    python3 tools/gpu_run.py OUT_DIR --skip-done    # a second one: only the rows not yet measured
    python3 tools/gpu_run.py OUT_DIR --budget 540 -- --variants ts   # after --: gpu_check's options

Needs `.gpu/` (built by `python tools/gpu_bundle.py` on a machine with the package registry,
copied beside this repository) and nothing from the network. Standard library only: it
runs on the host's own Python (3.12) before anything is installed, and sets nothing up in
its own process, so that every child starts from the environment it chose.

Steps, each one's output teed into OUT_DIR (run.log holds all of it):
1. probe.txt (and stdout), written first: Python, CPUs, memory, GPU and driver, nvcc and
   its libcudart, g++, python-config and Python.h, the host's numpy and torch, the CUDA
   libraries found, mpicc, Jittor's cache. Then the bundle's lines after installing it.
2. install: the bundle's two wheel groups, checked against its manifest, with
   `pip install --no-index --no-deps --target` into ~/.cache/jseg/gpu-site/<bundle id>/
   (jittor/: first on the path of every Jittor process, so numpy 1.26 wins there;
   mmseg/: the path of gpu_check's mmseg child, which keeps the host's numpy and torch);
   once per bundle. Then Jittor gets the CUDA 13 fix (tools/jittor_cuda13.py) where the
   nvcc is CUDA 13.
3. what Jittor needs where missing: a python3.X-config stand-in (a venv has none; Jittor
   asks it for the include folder and the extension suffix), Python's headers from the
   bundle where the host has no Python.h; `use_mpi=0` (one GPU: no MPI build).
4. check_env.log: `tools/check_env.py` starts Jittor (its core compiles here: minutes on a
   bare host) and reports device, toolkit, cuBLAS and cuDNN: the rows that need no GPU,
   also the first lines of rows.jsonl. (A new run without --skip-done first renames an
   old rows.jsonl to rows.jsonl.<time>.)
5. gpu_check.log, rows.jsonl: `tools/gpu_check.py --deadline` with what is left of
   `--budget`, under a hard limit a little later; rows stream into rows.jsonl. Should it die
   of a signal while Jittor compiles kernels on many threads, it runs again for the rest
   with serial compiles (`run_check`).
6. table.txt: the table of rows.jsonl, printed whatever way gpu_check ended.

Exit code: gpu_check's (0 passed, 1 a check failed, 2 no GPU, 3 GPU not usable, 4 deadline
first), 5 when the bundle or Jittor's start failed, 124 when gpu_check had to be killed.
"""
import argparse
import ctypes
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile

TOOLS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TOOLS)
sys.path.insert(0, TOOLS)

from gpu_bundle import BundleError, verify_bundle  # noqa: E402  (standard library only)

EXIT_SETUP, EXIT_KILLED = 5, 124
MARGIN = 25.0  # seconds kept after gpu_check's deadline: its table, the copy back
# gpu_check's watchdog acts at its deadline only when Python runs: Jittor holds the GIL in
# a sync (a compile of many kernels, say); the hard limit waits this long after the deadline
HARD_AFTER = 20.0
PY = f"{sys.version_info.major}.{sys.version_info.minor}"


class Log:
    """Writes to stdout and OUT_DIR/run.log at once."""

    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")

    def __call__(self, text=""):
        for stream in (sys.stdout, self.file):
            stream.write(text + "\n")
            stream.flush()

    def raw(self, data):
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        self.file.write(data.decode("utf-8", "replace"))
        self.file.flush()


def run_teed(command, env, log, path, timeout=None, cwd=ROOT):
    """Run `command` with stdout and stderr merged, copied as it comes to the log and to
    `path`; after `timeout` seconds SIGTERM, 10 s later SIGKILL. Returns (exit code,
    seconds); the code is EXIT_KILLED when it had to be stopped."""
    start = time.monotonic()
    with open(path, "ab") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)
        killed, ended = False, None
        os.set_blocking(proc.stdout.fileno(), False)
        while True:
            try:
                data = os.read(proc.stdout.fileno(), 65536)
            except BlockingIOError:
                data = None
            if data:
                log.raw(data)
                out.write(data)
                out.flush()
                continue
            if proc.poll() is not None:
                ended = ended or time.monotonic()
                # done at the end of the output, or soon after the exit when an orphan of
                # it (a compiler, say) still holds the pipe open
                if data == b"" or time.monotonic() - ended > 2:
                    break
            if timeout is not None and time.monotonic() - start > timeout and not killed:
                killed = True
                log(f"gpu_run: {os.path.basename(path)}: {timeout:.0f} s are up; stopping it")
                _signal_group(proc, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
            time.sleep(0.05)
        proc.wait()
    return (EXIT_KILLED if killed else proc.returncode), time.monotonic() - start


def _signal_group(proc, sig):
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _first_line(command, env=None, timeout=30):
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        return f"not found ({type(e).__name__})"
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()
        return f"failed (exit {out.returncode}{': ' + last[-1][:200] if last else ''})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "(no output)"


# ---------------------------------------------------------------------------
# Probe

def _meminfo():
    try:
        with open("/proc/meminfo") as f:
            kib = int(f.readline().split()[1])
        return f"{kib / 2 ** 20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


def _driver():
    if not glob.glob("/dev/nvidia[0-9]*"):
        return "none (no /dev/nvidia* device)"
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        value = ctypes.c_int(0)
        libcuda.cuDriverGetVersion(ctypes.byref(value))
        cuda = f"CUDA {value.value // 1000}.{value.value % 1000 // 10}"
    except OSError as e:
        return f"device nodes but libcuda.so.1 does not load ({e})"
    smi = _first_line(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                       "--format=csv,noheader"])
    return f"{smi}; driver API {cuda}"


def find_nvcc():
    """The nvcc of $nvcc_path, PATH or /usr/local/cuda/bin, the first beside its toolkit's
    lib64/ (a wrapper script elsewhere, e.g. /usr/local/bin/nvcc, is passed over as jseg's
    toolkit choice passes it over), else the first that runs at all; None without one."""
    found = [p for p in (os.environ.get("nvcc_path"), shutil.which("nvcc"),
                         "/usr/local/cuda/bin/nvcc") if p and os.access(p, os.X_OK)]
    for path in found:
        if os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(path))),
                                      "lib64")):
            return path
    return found[0] if found else None


def _nvcc():
    nvcc = find_nvcc()
    if not nvcc:
        return "none found", "none"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        out = f"does not run ({type(e).__name__})"
    release = next((l.strip() for l in out.splitlines() if "release" in l), out.strip())
    root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
    cudart = sorted(glob.glob(os.path.join(root, "lib64", "libcudart.so*"))
                    + glob.glob(os.path.join(root, "targets", "*", "lib", "libcudart.so*")))
    return f"{nvcc}: {release}", ", ".join(cudart) or f"none under {root}"


def config_candidates(executable=sys.executable, version=PY):
    """Where Jittor 1.3.11 looks for python3.X-config (jittor_utils.get_py3_config_path)."""
    folder = os.path.dirname(executable)
    return [f"{folder}/python{version}-config", f"{executable}-config",
            f"/usr/bin/python{version}-config", f"/usr/local/bin/python{version}-config",
            f"{folder}/python3-config"]


def python_headers():
    """The folder of this Python's Python.h, or None when it has none."""
    include = sysconfig.get_paths()["include"]
    return include if os.path.isfile(os.path.join(include, "Python.h")) else None


def _libraries():
    """Where the CUDA libraries Jittor needs are: pip wheels (site-packages/nvidia/*) or the
    toolkit's lib64."""
    found = {}
    nvcc = find_nvcc()
    toolkit = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    for name in ("cublas", "cudnn", "curand", "cufft", "cusparse"):
        places = []
        for entry in sys.path:
            places += glob.glob(os.path.join(entry, "nvidia", "*", "lib", f"lib{name}.so*"))
        if toolkit:
            places += glob.glob(os.path.join(toolkit, "lib64", f"lib{name}.so*"))
        found[name] = min(places, key=len) if places else "NOT FOUND"
    return found


def _host_python(code, env_extra=None, timeout=60):
    """Run `code` in this Python with the host's own path (no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    return _first_line([sys.executable, "-c", code], env=env, timeout=timeout)


def probe():
    """The host's facts, as (name, value) pairs; nothing here can fail the run."""
    nvcc, cudart = _nvcc()
    config = next((p for p in config_candidates() if os.path.isfile(p)), None)
    home_cache = os.path.expanduser("~/.cache/jittor")
    facts = [
        ("time", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("host", f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, {_meminfo()} "
                 f"memory, {shutil.disk_usage(os.path.expanduser('~')).free / 2 ** 30:.0f} GiB "
                 "free in HOME"),
        ("python", f"{platform.python_version()} at {sys.executable} (prefix {sys.prefix})"),
        ("GPU / driver", _driver()),
        ("nvcc", nvcc),
        ("nvcc's libcudart", cudart),
        ("g++", _first_line(["g++", "--version"])),
        ("python-config", config or f"none of {', '.join(config_candidates())}"),
        ("Python.h", python_headers() or f"missing in {sysconfig.get_paths()['include']}"),
        ("host numpy", _host_python("import numpy; print(numpy.__version__, numpy.__file__)")),
        ("host torch", _host_python(
            "import torch; print(torch.__version__, 'CUDA', torch.version.cuda, 'available', "
            "torch.cuda.is_available(), torch.cuda.get_device_name(0) if "
            "torch.cuda.is_available() else '')", timeout=120)),
        *((f"lib{k}", v) for k, v in _libraries().items()),
        ("mpicc", shutil.which("mpicc") or "none"),
        ("Jittor cache", f"{home_cache} exists (warm)" if os.path.isdir(home_cache)
         else f"{home_cache} absent (cold: Jittor compiles its core and every kernel)"),
    ]
    return facts


def write_facts(facts, path, log, title):
    width = max(len(k) for k, _ in facts)
    lines = [f"# {title}"] + [f"{k + ':':<{width + 1}} {v}" for k, v in facts]
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    for line in lines:
        log(line)


# ---------------------------------------------------------------------------
# Install and fill the gaps

def _install_group(wheels, target, log, has_pip):
    """`pip install --no-index --no-deps --target`; without pip (`has_pip` False), the wheels
    are unzipped (what pip does for these: no compiled parts to build, no scripts needed)."""
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # the bundle only
    if has_pip and wheels:
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                               "--disable-pip-version-check", "--no-compile", "--target", tmp,
                               *wheels], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise BundleError(f"pip could not install the bundle into {tmp}:\n"
                              + "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:]))
    elif wheels:
        log("gpu_run: this Python has no pip; unzipping the wheels instead")
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def install(bundle, site, log):
    """Install both groups under `site` (once per bundle); returns the manifest."""
    manifest = verify_bundle(bundle)
    stamp = os.path.join(site, "installed.json")
    if os.path.isfile(stamp):
        log(f"gpu_run: bundle already installed in {site}")
        return manifest
    os.makedirs(site, exist_ok=True)
    has_pip = subprocess.run([sys.executable, "-m", "pip", "--version"],
                             capture_output=True).returncode == 0
    for group in ("jittor", "mmseg"):
        wheels = [os.path.join(bundle, e["path"]) for e in manifest["files"] if e["group"] == group]
        t0 = time.monotonic()
        _install_group(wheels, os.path.join(site, group), log, has_pip)
        log(f"gpu_run: installed {len(wheels)} wheels into {os.path.join(site, group)} "
            f"({time.monotonic() - t0:.1f} s)")
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump({"bundle": manifest.get("created")}, f)
    return manifest


def bundle_id(manifest):
    import hashlib
    text = "".join(sorted(e["sha256"] for e in manifest["files"]))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


STAND_IN = '''#!{python}
"""python-config stand-in written by jseg's tools/gpu_run.py: Jittor asks it for the
include folder and the extension suffix."""
import sys, sysconfig
include = {include!r}
answers = {{"--includes": "-I" + include, "--cflags": "-I" + include,
           "--extension-suffix": sysconfig.get_config_var("EXT_SUFFIX") or "",
           "--abiflags": sys.abiflags, "--prefix": sys.prefix, "--exec-prefix": sys.exec_prefix,
           "--ldflags": "", "--libs": ""}}
print(" ".join(answers[a] for a in sys.argv[1:] if a in answers))
'''


def fill_gaps(bundle, manifest, site, log, bundled_headers=False):
    """Environment variables for Jittor's processes: a python-config stand-in where Jittor
    would find none (or the headers are the bundle's). Returns {name: value}."""
    env = {}
    include = None if bundled_headers else python_headers()
    if include is None:
        entry = next((e for e in manifest["files"] if e["group"] == "headers"), None)
        if entry is None:
            log("gpu_run: warning: this Python has no Python.h and the bundle has no headers; "
                "Jittor's core will not compile (install python3-dev, or rebuild the bundle "
                "on a machine with a Python 3.12)")
            return env
        target = os.path.join(site, "include")
        if not os.path.isdir(os.path.join(target, f"python{PY}")):
            with tarfile.open(os.path.join(bundle, entry["path"])) as tar:
                tar.extractall(target)
        include = os.path.join(target, f"python{PY}")
        log(f"gpu_run: Python.h from the bundle ({entry['dist']} {entry['version']}) in {include}")
    config = next((p for p in config_candidates() if os.path.isfile(p)), None)
    if config is None or include != python_headers():
        path = os.path.join(site, "bin", f"python{PY}-config")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(STAND_IN.format(python=sys.executable, include=include))
        os.chmod(path, 0o755)
        env["python_config_path"] = path
        log(f"gpu_run: python-config stand-in {path} (includes {include})")
    return env


# ---------------------------------------------------------------------------
# The table of the JSON lines

def table_of(jsonl):
    """The rows of gpu_check's JSON-lines file as a plain-text table (latest row of each
    check wins), or a line saying there are none."""
    rows = {}
    try:
        with open(jsonl, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                    rows[(r["id"], r["check"])] = (r["section"], r["check"], r["result"],
                                                   r["verdict"])
                except (ValueError, KeyError):
                    continue
    except OSError:
        pass
    if not rows:
        return "(no rows measured)"
    rows = list(rows.values())
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"{'section':<{widths[0]}}  {'check':<{widths[1]}}  {'result':<{widths[2]}}  verdict",
             "-" * (sum(widths) + 13)]
    lines += [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}"
              for r in rows]
    return "\n".join(lines)


RETRY_AT_LEAST = 90.0  # seconds left for a serial retry to be worth starting


def run_check(command, env, log, out, jsonl, left, skip_done=False):
    """Run gpu_check (`command`) with a deadline inside what `left()` says is left, teed
    into out/gpu_check.log. If it dies of a signal while Jittor compiled in parallel (a
    crash in a compile thread ends the process:
    jseg.platform.env.replace_jittor_signal_handlers), the
    rows it measured are kept and it runs again with --skip-done and serial compiles, time
    permitting. Returns (exit code, seconds of the last run)."""
    serial = env.get("use_parallel_op_compiler") == "0"
    while True:
        deadline = max(5.0, left() - MARGIN)
        run = [*command, "--jsonl", jsonl, "--deadline", f"{deadline:.0f}"]
        if skip_done and os.path.isfile(jsonl):
            run += ["--skip-done", jsonl]
        log(f"gpu_run: {' '.join(run[2:])} (hard limit {deadline + HARD_AFTER:.0f} s"
            f"{', serial compiles' if serial else ''})")
        code, seconds = run_teed(run, env, log, os.path.join(out, "gpu_check.log"),
                                 timeout=deadline + HARD_AFTER)
        if code >= 0 or serial or left() < RETRY_AT_LEAST:
            return code, seconds
        name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
        log(f"gpu_run: gpu_check died of {name} after {seconds:.0f} s with parallel kernel "
            f"compiles; its rows are kept, the rest runs again with use_parallel_op_compiler=0")
        env = dict(env, use_parallel_op_compiler="0")
        serial, skip_done = True, True


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="where every log, the probe and the rows go")
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds this command may take in all (default 540: a "
                        "10-minute command limit with room for the copy back)")
    parser.add_argument("--skip-done", action="store_true",
                        help="run only the rows OUT_DIR/rows.jsonl does not have yet")
    parser.add_argument("--bundle", default=os.path.join(ROOT, ".gpu"),
                        help="the bundle folder (default .gpu/)")
    parser.add_argument("--site", default=None, help="where to install it (default "
                        "~/.cache/jseg/gpu-site/<bundle id>)")
    parser.add_argument("--bundled-headers", action="store_true",
                        help="use the bundle's Python headers even where Python.h exists "
                        "(the rehearsal checks them this way)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    log = Log(os.path.join(out, "run.log"))
    log(f"gpu_run: {time.strftime('%H:%M:%S')} budget {args.budget:.0f} s, output in {out}")

    write_facts(probe(), os.path.join(out, "probe.txt"), log, "probe")
    try:
        manifest = verify_bundle(args.bundle)
        site = args.site or os.path.join(os.path.expanduser("~"), ".cache", "jseg", "gpu-site",
                                         bundle_id(manifest))
        install(args.bundle, site, log)
    except (BundleError, OSError) as e:
        log(f"error: {e}")
        return EXIT_SETUP
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(site, "jittor"), ROOT]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["JSEG_MMSEG_PATH"] = os.path.join(site, "mmseg")
    env.setdefault("use_mpi", "0")  # one GPU: Jittor builds no MPI part
    env.update(fill_gaps(args.bundle, manifest, site, log, args.bundled_headers))
    bundle_facts = [
        ("bundle", f"{args.bundle} ({len(manifest['files'])} files, built "
                   f"{manifest.get('created')}), installed in {site}"),
        ("Jittor's numpy", _first_line([sys.executable, "-c", "import numpy; print("
                                        "numpy.__version__, numpy.__file__)"], env=env)),
        ("mmseg's path", env["JSEG_MMSEG_PATH"]),
        ("python_config_path", env.get("python_config_path", "Jittor finds its own")),
    ]
    write_facts(bundle_facts, os.path.join(out, "probe.txt"), log, "bundle")
    jittor_dir = os.path.join(site, "jittor", "jittor")  # else the Jittor the path finds
    code, seconds = run_teed([sys.executable, "tools/jittor_cuda13.py", "apply", "--if-cuda13"]
                             + (["--jittor-dir", jittor_dir] if os.path.isdir(jittor_dir) else []),
                             env, log, os.path.join(out, "cuda13.log"), timeout=120)
    if code != 0:
        log(f"error: the CUDA 13 fix could not be applied (exit {code}); see cuda13.log")
        return EXIT_SETUP

    left = args.budget - (time.monotonic() - start)
    log(f"gpu_run: starting Jittor (tools/check_env.py; compiles its core on a bare host), "
        f"{left:.0f} s left")
    jsonl = os.path.join(out, "rows.jsonl")
    if os.path.isfile(jsonl) and not args.skip_done:  # a new run: the old rows kept aside
        os.replace(jsonl, f"{jsonl}.{time.strftime('%Y%m%d-%H%M%S')}")
    code, seconds = run_teed([sys.executable, "tools/check_env.py", "--jsonl", jsonl], env, log,
                             os.path.join(out, "check_env.log"), timeout=max(10, left - MARGIN))
    log(f"gpu_run: check_env exit {code} after {seconds:.0f} s")
    if code != 0:
        log("error: Jittor did not start; check_env.log holds its output and the cause")
        return EXIT_SETUP

    code, seconds = run_check([sys.executable, "-u", "tools/gpu_check.py", *extra], env, log,
                              out, jsonl, lambda: args.budget - (time.monotonic() - start),
                              skip_done=args.skip_done)
    table = table_of(jsonl)
    with open(os.path.join(out, "table.txt"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    log(table)
    log(f"gpu_run: gpu_check exit {code} after {seconds:.0f} s; {time.monotonic() - start:.0f} s "
        f"in all; files in {out}")
    return code


if __name__ == "__main__":
    sys.exit(main())
