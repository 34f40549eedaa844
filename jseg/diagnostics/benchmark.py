"""Speed and memory of a SegNeXt: eval-mode inference or one training step, optionally
against mmsegmentation 1.2.2's PyTorch model and onnxruntime in the same run. Used by
tools/benchmark.py.

One iteration is `model.inference(img)` under `jt.no_grad()` (infer, reported per image) or
forward, backward and AdamW step (train), each ended by `jt.sync_all(True)` so that lazily
executed work is inside the timed step; the first iterations compile kernels and are not
timed. Reported: median, quartiles, min / max, images per second and peak memory (CPU: the
process's peak RSS; GPU: the most memory Jittor's allocator held). `set_threads` gives both
frameworks the same thread count. PyTorch runs in a child process (`TorchProcess`; its pipe
protocol: jseg.diagnostics.torch_worker), onnxruntime in this one (`OnnxRuntimeBench`), in
rounds whose order alternates. The measuring protocol in full, and why: docs/performance.md,
"How tools/benchmark.py measures".
"""
import ctypes
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from jseg.platform import openblas

__all__ = ["BenchmarkError", "MODES", "VS_TORCH_HINT", "VS_ONNXRUNTIME_HINT",
           "onnxruntime_available", "default_threads", "set_threads",
           "openmp_threads", "torch_available", "check_settings", "make_inputs", "summarize",
           "JittorBench", "TorchProcess", "OnnxRuntimeBench", "run_benchmark",
           "format_report"]

logger = logging.getLogger("jseg")

MODES = ("infer", "train")
VS_TORCH_HINT = ("--vs-torch needs the PyTorch reference (torch 2.13.0, mmcv-lite 2.1.0, "
                 "mmengine 0.10.7, mmsegmentation 1.2.2); install it with: "
                 "pip install -e .[parity]")
_REFERENCE_PACKAGES = ("torch", "mmcv", "mmengine", "mmseg")
VS_ONNXRUNTIME_HINT = ("--vs-onnxruntime needs onnx and onnxruntime; install them with: "
                       "pip install -e .[export]")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class BenchmarkError(ValueError):
    """A benchmark setting is wrong or the reference cannot run; the message says why."""


# ---------------------------------------------------------------------------
# Threads

def default_threads():
    """OMP_NUM_THREADS if it is a positive integer, else the CPUs this process may use."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _libgomp():
    try:
        return ctypes.CDLL("libgomp.so.1")
    except OSError:
        return None


def set_threads(n):
    """Use `n` threads in Jittor's OpenMP kernels and oneDNN, OpenBLAS (jseg's matmuls)
    and torch started after this call."""
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise BenchmarkError(f"the thread count must be a positive integer, got {n!r}")
    os.environ["OMP_NUM_THREADS"] = str(n)
    gomp = _libgomp()
    if gomp is not None:
        gomp.omp_set_num_threads(n)
    openblas.set_threads(n)  # the 1x1-conv matmuls (jseg.ops.sgemm) run in its own pool


def openmp_threads():
    """Threads GNU OpenMP (Jittor's oneDNN) will use, or None without libgomp."""
    gomp = _libgomp()
    return int(gomp.omp_get_max_threads()) if gomp is not None else None


def torch_available():
    """True when torch, mmcv, mmengine and mmseg can be found (without importing them)."""
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in _REFERENCE_PACKAGES)


# ---------------------------------------------------------------------------
# Settings, inputs, statistics

def check_settings(mode, shape, batch, iters, warmup, floor=False):
    """Raise BenchmarkError for a setting that cannot be benchmarked."""
    if mode not in MODES:
        raise BenchmarkError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if len(shape) != 2 or any(not isinstance(v, int) or v <= 0 for v in shape):
        raise BenchmarkError(f"--shape must be two positive integers H W, got "
                             f"{' '.join(map(str, shape))}")
    if batch <= 0:
        raise BenchmarkError(f"--batch must be a positive integer, got {batch}")
    if iters <= 0:
        raise BenchmarkError(f"--iters must be a positive integer, got {iters}")
    if warmup < 0:
        raise BenchmarkError(f"--warmup must be 0 or more, got {warmup}")
    if floor and mode != "infer":
        raise BenchmarkError("--floor compares inference with the MACs of one forward; use "
                             "--mode infer")


