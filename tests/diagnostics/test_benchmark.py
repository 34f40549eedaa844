"""Speed benchmark (jseg.diagnostics.benchmark) and tools/benchmark.py.

The tiny demo model (conftest.TINY_OVERRIDES) at 48x64, 1 warm-up and 2 timed iterations:
the numbers mean nothing here, only that every field is there and positive. The comparison
with mmseg (PyTorch) runs only where the reference stack is installed
(`pip install -e .[parity]`).
"""
import importlib.util
import math
import os
import subprocess
import sys

import jseg  # noqa: F401  (configures Jittor before anything imports it)
import numpy as np
import pytest

from conftest import DEMO_CONFIG, TINY_OVERRIDES
from jseg.config import load_config
from jseg.diagnostics import benchmark
from jseg.diagnostics.benchmark import BenchmarkError, format_report, run_benchmark, summarize

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "benchmark.py")
SHAPE = (48, 64)
QUICK = dict(shape=SHAPE, iters=2, warmup=1)


@pytest.fixture(autouse=True)
def _restore_environment(monkeypatch):
    """run_benchmark sets OMP_NUM_THREADS; undo that after each test."""
    if "OMP_NUM_THREADS" in os.environ:
        monkeypatch.setenv("OMP_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.fixture(scope="module")
def cfg():
    return load_config(DEMO_CONFIG, TINY_OVERRIDES)


def _check_result(result, frameworks, unit_images):
    assert set(result["results"]) == set(frameworks), result["results"].keys()
    for name, s in result["results"].items():
        numbers = {k: s[k] for k in ("median_ms", "q1_ms", "q3_ms", "min_ms", "max_ms",
                                     "img_per_s", "memory_mb")}
        assert all(math.isfinite(v) and v > 0 for v in numbers.values()), (name, numbers)
        assert s["min_ms"] <= s["q1_ms"] <= s["median_ms"] <= s["q3_ms"] <= s["max_ms"], numbers
        assert s["iterations"] == result["iters"] == len(s["seconds"]), s
        # images per second = images per iteration / median iteration time
        expected = result["batch"] / (s["median_ms"] * unit_images / 1e3)
        assert abs(s["img_per_s"] - expected) < 1e-9 * expected, (s["img_per_s"], expected)
        assert s["finite"], f"{name}: non-finite output"
    assert result["threads"]["jittor"] == result["threads_asked"], result["threads"]
    for key in ("python", "jittor", "device", "oneDNN", "numpy"):
        assert result["env"].get(key), (key, result["env"])


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_jittor_benchmark_fields(cfg, mode):
    batch = 2
    result = run_benchmark(cfg, mode=mode, batch=batch, config_name="demo", **QUICK)
    _check_result(result, ["jittor"], batch if mode == "infer" else 1)
    text = "\n".join(format_report(result))
    unit = "ms/img" if mode == "infer" else "ms/step"
    for field in ("config:", "device:", "threads:", "load:", "versions:", "jittor 1.",
                  unit, "IQR", "img/s", "peak memory", "MiB"):
        assert field in text, f"{field!r} missing from:\n{text}"
    assert "time ratio" not in text, text


def test_summarize_by_hand():
    s = summarize([0.4, 0.1, 0.2, 0.3], per=2)  # seconds per iteration of 2 images
    expected = {"median_ms": 125.0, "q1_ms": 87.5, "q3_ms": 162.5, "min_ms": 50.0,
                "max_ms": 200.0, "iterations": 4}
    assert all(abs(s[k] - v) < 1e-9 for k, v in expected.items()), (s, expected)


def test_bad_settings_raise(cfg):
    for kwargs, word in [(dict(mode="eval"), "mode"), (dict(shape=(0, 64)), "--shape"),
                         (dict(batch=0), "--batch"), (dict(iters=0), "--iters"),
                         (dict(warmup=-1), "--warmup"), (dict(threads=0), "thread")]:
        args = dict(QUICK, **kwargs)
        with pytest.raises(BenchmarkError, match=word):
            run_benchmark(cfg, **args)


def test_vs_torch_without_reference_says_how_to_install(cfg, monkeypatch):
    monkeypatch.setattr(benchmark, "torch_available", lambda: False)
    with pytest.raises(BenchmarkError, match=r"pip install -e \.\[parity\]"):
        run_benchmark(cfg, vs_torch=True, **QUICK)


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_vs_torch(cfg, mode):
    for name in ("torch", "mmcv", "mmengine", "mmseg"):
        pytest.importorskip(name)
    result = run_benchmark(cfg, mode=mode, batch=2, vs_torch=True, **QUICK)
    _check_result(result, ["jittor", "torch"], 2 if mode == "infer" else 1)
    assert result["threads"]["torch"] == result["threads_asked"], result["threads"]
    ratio = result["results"]["jittor"]["median_ms"] / result["results"]["torch"]["median_ms"]
    assert abs(result["ratio"] - ratio) < 1e-12, (result["ratio"], ratio)
    text = "\n".join(format_report(result))
    for field in ("torch 2.", "mmsegmentation 1.2.2", "time ratio jittor / torch",
                  "copied into mmseg's model"):
        assert field in text, f"{field!r} missing from:\n{text}"


@pytest.mark.parametrize("batch", [1, 2])
def test_vs_onnxruntime(cfg, batch):
    """The exported graph, timed by onnxruntime in the same rounds: finite results, the
    thread count it was given, the ratio printed."""
    pytest.importorskip("onnxruntime")
    result = run_benchmark(cfg, batch=batch, vs_onnxruntime=True, threads=1, **QUICK)
    assert set(result["results"]) == {"jittor", "onnxruntime"}
    s = result["results"]["onnxruntime"]
    assert s["finite"] and 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"], s
    assert result["threads"]["onnxruntime"] == 1
    ratio = result["results"]["jittor"]["median_ms"] / s["median_ms"]
    assert abs(result["ratio_onnxruntime"] - ratio) < 1e-12
    text = "\n".join(format_report(result))
    for field in ("onnxruntime 1.", "time ratio jittor / onnxruntime", "in Jittor's process"):
        assert field in text, f"{field!r} missing from:\n{text}"


def test_vs_onnxruntime_refuses_what_the_graph_does_not_do(cfg, monkeypatch):
    with pytest.raises(BenchmarkError, match="whole-image inference"):
        run_benchmark(cfg, mode="train", vs_onnxruntime=True, **QUICK)
    monkeypatch.setattr(benchmark, "onnxruntime_available", lambda: False)
    with pytest.raises(BenchmarkError, match=r"pip install -e \.\[export\]"):
        run_benchmark(cfg, vs_onnxruntime=True, **QUICK)


# ---------------------------------------------------------------------------
# tools/benchmark.py

def _load_tool():
    spec = importlib.util.spec_from_file_location("benchmark_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def _run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_tool_prints_the_table():
    proc = _run_tool("--config-file", DEMO_CONFIG, "--shape", *SHAPE, "--iters", 2,
                     "--warmup", 1, "--batch", 2, "--threads", 1, *TINY_OVERRIDES)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("threads:  1 asked (jittor 1)") for line in lines), proc.stdout
    row = next(line for line in lines if line.startswith("jittor "))
    median, img_per_s = float(row.split()[1]), float(row.split()[8])
    assert median > 0 and img_per_s > 0, row


@pytest.mark.parametrize("case", ["config", "shape", "shape_text", "iters", "threads",
                                  "checkpoint", "override", "photo"])
def test_tool_rejects_bad_input_in_one_line(tmp_path, capsys, case):
    """Errors found before any model is built: in process, one `error:` line, exit 1."""
    args = {"config": ["--config-file", tmp_path / "missing.yaml"],
            "shape": ["--config-file", DEMO_CONFIG, "--shape", 0, 64],
            "shape_text": ["--config-file", DEMO_CONFIG, "--shape", "big", 64],
            "iters": ["--config-file", DEMO_CONFIG, "--iters", 0],
            "threads": ["--config-file", DEMO_CONFIG, "--threads", -2],
            "checkpoint": ["--config-file", DEMO_CONFIG, "--checkpoint", tmp_path / "no.pkl"],
            "override": ["--config-file", DEMO_CONFIG, "model.backbone.embed_dim=[1,2,3,4]"],
            "photo": ["--config-file", DEMO_CONFIG, "--int8", tmp_path / "no.jpg"],
            }[case]
    tool = _load_tool()
    try:
        code = tool.main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"rc {code}, stderr:\n{captured.err}"


def test_tool_without_reference_says_how_to_install(capsys, monkeypatch):
    tool = _load_tool()
    monkeypatch.setattr(tool, "torch_available", lambda: False)
    code = tool.main(["--config-file", DEMO_CONFIG, "--vs-torch"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "pip install -e .[parity]" in lines[0], (code, lines)


def test_tool_rejects_an_unreadable_checkpoint(tmp_path):
    bad = tmp_path / "garbage.pkl"
    bad.write_bytes(b"\x00 this is not a checkpoint")
    proc = _run_tool("--config-file", DEMO_CONFIG, "--checkpoint", bad, "--shape", *SHAPE,
                     *TINY_OVERRIDES)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), \
        f"rc {proc.returncode}, stderr:\n{proc.stderr}"
    assert "garbage.pkl" in lines[0], lines[0]


def test_tool_loads_a_checkpoint(cfg, tmp_path):
    """Weights saved from a tiny model load strictly and the run completes."""
    from jseg.checkpoint import write_checkpoint
    from jseg.models import build_model

    model = build_model(cfg["model"])
    path = tmp_path / "tiny.pkl"
    write_checkpoint(str(path), {"state_dict": {k: v.numpy() for k, v
                                                in model.state_dict().items()}})
    result = run_benchmark(cfg, checkpoint=str(path), batch=2, **QUICK)
    assert result["checkpoint"] == str(path), result["checkpoint"]
    assert result["results"]["jittor"]["median_ms"] > 0, result["results"]
    assert np.isfinite(result["results"]["jittor"]["memory_mb"]), result["results"]


def test_floor_reports_the_time_against_the_macs_at_the_sgemm_peak(cfg):
    """--floor: the model's MACs per image (the FLOP counter's) at the measured sgemm peak,
    and Jittor's median as a multiple of that; inference only."""
    from jseg.diagnostics.benchmark import sgemm_peak_gflops
    from jseg.diagnostics.flops import count_macs
    from jseg.models import build_model
    result = run_benchmark(cfg, batch=2, floor=True, **QUICK)
    f = result["floor"]
    model = build_model(cfg["model"])
    macs = count_macs(model, (1, 3, *result["shape"]))["total"]
    assert abs(f["gmacs"] - macs / 1e9) < 1e-12, (f, macs)
    assert 1 < f["peak_gflops"] < 1e5, f
    assert abs(f["floor_ms"] - 2 * macs / f["peak_gflops"] / 1e6) < 1e-9 * f["floor_ms"], f
    median = result["results"]["jittor"]["median_ms"]
    assert abs(f["times_floor"] - median / f["floor_ms"]) < 1e-9 * f["times_floor"], f
    assert f["times_floor"] > 1, f  # no forward beats the matmul peak
    assert "floor:" in "\n".join(format_report(result))
    assert sgemm_peak_gflops(size=256, repeats=1) > 0
    with pytest.raises(BenchmarkError, match="--floor"):
        run_benchmark(cfg, mode="train", floor=True, **QUICK)
    proc = _run_tool("--config-file", DEMO_CONFIG, "--mode", "train", "--floor")
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: --floor"), proc.stderr


@pytest.mark.skipif(not benchmark.onnxruntime_available(), reason="needs onnx and onnxruntime")
def test_int8_benchmark_times_three_frameworks_on_photos(cfg, demo_root):
    """--int8: our model, its float graph and its INT8 graph on the demo images (2 calibrate,
    2 are measured): every framework timed per photo and round, agreement with fp32 in
    [0, 1] (1 for the float graph itself), the INT8 file smaller."""
    import glob

    from jseg.diagnostics.int8_bench import format_int8_report, run_int8_benchmark
    photos = sorted(glob.glob(f"{demo_root}/images/*/*.jpg"))[:4]
    result = run_int8_benchmark(cfg, photos, calib=2, shape=SHAPE, iters=2, warmup=1)
    assert set(result["results"]) == {"jittor", "onnxruntime fp32", "onnxruntime int8"}
    for stats in result["results"].values():
        assert stats["iterations"] == 2 * 2 and stats["median_ms"] > 0
    assert result["agreement"]["onnxruntime fp32"] == 1.0
    assert result["agreement"]["jittor"] > 0.99
    assert 0.0 <= result["agreement"]["onnxruntime int8"] <= 1.0
    assert result["sizes"]["onnxruntime int8"] < result["sizes"]["onnxruntime fp32"]
    lines = format_int8_report(result)
    assert any(line.startswith("onnxruntime int8") for line in lines), lines
    with pytest.raises(BenchmarkError, match="leaves none"):
        run_int8_benchmark(cfg, photos, calib=4, shape=SHAPE)
