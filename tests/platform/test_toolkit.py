"""The CUDA toolkit choice, with faked drivers and nvcc versions, and the CUDA 13 fix for
Jittor 1.3.11 (apply / check / revert on a copy of the installed Jittor's files)."""
import os
import shutil
import subprocess
import sys

import pytest

from jseg.platform import jittor_cuda13 as fix
from jseg.platform import toolkit as tk
from jseg.platform.toolkit import choose_toolkit

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "jittor_cuda13.py")

CUDA12 = ("/usr/local/cuda-12.4/bin/nvcc", (12, 4))
CUDA11 = ("/usr/local/cuda-11.8/bin/nvcc", (11, 8))
CUDA13 = ("/usr/local/cuda/bin/nvcc", (13, 0))


def test_no_driver_is_cpu_whatever_nvcc_is_there():
    choice = choose_toolkit(None, [CUDA13, CUDA12])
    assert (choice.nvcc, choice.source, choice.problem) == ("", "cpu", None)
    assert not choice.uses_cuda
    assert choose_toolkit((13, 0), [CUDA12], forced_cpu=True).reason == "JSEG_DEVICE=cpu"


def test_a_cuda12_toolkit_is_preferred_to_cuda13():
    choice = choose_toolkit((13, 0), [CUDA13, CUDA11, CUDA12])
    assert (choice.nvcc, choice.version, choice.source) == (CUDA12[0], (12, 4), "system")
    assert choice.problem is None and choice.uses_cuda


def test_cuda13_only_needs_the_fix_and_names_it():
    unpatched = choose_toolkit((13, 0), [CUDA13])
    assert unpatched.nvcc == "" and unpatched.source == "cpu"
    assert "tools/jittor_cuda13.py apply" in unpatched.problem
    assert "CUDA 13.0" in unpatched.problem
    patched = choose_toolkit((13, 0), [CUDA13], cuda13_fix=True)
    assert (patched.nvcc, patched.version, patched.problem) == (CUDA13[0], (13, 0), None)
    assert "CUDA 13 fix" in patched.reason


def test_jtcuda_is_left_to_jittor():
    choice = choose_toolkit((13, 0), [CUDA13], jtcuda="/h/.cache/jittor/jtcuda/x/bin/nvcc")
    assert choice.nvcc is None and choice.source == "jtcuda" and choice.problem is None


def test_the_users_nvcc_path_wins():
    assert choose_toolkit((13, 0), [CUDA12], user_nvcc="").source == "cpu"
    choice = choose_toolkit((13, 0), [CUDA13], user_nvcc=CUDA13[0])
    assert choice.source == "user" and "jittor_cuda13.py apply" in choice.problem
    assert choose_toolkit((13, 0), [CUDA12], user_nvcc=CUDA12[0]).problem is None


def test_a_toolkit_newer_than_the_driver_cannot_work():
    choice = choose_toolkit((12, 2), [CUDA13])
    assert choice.source == "cpu"
    assert "driver supports CUDA 12.2" in choice.problem and "update the driver" in choice.problem
    # an older toolkit beside it is fine
    assert choose_toolkit((12, 2), [CUDA13, CUDA11]).nvcc == CUDA11[0]


def test_a_driver_without_any_toolkit_names_jittors_installer():
    choice = choose_toolkit((12, 8), [])
    assert choice.source == "cpu" and tk.JTCUDA_INSTALL in choice.problem


def _fake_nvcc(folder, release):
    folder.mkdir(parents=True)
    path = folder / "nvcc"
    path.write_text("#!/bin/sh\necho 'Cuda compilation tools, release %s, V%s.1'\n"
                    % (release, release))
    path.chmod(0o755)
    return str(path)


def test_detect_reads_driver_and_nvcc_versions(tmp_path, monkeypatch):
    nvcc13 = _fake_toolkit(tmp_path / "cuda13", "13.0", tk.REQUIRED_LIBRARIES)
    nvcc12 = _fake_toolkit(tmp_path / "cuda12", "12.6", tk.REQUIRED_LIBRARIES)
    assert tk.nvcc_version(nvcc12) == (12, 6)
    assert tk.nvcc_version(str(tmp_path / "missing")) is None
    monkeypatch.delenv("JSEG_DEVICE", raising=False)
    monkeypatch.delenv("nvcc_path", raising=False)
    monkeypatch.setattr(tk, "driver_cuda_version", lambda: (13, 0))
    asked = []
    monkeypatch.setattr(tk, "find_system_nvcc", lambda: [nvcc13, nvcc12])
    choice = tk.detect_toolkit(str(tmp_path), lambda: asked.append(1) or False)
    assert choice.nvcc == nvcc12 and asked == [1]
    monkeypatch.setattr(tk, "find_system_nvcc", lambda: [nvcc13])
    assert "jittor_cuda13.py apply" in tk.detect_toolkit(str(tmp_path), lambda: False).problem
    assert tk.detect_toolkit(str(tmp_path), lambda: True).nvcc == nvcc13
    # Jittor's jtcuda in the Jittor home wins over both
    jtcuda = _fake_nvcc(tmp_path / "jtcuda" / "cuda12.2_cudnn8_linux" / "bin", "12.2")
    assert tk.detect_toolkit(str(tmp_path), lambda: False).source == "jtcuda"
    os.remove(jtcuda)
    monkeypatch.setenv("JSEG_DEVICE", "cpu")
    assert tk.detect_toolkit(str(tmp_path), lambda: True).reason == "JSEG_DEVICE=cpu"