def make_inputs(batch, channels, height, width, num_classes, seed=0):
    """Seeded N(0, 1) images (B, C, H, W) float32 and uniform labels (B, H, W) int32."""
    rng = np.random.default_rng(seed)
    img = rng.standard_normal((batch, channels, height, width), dtype=np.float32)
    label = rng.integers(0, num_classes, (batch, height, width), dtype=np.int32)
    return img, label


def summarize(seconds, per=1):
    """Statistics of iteration times `seconds`, each covering `per` images.

    Returns milliseconds per image (per=batch) or per step (per=1): median, q1, q3, min,
    max; and images per second for an iteration of `per` images at the median time.
    """
    t = np.asarray(seconds, dtype=np.float64)
    if t.size == 0:
        raise BenchmarkError("no timed iterations")
    q1, median, q3 = np.percentile(t, [25, 50, 75])
    return {"median_ms": 1e3 * median / per, "q1_ms": 1e3 * q1 / per, "q3_ms": 1e3 * q3 / per,
            "min_ms": 1e3 * t.min() / per, "max_ms": 1e3 * t.max() / per,
            "iterations": int(t.size)}


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------
# Jittor side

class JittorBench:
    """Our model for `cfg`, ready to time one iteration with `step()`.

    cfg: a loaded config (its `model`, `optimizer` and `device` are used).
    mode: "infer" or "train"; img (B, C, H, W) float32 and label (B, H, W) int32 arrays.
    state_dict: weights (name -> array) loaded strictly (jseg.checkpoint), `source`
    naming them in errors; None for the random initial weights of `seed`.
    """

    def __init__(self, cfg, mode, img, label, state_dict=None, source="the checkpoint", seed=0):
        import jittor as jt

        from jseg.checkpoint import load_state_dict
        from jseg.models import build_model
        from jseg.platform.env import init_device

        self.jt = jt
        self.mode = mode
        self.device = init_device(cfg["device"])
        jt.set_global_seed(seed)
        self.model = build_model(cfg["model"])
        if state_dict is not None:
            load_state_dict(self.model, state_dict, strict=True, source=source)
        self.img = jt.array(img)
        self.label = jt.array(label)
        self.optimizer = None
        if mode == "train":
            from jseg.engine.optim import build_optimizer
            self.model.train()
            self.optimizer = build_optimizer(self.model, cfg["optimizer"])
        else:
            self.model.eval()
        jt.sync_all(True)
        self.peak_gpu = 0
        self._last = None

    def state_dict(self):
        """name -> numpy array of every parameter and buffer."""
        return {k: v.numpy() for k, v in self.model.state_dict().items()}

    def step(self):
        """Run one iteration; returns its wall time in seconds."""
        jt = self.jt
        if self.mode == "infer":
            with jt.no_grad():
                t0 = time.perf_counter()
                out = self.model.inference(self.img)
                jt.sync_all(True)
                elapsed = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            losses = self.model(self.img, self.label)
            out = sum(v for k, v in losses.items() if k.startswith("loss"))
            self.optimizer.backward(out)
            jt.sync_all()
            self.optimizer.step()
            jt.sync_all(True)
            elapsed = time.perf_counter() - t0
        self._last = out
        if self.device == "cuda":
            self.peak_gpu = max(self.peak_gpu, jt.get_mem_info().total_cuda_used)
        return elapsed

    def check_finite(self):
        """Whether the last iteration's output (logits or loss) is finite everywhere."""
        return bool(np.isfinite(self._last.numpy()).all())

    def memory(self):
        """(MiB, what it measures)."""
        if self.device == "cuda":
            return self.peak_gpu / 2 ** 20, "GPU, Jittor allocator"
        return _peak_rss_mb(), "CPU, peak RSS"


