"""tools/gpu_run.py, the GPU host's one command, on this CPU machine: the python-config
stand-in and the bundle's headers, the install from a bundle, the teed child with its hard
limit, the table of the JSON lines, and the whole command with a small bundle (it probes,
starts Jittor and ends with gpu_check's "no GPU"). tools/gpu_rehearse.sh runs it for real
on Python 3.12 with the real bundle and the network cut."""
import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import time

from conftest import ROOT
from test_gpu_bundle import _bundle

TOOL = os.path.join(ROOT, "tools", "gpu_run.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))
spec = importlib.util.spec_from_file_location("gpu_run", TOOL)
gpu_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_run)


def _log(tmp_path):
    return gpu_run.Log(str(tmp_path / "run.log"))


def test_stand_in_python_config_gives_the_bundled_headers(tmp_path):
    headers = tmp_path / "headers.tar.gz"
    source = tmp_path / "src"
    source.mkdir()
    (source / "Python.h").write_text("/* stand-in */\n")
    with tarfile.open(headers, "w:gz") as tar:
        tar.add(source / "Python.h", arcname=f"python{gpu_run.PY}/Python.h")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    os.replace(headers, bundle / "h.tar.gz")
    manifest = {"files": [dict(path="h.tar.gz", group="headers", dist="python-headers",
                               version="3.x")]}
    site = tmp_path / "site"
    env = gpu_run.fill_gaps(str(bundle), manifest, str(site), _log(tmp_path),
                            bundled_headers=True)
    config = env["python_config_path"]
    include = site / "include" / f"python{gpu_run.PY}"
    assert (include / "Python.h").is_file()
    ask = lambda *a: subprocess.run([config, *a], capture_output=True, text=True,
                                    check=True).stdout.strip()
    assert ask("--includes") == f"-I{include}"
    assert ask("--extension-suffix") == sysconfig.get_config_var("EXT_SUFFIX")


def test_no_stand_in_where_jittor_finds_python_config_and_headers(tmp_path):
    if gpu_run.python_headers() is None or not any(
            os.path.isfile(p) for p in gpu_run.config_candidates()):
        import pytest
        pytest.skip("this Python has no python-config or Python.h where Jittor looks")
    env = gpu_run.fill_gaps(str(tmp_path), {"files": []}, str(tmp_path / "site"),
                            _log(tmp_path))
    assert env == {}, env