def test_without_a_driver_jittor_gets_an_empty_nvcc_path():
    code = "import jseg, os; from jseg.platform.env import cuda_toolkit as c; " \
           "print(repr(os.environ['nvcc_path']), c().source)"
    env = {k: v for k, v in os.environ.items() if k != "nvcc_path"}
    if tk.driver_cuda_version() is not None:
        pytest.skip("this machine has an NVIDIA driver")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=300)
    assert out.stdout.split() == ["''", "cpu"], out.stderr


# --- the CUDA 13 fix ---------------------------------------------------------------

@pytest.fixture
def jittor_copy(tmp_path):
    """The files the fix touches, copied from the installed Jittor 1.3.11 (restored to
    the original first, in case this installation is patched)."""
    source = fix.jittor_dir()
    target = tmp_path / "jittor"
    for rel in ["__init__.py"] + [p.path for p in fix.PATCHES]:
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source / rel, target / rel)
    fix.revert(target)
    return target


def _tool(*args, timeout=300):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)


def _snapshot(directory):
    return {p.path: (directory / p.path).read_bytes() for p in fix.PATCHES}


def test_apply_check_revert_round_trip(jittor_copy):
    original = _snapshot(jittor_copy)
    assert fix.state(jittor_copy) == "original"
    out = _tool("apply", "--jittor-dir", str(jittor_copy))
    assert out.returncode == 0 and f"patched {len(fix.PATCHES)} file(s)" in out.stdout, out
    patched = _snapshot(jittor_copy)
    assert patched != original and fix.state(jittor_copy) == "applied"
    header = patched["extern/cuda/inc/helper_cuda.h"].decode()
    assert "deviceProp.computeMode" not in header and "deviceProp.clockRate" not in header
    out = _tool("apply", "--jittor-dir", str(jittor_copy))  # idempotent
    assert out.returncode == 0 and "already applied" in out.stdout
    assert _snapshot(jittor_copy) == patched
    out = _tool("check", "--jittor-dir", str(jittor_copy))
    assert out.returncode == 0 and "applied" in out.stdout
    out = _tool("revert", "--jittor-dir", str(jittor_copy))
    assert out.returncode == 0 and _snapshot(jittor_copy) == original
    assert fix.state(jittor_copy) == "original"


def test_another_jittor_version_is_refused_and_untouched(jittor_copy):
    init = jittor_copy / "__init__.py"
    init.write_text(init.read_text().replace("__version__ = '1.3.11.0'", "__version__ = '1.3.12.0'"))
    before = _snapshot(jittor_copy)
    out = _tool("apply", "--jittor-dir", str(jittor_copy))
    assert out.returncode == 1 and out.stderr.startswith("error: Jittor 1.3.12.0"), out.stderr
    assert "pip install jittor==1.3.11" in out.stderr
    assert _snapshot(jittor_copy) == before


def test_a_file_changed_by_someone_else_is_refused(jittor_copy):
    first = jittor_copy / fix.PATCHES[0].path
    first.write_text(first.read_text() + "\n// local edit\n")
    before = _snapshot(jittor_copy)
    out = _tool("apply", "--jittor-dir", str(jittor_copy))
    assert out.returncode == 1 and "differ from Jittor 1.3.11.0" in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert _snapshot(jittor_copy) == before


def _fake_toolkit(root, release="13.0", libraries=()):
    nvcc = _fake_nvcc(root / "bin", release)
    (root / "include").mkdir()
    (root / "lib64").mkdir()
    (root / "include" / "cuda_runtime.h").write_text("")
    (root / "lib64" / "libcudart.so").write_text("")
    _add_libraries(root, "lib64", libraries)
    return nvcc


def _add_libraries(root, lib, libraries, suffix=""):
    (root / "include").mkdir(parents=True, exist_ok=True)
    (root / lib).mkdir(parents=True, exist_ok=True)
    for name in libraries:
        (root / "include" / tk._HEADERS[name]).write_text(f"// {name}")
        (root / lib / f"lib{name}.so{suffix}").write_text("")