# ---------------------------------------------------------------------------
# torch side: the child process and its parent-side handle

class TorchProcess:
    """mmseg's model in a child process; `step()` asks it for one timed iteration.

    device: "cpu" or "cuda" (the child's torch device). env: the child's environment
    (default this process's), e.g. another PYTHONPATH where mmseg's packages live."""

    def __init__(self, threads, device="cpu", env=None):
        env = dict(os.environ if env is None else env, OMP_NUM_THREADS=str(threads))
        self.device = device
        self._tmp = tempfile.TemporaryDirectory(prefix="jseg-benchmark-")
        self._stderr = open(os.path.join(self._tmp.name, "worker.log"), "w+", encoding="utf-8")
        code = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
                "from jseg.diagnostics.torch_worker import main; main()")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                     text=True, bufsize=1)
        self.threads = threads
        try:
            self.info = self._receive()["ready"]
        except BaseException:
            self.close()
            raise

    def _stderr_tail(self, lines=20):
        self._stderr.flush()
        self._stderr.seek(0)
        return "".join(self._stderr.readlines()[-lines:]).rstrip()

    def _receive(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the torch worker exited with code {self.proc.returncode}; "
                               f"its stderr ends with:\n{self._stderr_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            if reply.get("known"):
                raise BenchmarkError(f"PyTorch side: {reply['error']}")
            self.proc.wait(timeout=30)
            raise RuntimeError(f"the torch worker failed: {reply['error']}; its stderr ends "
                               f"with:\n{self._stderr_tail()}")
        return reply

    def _ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._receive()

    def setup(self, cfg, mode, state_dict, img, label):
        """Build mmseg's model of `cfg` with our `state_dict` and the same inputs."""
        weights = os.path.join(self._tmp.name, "weights.npz")
        inputs = os.path.join(self._tmp.name, "inputs.npz")
        np.savez(weights, **state_dict)
        np.savez(inputs, img=img, label=label)
        opt = cfg["optimizer"]
        reply = self._ask(cmd="setup", model=_plain(cfg["model"]), mode=mode, weights=weights,
                          inputs=inputs, threads=self.threads, device=self.device,
                          optimizer=dict(lr=opt["lr"], betas=list(opt["betas"]), eps=opt["eps"],
                                         weight_decay=opt["weight_decay"]))
        return reply

    def step(self):
        return self._ask(cmd="step")["seconds"]

    def check_finite(self):
        return self._ask(cmd="finite")["finite"]

    def memory(self):
        reply = self._ask(cmd="memory")
        return reply["mb"], reply["kind"]

    def close(self):
        """Stop the child (politely, then by its pid) and remove the temporary files."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # SIGTERM first: Jittor's SIGCHLD handler ends this process when a child
                # ends by any other signal (jseg.platform.env.replace_jittor_signal_handlers)
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        self._stderr.close()
        self._tmp.cleanup()


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# onnxruntime side

class OnnxRuntimeBench:
    """`model` exported to ONNX in `folder` and run by onnxruntime on `img` (see the module
    docstring); `step()` times one `session.run`."""

    def __init__(self, model, img, threads, folder):
        from jseg.export.onnx import export_onnx, open_session

        path = os.path.join(folder, "model.onnx")
        export_onnx(model, path, tuple(img.shape[2:]), bases="seed", dynamic=img.shape[0] > 1)
        self.session = open_session(path, threads, spinning=False)  # see the module doc
        self.threads = int(self.session.get_session_options().intra_op_num_threads)
        self.img = img
        self._last = None

    def step(self):
        t0 = time.perf_counter()
        self._last = self.session.run(["logits"], {"image": self.img})[0]
        return time.perf_counter() - t0

    def check_finite(self):
        return bool(np.isfinite(self._last).all())

    def memory(self):
        return float("nan"), "in Jittor's process"


def onnxruntime_available():
    import importlib.util
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


# ---------------------------------------------------------------------------
# The hardware floor

def sgemm_peak_gflops(size=2048, repeats=5):
    """Best GFLOP/s of a (size x size) @ (size x size) float32 matmul over `repeats` runs,
    on the library jseg's 1x1 convs use (jseg.ops.matmul.mm), with the threads set now."""
    import jittor as jt
    from jseg.ops.matmul import mm

    rng = np.random.default_rng(0)
    a, b = (jt.array(rng.standard_normal((size, size)).astype("float32")) for _ in range(2))
    jt.sync_all(True)
    best = float("inf")
    for i in range(repeats + 1):  # the first run compiles and warms up
        start = time.perf_counter()
        mm(a, b).sync()
        if i:
            best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def hardware_floor(model, channels, shape, median_ms):
    """The model's MACs per image (jseg.diagnostics.flops) all at the machine's sgemm peak:
    a floor for any implementation of the same arithmetic. Returns {"gmacs", "peak_gflops", "floor_ms",
    "times_floor"} (per image; times_floor = median_ms / floor_ms)."""
    from jseg.diagnostics.flops import count_macs

    peak = sgemm_peak_gflops()
    macs = count_macs(model, (1, channels, *shape))["total"]
    floor_ms = 2.0 * macs / (peak * 1e9) * 1e3
    return {"gmacs": macs / 1e9, "peak_gflops": peak, "floor_ms": floor_ms,
            "times_floor": median_ms / floor_ms}


# ---------------------------------------------------------------------------
# The whole run

def run_benchmark(cfg, mode="infer", shape=(512, 512), batch=1, iters=10, warmup=2,
                  checkpoint=None, vs_torch=False, threads=None, seed=0, config_name=None,
                  vs_onnxruntime=False, floor=False):
    """Time `iters` iterations after `warmup` of the model of `cfg`; see the module docstring
    and docs/performance.md ("How tools/benchmark.py measures").

    threads: None for `default_threads()`. Returns a dict: the settings, "env" (versions and
    device), "load" (1-min load average before and after), "threads" ({framework: count read
    back from its runtime}), "results" ({framework: summarize(...) plus "img_per_s",
    "memory_mb", "memory_kind", "finite", "seconds"}) and, with vs_torch, "ratio" (Jittor's
    median time / torch's); with vs_onnxruntime, "ratio_onnxruntime" likewise; with floor
    (inference only), "floor" (`hardware_floor`: Jittor's median against the MACs at the
    machine's sgemm peak, measured after the timed rounds). Raises
    BenchmarkError for bad settings, for vs_torch without the reference (VS_TORCH_HINT) or on
    GPU, for vs_onnxruntime without onnx / onnxruntime, in train or slide mode, or on GPU.
    """
    from jseg.checkpoint import read_checkpoint
    from jseg.platform.env import environment_report, init_device

    shape = tuple(shape)
    check_settings(mode, shape, batch, iters, warmup, floor)
    if vs_torch and not torch_available():
        raise BenchmarkError(VS_TORCH_HINT)
    if vs_onnxruntime:
        if not onnxruntime_available():
            raise BenchmarkError(VS_ONNXRUNTIME_HINT)
        if mode != "infer" or cfg["model"]["test_cfg"]["mode"] != "whole":
            raise BenchmarkError("--vs-onnxruntime times whole-image inference (the exported "
                                 "graph); use --mode infer and model.test_cfg.mode=whole")
    # read before Jittor starts, so that a bad file fails at once (CheckpointError)
    state_dict = read_checkpoint(checkpoint)[0] if checkpoint is not None else None
    threads = default_threads() if threads is None else threads
    set_threads(threads)  # before Jittor starts, if it has not yet
    env = environment_report()  # imports Jittor; its "device" is the auto choice
    device = init_device(cfg["device"])
    if device == "cpu" and env["device"].startswith("GPU"):
        env["device"] = f"CPU (config device {cfg['device']!r})"
    env["numpy"] = np.__version__
    blas = openblas.library()
    env["sgemm"] = blas.name if blas is not None else "Jittor's matmul"
    if vs_onnxruntime and device == "cuda":
        raise BenchmarkError("--vs-onnxruntime compares on CPU only; add device=cpu")
    if vs_torch and device == "cuda":
        raise BenchmarkError("--vs-torch compares on CPU only (the parity extra installs torch's "
                             "CPU build); add device=cpu to compare there")
    load_before = os.getloadavg()
    worker = TorchProcess(threads) if vs_torch else None  # imports torch while we build
    scratch = tempfile.TemporaryDirectory(prefix="jseg-onnx-") if vs_onnxruntime else None
    try:
        in_channels = cfg["model"]["backbone"]["in_channels"]
        num_classes = cfg["model"]["decode_head"]["num_classes"]
        img, label = make_inputs(batch, in_channels, *shape, num_classes, seed)
        logger.info("building the models" if vs_torch else "building the model")
        ours = JittorBench(cfg, mode, img, label, state_dict, source=checkpoint, seed=seed)
        benches = {"jittor": ours}
        threads_seen = {"jittor": openmp_threads()}
        if worker is not None:
            reply = worker.setup(cfg, mode, ours.state_dict(), img, label)
            benches["torch"] = worker
            threads_seen["torch"] = reply["torch_threads"]
            env["torch"] = worker.info["torch"]
            env["mmsegmentation"] = worker.info["mmseg"]
        if vs_onnxruntime:
            import onnxruntime
            benches["onnxruntime"] = OnnxRuntimeBench(ours.model, img, threads, scratch.name)
            threads_seen["onnxruntime"] = benches["onnxruntime"].threads
            env["onnxruntime"] = onnxruntime.__version__
        times = {name: [] for name in benches}
        order = list(benches)
        logger.info("%d warm-up round(s), then %d timed", warmup, iters)
        for r in range(warmup + iters):
            for name in (order if r % 2 == 0 else order[::-1]):  # J T, T J, J T, ...
                seconds = benches[name].step()
                if r >= warmup:
                    times[name].append(seconds)
        per = batch if mode == "infer" else 1
        results = {}
        for name, bench in benches.items():
            stats = summarize(times[name], per)
            stats["img_per_s"] = batch / (stats["median_ms"] * per / 1e3)
            stats["memory_mb"], stats["memory_kind"] = bench.memory()
            stats["finite"] = bench.check_finite()
            stats["seconds"] = times[name]
            results[name] = stats
        floor_result = None
        if floor:
            logger.info("measuring the sgemm peak")
            floor_result = hardware_floor(ours.model, in_channels, shape,
                                          results["jittor"]["median_ms"])
    finally:
        if worker is not None:
            worker.close()
        if scratch is not None:
            scratch.cleanup()
    test_cfg = cfg["model"]["test_cfg"]
    result = {"config": config_name, "mode": mode, "test_mode": test_cfg["mode"],
              "crop_size": test_cfg["crop_size"], "stride": test_cfg["stride"],
              "shape": shape, "batch": batch, "channels": in_channels, "iters": iters,
              "warmup": warmup, "checkpoint": checkpoint, "seed": seed, "device": device,
              "env": env, "threads_asked": threads, "threads": threads_seen,
              "load": (load_before[0], os.getloadavg()[0]), "cpus": os.cpu_count() or 1,
              "torch_in_process": "torch" in sys.modules, "results": results}
    if "torch" in results:
        result["ratio"] = results["jittor"]["median_ms"] / results["torch"]["median_ms"]
    if "onnxruntime" in results:
        result["ratio_onnxruntime"] = (results["jittor"]["median_ms"]
                                       / results["onnxruntime"]["median_ms"])
    if floor_result is not None:
        result["floor"] = floor_result
    return result


def format_report(result):
    """The result of run_benchmark as lines: settings, environment, then a small table."""
    r = result
    env = r["env"]
    what = "inference" if r["mode"] == "infer" else "training step (AdamW)"
    test = r["test_mode"]
    if r["mode"] == "infer" and test == "slide":
        test += f", crop {tuple(r['crop_size'])}, stride {tuple(r['stride'])}"
    lines = []
    if r["config"]:
        lines.append(f"config:   {r['config']}")
    detail = f" ({test})" if r["mode"] == "infer" else ""
    lines.append(f"run:      {what}{detail}, input {r['batch']} x {r['channels']} x "
                 f"{r['shape'][0]} x {r['shape'][1]}, {r['iters']} timed iteration(s) after "
                 f"{r['warmup']} warm-up")
    weights = r["checkpoint"] or f"random (seed {r['seed']})"
    if "torch" in r["results"]:
        weights += ", copied into mmseg's model"
    lines.append(f"weights:  {weights}")
    lines.append(f"device:   {env['device']}")
    threads = ", ".join(f"{name} {n if n is not None else '?'}"
                        for name, n in r["threads"].items())
    lines.append(f"threads:  {r['threads_asked']} asked ({threads}); jseg's CPU kernels and "
                 "oneDNN use them all, Jittor's generated element-wise loops one")
    lines.append(f"load:     1-min load average {r['load'][0]:.2f} before, {r['load'][1]:.2f} "
                 f"after, on {r['cpus']} CPU(s)")
    versions = [f"python {env['python']}", f"jittor {env['jittor']}",
                f"oneDNN {env['oneDNN']}", f"numpy {env['numpy']}",
                f"1x1 convs on {env.get('sgemm', '?')}"]
    if "torch" in env:
        versions += [f"torch {env['torch']}", f"mmsegmentation {env['mmsegmentation']}"]
    if "onnxruntime" in env:
        versions.append(f"onnxruntime {env['onnxruntime']}")
    lines.append("versions: " + ", ".join(versions))
    unit = "ms/img" if r["mode"] == "infer" else "ms/step"
    header = (f"{'framework':<10}{'median ' + unit:>15}{'IQR':>19}{'min - max':>19}"
              f"{'img/s':>9}{'peak memory':>26}")
    lines += ["", header]
    for name, s in r["results"].items():
        iqr = f"{s['q1_ms']:.1f} - {s['q3_ms']:.1f}"
        span = f"{s['min_ms']:.1f} - {s['max_ms']:.1f}"
        memory = (f"{s['memory_mb']:.0f} MiB ({s['memory_kind']})"
                  if np.isfinite(s["memory_mb"]) else s["memory_kind"])
        lines.append(f"{name:<10}{s['median_ms']:>15.1f}{iqr:>19}{span:>19}"
                     f"{s['img_per_s']:>9.2f}{memory:>26}")
    if "ratio" in r:
        lines.append(f"time ratio jittor / torch (medians): {r['ratio']:.2f}")
    if "ratio_onnxruntime" in r:
        lines.append(f"time ratio jittor / onnxruntime (medians): {r['ratio_onnxruntime']:.2f}")
    if "floor" in r:
        f = r["floor"]
        lines.append(f"floor:    {f['gmacs']:.2f} GMAC per image at the sgemm peak of "
                     f"{f['peak_gflops']:.0f} GFLOP/s (2048^3, {env.get('sgemm', '?')}, "
                     f"{r['threads_asked']} threads) = {f['floor_ms']:.1f} ms; jittor's median "
                     f"is {f['times_floor']:.2f}x that")
    for name, s in r["results"].items():
        lines.append(f"{name} iterations (s, in order): "
                     + " ".join(f"{t:.3f}" for t in s["seconds"]))
    if r["torch_in_process"] and r["device"] == "cpu":
        lines.append("note: torch is loaded in Jittor's process (Jittor imports it at start "
                     "unless FIX_TORCH_ERROR=0); its memory counts in Jittor's peak RSS")
    bad = [name for name, s in r["results"].items() if not s["finite"]]
    if bad:
        lines.append(f"warning: non-finite outputs from {', '.join(bad)} (random weights?); "
                     "such timings may not be representative")
    return lines
