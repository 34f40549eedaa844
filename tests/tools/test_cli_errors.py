"""One line means one line: every command-line tool answers bad input with one `error:` line
on stderr (no Jittor start-up log before it) and Ctrl-C with one `interrupted` line and exit
code 130 (no traceback, no Jittor "quick exit")."""
import glob
import importlib.util
import os
import signal
import socket
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import DEMO_CONFIG, ROOT, TINY_OVERRIDES as TINY

GPU_KIT = ("gpu_run.py", "gpu_check.py", "gpu_bundle.py")  # stdlib-only, their own handling
TOOLS = sorted(p for p in glob.glob(os.path.join(ROOT, "tools", "**", "*.py"), recursive=True)
               if os.path.basename(p) not in GPU_KIT) + [
    os.path.join(ROOT, "weights_convert", "convert.py")]


def _sigint_default():  # Python ignores Ctrl-C when it starts with SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env():
    # JSEG_DEVICE=cpu: the same start on a GPU machine; no inherited log_silent or JSEG_VERBOSE
    env = {k: v for k, v in os.environ.items() if k not in ("log_silent", "JSEG_VERBOSE")}
    return {**env, "JSEG_DEVICE": "cpu"}


def _tool(path, *args, env=None):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, path), *map(str, args)],
                            cwd=ROOT, env=env or _env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)


@pytest.fixture(scope="module")
def startup_lines():
    """What `import jseg` itself says on stderr here (warnings a user must see, e.g. no
    oneDNN): expected before a tool's one line; nothing on a well set-up machine."""
    out = subprocess.run([sys.executable, "-c", "import jseg"], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    return out.stderr.splitlines()


def _load_tool(path):
    name = "tool_" + os.path.relpath(path, ROOT).replace(os.sep, "_")[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", TOOLS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_tool_refuses_an_unknown_option_in_one_line(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        _load_tool(path).main(["--no-such-option"])
    err = capsys.readouterr().err
    assert exit_.value.code == 1, (exit_.value.code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err


def test_every_tool_runs_its_main_through_run_main():
    for path in TOOLS:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        assert 'if __name__ == "__main__":\n    run_main(main)\n' in text, path


@pytest.mark.parametrize("num", ["0", "-1"])
def test_browse_dataset_needs_at_least_one_sample(num, tmp_path, capsys):
    tool = _load_tool(os.path.join(ROOT, "tools", "browse_dataset.py"))
    with pytest.raises(SystemExit) as exit_:
        tool.main(["--config-file", DEMO_CONFIG, "--out-dir", str(tmp_path / "out"), "-n", num])
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err == (f"error: argument -n/--num: must be a whole number "
                                             f">= 1, got '{num}' (see --help)\n"), err
    assert not (tmp_path / "out").exists()


def test_run_main_turns_ctrl_c_into_one_line(capsys):
    from jseg.utils.cli import run_main

    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_:
        run_main(main)
    assert exit_.value.code == 130 and capsys.readouterr().err == "interrupted\n"


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "street.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), 128, np.uint8))
    return path


@pytest.mark.parametrize("tool", ["run_net", "export", "demo"])
def test_bad_input_after_jittor_started_is_the_only_line(tool, image, tmp_path, startup_lines):
    """Jittor's start-up log stays off: run_net and export import Jittor before they read the
    config (a wrong key), demo before it reads the weights (a missing file)."""
    args, error = {
        "run_net": (["tools/run_net.py", "--config-file", DEMO_CONFIG, "--task", "train",
                     "bogus.key=1"], "error: unknown key 'bogus'"),
        "export": (["tools/export.py", "--config-file", DEMO_CONFIG, "--checkpoint",
                    tmp_path / "w.pkl", "--format", "onnx", tmp_path / "m.onnx", "bogus.key=1"],
                   "error: unknown key 'bogus'"),
        "demo": (["tools/demo.py", image, "--config-file", DEMO_CONFIG, "--checkpoint",
                  tmp_path / "w.pkl", "--out-dir", tmp_path / "out", "--cfg-options", *TINY],
                 f"error: {tmp_path / 'w.pkl'}: no such file")}[tool]
    proc = _tool(*args)
    _, err = proc.communicate(timeout=600)
    lines = err.splitlines()
    assert proc.returncode == 1, (proc.returncode, err)
    assert lines[:len(startup_lines)] == startup_lines and len(lines) == len(startup_lines) + 1, err
    assert lines[-1].startswith(error), err
    assert sorted(os.listdir(tmp_path)) == ["street.png"]  # nothing written


@pytest.fixture
def silent_server():
    """An HTTP address that accepts a connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    yield server
    server.close()


def _interrupt_when_connected(proc, server):
    """Ctrl-C once `proc` waits for the server's answer; (stdout, stderr) of `proc`."""
    for _ in range(1200):  # 10 minutes: a cold Jittor compiles its core first
        try:
            connection, _ = server.accept()
            break
        except socket.timeout:
            assert proc.poll() is None, ("ended before it connected", proc.communicate())
    else:
        proc.kill()
        raise AssertionError(f"never connected: {proc.communicate()}")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    connection.close()
    return out, err


@pytest.mark.parametrize("tool", ["convert", "demo"])
def test_ctrl_c_during_a_download_is_one_line(tool, silent_server, image, tmp_path,
                                              startup_lines):
    """convert: Jittor not imported; demo: imported (its SIGINT handler would quit at once with
    its own line and exit code 1)."""
    url = "http://127.0.0.1:%d/weights.pth" % silent_server.getsockname()[1]
    cache = tmp_path / "cache"
    if tool == "convert":
        args = ["weights_convert/convert.py", url, tmp_path / "out.pkl"]
    else:
        args = ["tools/demo.py", image, "--config-file", DEMO_CONFIG, "--checkpoint", url,
                "--out-dir", tmp_path / "out", "--device", "cpu", "--cfg-options", *TINY]
    proc = _tool(*args, env={**_env(), "JSEG_CACHE_DIR": str(cache)})
    _, err = _interrupt_when_connected(proc, silent_server)
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.splitlines() == startup_lines + ["interrupted"], err
    assert not (tmp_path / "out.pkl").exists() and not (tmp_path / "out").exists()


def test_tools_import_the_installed_package():
    """No tool puts the repository on sys.path itself: jseg is installed (pip install -e .),
    so the tools run the package the tests test."""
    import glob
    for path in glob.glob(os.path.join(ROOT, "tools", "**", "*.py"), recursive=True):
        with open(path) as f:
            text = f.read()
        if os.path.basename(path) == "gpu_run.py":  # stdlib only; puts tools/ on its own path
            continue
        assert "sys.path.insert" not in text, path