def test_probe_takes_the_nvcc_beside_its_toolkit_over_a_wrapper(tmp_path, monkeypatch):
    real = "/usr/local/cuda/bin/nvcc"
    if not os.access(real, os.X_OK) or not os.path.isdir("/usr/local/cuda/lib64"):
        import pytest
        pytest.skip("no CUDA toolkit at /usr/local/cuda")
    wrapper = tmp_path / "nvcc"
    wrapper.write_text(f'#!/bin/sh\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.delenv("nvcc_path", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu_run.find_nvcc() == real
    nvcc, cudart = gpu_run._nvcc()
    assert nvcc.startswith(real) and "release" in nvcc and "libcudart.so" in cudart, (nvcc, cudart)


def test_install_puts_each_group_in_its_folder_once(tmp_path):
    folder, _ = _bundle(tmp_path)
    site = tmp_path / "site"
    log = _log(tmp_path)
    gpu_run.install(str(folder), str(site), log)
    assert (site / "jittor" / "tiny" / "__init__.py").read_text() == "x = 1\n"
    assert (site / "mmseg").is_dir() and (site / "installed.json").is_file()
    gpu_run.install(str(folder), str(site), log)
    assert "already installed" in (tmp_path / "run.log").read_text()


def test_a_child_past_its_limit_is_stopped_and_its_output_kept(tmp_path):
    code = "import time\nprint('started', flush=True)\ntime.sleep(60)\n"
    start = time.monotonic()
    rc, seconds = gpu_run.run_teed([sys.executable, "-c", code], dict(os.environ),
                                   _log(tmp_path), str(tmp_path / "child.log"), timeout=1.5)
    assert rc == gpu_run.EXIT_KILLED and time.monotonic() - start < 20, (rc, seconds)
    assert "started" in (tmp_path / "child.log").read_text()


def test_a_check_that_crashes_compiling_in_parallel_runs_again_serially(tmp_path):
    """gpu_check ends by a signal (what replace_jittor_signal_handlers makes of a crash in a compile
    thread): its rows stay, the rest runs with --skip-done and serial compiles."""
    script = tmp_path / "check.py"
    script.write_text(
        "import os, signal, sys\n"
        "args = sys.argv[1:]\n"
        "jsonl = args[args.index('--jsonl') + 1]\n"
        "with open(jsonl, 'a') as f:\n"
        "    f.write(repr((os.environ.get('use_parallel_op_compiler'), '--skip-done' in args))"
        " + '\\n')\n"
        "if os.environ.get('use_parallel_op_compiler') != '0':\n"
        "    os.kill(os.getpid(), signal.SIGSEGV)\n")
    jsonl = str(tmp_path / "rows.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "use_parallel_op_compiler"}
    code, _ = gpu_run.run_check([sys.executable, "-u", str(script)], env, _log(tmp_path),
                                str(tmp_path), jsonl, lambda: 300.0)
    assert code == 0, (tmp_path / "run.log").read_text()
    assert open(jsonl).read().splitlines() == ["(None, False)", "('0', True)"]
    assert "died of SIGSEGV" in (tmp_path / "run.log").read_text()
    # no retry without the time for it
    os.remove(jsonl)
    code, _ = gpu_run.run_check([sys.executable, "-u", str(script)], env, _log(tmp_path),
                                str(tmp_path), jsonl, lambda: 30.0)
    assert code == -11 and open(jsonl).read().splitlines() == ["(None, False)"]


def test_table_of_the_json_lines(tmp_path):
    jsonl = tmp_path / "rows.jsonl"
    rows = [dict(id="a", section="logits", check="T", result="skipped", verdict="skip"),
            dict(id="b", section="speed", check="jseg T", result="2.0 ms/img", verdict="info"),
            dict(id="a", section="logits", check="T", result="max rel 1e-6", verdict="ok")]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    table = gpu_run.table_of(str(jsonl)).splitlines()
    assert table[0].split() == ["section", "check", "result", "verdict"], table
    assert [l.split()[-1] for l in table[2:]] == ["ok", "info"], table  # the later row wins
    assert gpu_run.table_of(str(tmp_path / "none.jsonl")) == "(no rows measured)"


def test_the_whole_command_without_a_gpu(tmp_path):
    """With a small bundle (the real one takes the registry): probe first, the bundle's
    path first for Jittor, Jittor started, gpu_check's one line and its exit 2."""
    folder, _ = _bundle(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, TOOL, str(out), "--bundle", str(folder), "--site",
                           str(tmp_path / "site"), "--budget", "300"], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "run.log").read_text()
    probe = (out / "probe.txt").read_text()
    for fact in ("python:", "GPU / driver:", "nvcc:", "g++:", "python-config:", "Python.h:",
                 "host numpy:", "libcublas:", "mpicc:", "bundle:", "Jittor's numpy:"):
        assert fact in probe, probe
    assert log.index("# probe") < log.index("installed") < log.index("check_env exit 0")
    assert "device:" in (out / "check_env.log").read_text()
    assert "gpu_check: no GPU" in (out / "gpu_check.log").read_text()
    # the rows that need no GPU: the environment, from check_env
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == {"environment"} and len(rows) >= 8, rows
    table = (out / "table.txt").read_text()
    assert "CUDA toolkit" in table and "none: no NVIDIA driver" in table, table


def test_the_rehearsal_on_python_312_offline(tmp_path):
    """The whole host command on Python 3.12 with numpy 2, the real bundle and the network
    cut: tools/gpu_rehearse.sh (3-4 minutes; builds the bundle and a venv from the registry
    when missing). Opt in with JSEG_GPU_REHEARSAL=1."""
    import pytest
    if os.environ.get("JSEG_GPU_REHEARSAL") != "1":
        pytest.skip("the rehearsal takes minutes and the package registry: set JSEG_GPU_REHEARSAL=1")
    out = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_rehearse.sh"), str(tmp_path)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "rehearsal passed" in out.stdout, out.stdout[-4000:]