def test_libraries_from_pip_wheels_are_joined_with_the_toolkit(tmp_path):
    nvcc = _fake_toolkit(tmp_path / "cuda", libraries=["curand", "cufft", "cusparse"])
    assert tk.has_toolkit_layout(nvcc)
    wheels = tmp_path / "site" / "nvidia" / "cu13"
    _add_libraries(wheels, "lib", ["cublas"], suffix=".13")
    cudnn = tmp_path / "site" / "nvidia" / "cudnn"
    _add_libraries(cudnn, "lib", ["cudnn"], suffix=".9")
    choice = choose_toolkit((13, 0), [(nvcc, (13, 0))], cuda13_fix=True)
    views = tmp_path / "views"
    done = tk.complete_toolkit(choice, views, roots=[str(wheels), str(cudnn)])
    assert done.problem is None and done.source == "system"
    assert "cublas, cudnn from pip wheels" in done.reason
    view = tk.toolkit_root(done.nvcc)
    assert tk.missing_libraries(view) == []
    assert os.readlink(os.path.join(view, "lib64", "libcublas.so")) == "libcublas.so.13"
    assert os.path.realpath(os.path.join(view, "include", "cuda_runtime.h")) == \
        str(tmp_path / "cuda" / "include" / "cuda_runtime.h")
    out = subprocess.run([done.nvcc, "--version"], capture_output=True, text=True)
    assert "release 13.0" in out.stdout  # the view's nvcc runs the real one
    again = tk.complete_toolkit(choice, views, roots=[str(wheels), str(cudnn)])
    assert again == done and len(os.listdir(views)) == 1  # reused, not rebuilt
    # without the wheels: CPU, naming what to install
    lacking = tk.complete_toolkit(choice, views, roots=[str(wheels)])
    assert lacking.source == "cpu" and "pip install nvidia-cudnn-cu13" in lacking.problem
    # a complete toolkit is taken as it is
    full = _fake_toolkit(tmp_path / "full", "12.4", tk.REQUIRED_LIBRARIES)
    complete = choose_toolkit((13, 0), [(full, (12, 4))])
    assert tk.complete_toolkit(complete, views, roots=[]) == complete


# --- the compile check without a GPU (jseg.diagnostics.cuda_compile) ---------------

CUDART = "/usr/local/cuda/lib64/libcudart.so"
needs_cuda_toolkit = pytest.mark.skipif(
    not (os.path.exists(CUDART) and shutil.which("gcc") and shutil.which("nm")),
    reason="needs a CUDA toolkit at /usr/local/cuda, gcc and nm")


@needs_cuda_toolkit
def test_stand_in_runtime_reports_one_device_and_accepts_every_call(tmp_path):
    import ctypes

    from jseg.diagnostics import cuda_compile as cc
    real = os.path.realpath(CUDART)
    source = cc._FAKE_CUDART.replace("ARCH", "90")
    fake = cc._build_stand_in(real, source, "/usr/local/cuda/include", tmp_path)
    assert fake.name == cc._soname(real)
    # every function the real runtime exports is there, under the real symbol version
    assert set(cc._exported(real)) <= set(cc._exported(fake))
    lib = ctypes.CDLL(str(fake))
    count = ctypes.c_int(0)
    assert lib.cudaGetDeviceCount(ctypes.byref(count)) == 0 and count.value == 1
    major = ctypes.c_int(0)
    assert lib.cudaDeviceGetAttribute(ctypes.byref(major), 75, 0) == 0  # ComputeCapabilityMajor
    assert major.value == 9
    assert lib.cudaStreamBeginCapture(None, 0) == 0  # a stub


def test_compile_check_names_the_missing_libraries(jittor_copy, tmp_path):
    fix.apply(jittor_copy)
    empty = tmp_path / "libs"
    (empty / "include").mkdir(parents=True)
    (empty / "lib").mkdir()
    out = _tool("compile-check", "--jittor-dir", str(jittor_copy), "--cuda-libs", str(empty),
                "--work-dir", str(tmp_path / "work"))
    assert out.returncode == 1, out
    last = out.stderr.strip().splitlines()[-1]
    if shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc"):
        assert last.startswith("error: Jittor needs") and "pip install nvidia-cublas" in last, last
    else:
        assert last.startswith("error: no nvcc found"), last


@pytest.mark.skipif(os.environ.get("JSEG_CUDA_COMPILE_CHECK") != "1",
                    reason="the full CUDA compile check (minutes, needs the CUDA library "
                    "wheels): set JSEG_CUDA_COMPILE_CHECK=1")
def test_full_cuda_compile_check():
    out = _tool("compile-check", timeout=3600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "compile check passed" in out.stdout


def test_jittor_settings_follow_the_toolkit():
    from jseg.platform.env import cuda_settings

    assert cuda_settings(choose_toolkit(None, [CUDA13])) == {"nvcc_path": ""}
    cuda12 = cuda_settings(choose_toolkit((13, 0), [CUDA12]))
    assert cuda12 == {"nvcc_path": CUDA12[0], "use_cutlass": "0"}
    # CUDA 13: Jittor's NCCL 2.8.4 does not build with it, so no NCCL
    cuda13 = cuda_settings(choose_toolkit((13, 0), [CUDA13], cuda13_fix=True))
    assert cuda13 == {"nvcc_path": CUDA13[0], "use_cutlass": "0", "use_nccl": "0"}
    assert cuda_settings(choose_toolkit((13, 0), [], jtcuda="/j/bin/nvcc")) == {"use_cutlass": "0"}
