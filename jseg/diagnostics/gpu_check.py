"""One prepared check of jseg on a GPU, made for a short slot: rows in priority order, each
one printed and appended to a JSON-lines file the moment it is measured.

Each task gives one or more rows (section, check, result, verdict), verdict "ok", "FAIL",
"info" or "skip": first the environment, which on a GPU is also the gate (`cuda_gate`: a
GPU whose Jittor is not on CUDA, or runs without cuBLAS / cuDNN, stops the check with
`GateError` instead of timing the CPU in the GPU's place), then `plan_tasks` (logits
against the CPU, speed, training, AMP, resume, the larger variants). mmseg runs in a child
process (`jseg.diagnostics.benchmark.TorchProcess`) whose Python path is `mmseg_path` when
given, so it keeps the host's numpy 2 and torch. `Runner` keeps the slot's deadline and
skips tasks an earlier run measured. `quick=True` is the CPU smoke run the tests use (64x64,
SegNeXt-T only, 4 steps; the "GPU" side is the CPU with jseg's kernels off,
`jseg.ops.disabled()`, and the AMP rows say "CUDA only"). User's guide: docs/gpu.md.
"""
import contextlib
import faulthandler
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["run_gpu_check", "plan_tasks", "Runner", "Task", "Row", "GateError", "cuda_gate",
           "read_done", "format_table", "EXIT_FAILED", "EXIT_NO_GPU", "EXIT_GATE",
           "EXIT_DEADLINE"]

ROOT = Path(__file__).resolve().parents[2]
VARIANT_CONFIG = "configs/segnext/segnext_mscan-{}_ade20k-512x512.yaml"
DEMO_CONFIG = "configs/demo/segnext_mscan-t_demo.yaml"
LOGITS_REL, ARGMAX_AGREE = 1e-4, 0.999  # the parity tests' tolerances
# exit codes of tools/gpu_check.py besides 0 (every check measured and passed)
EXIT_FAILED, EXIT_NO_GPU, EXIT_GATE, EXIT_DEADLINE = 1, 2, 3, 4
_DUMP_BEFORE = 5.0  # seconds before the deadline at which faulthandler dumps the stacks


class Row(tuple):
    """(section, check, result, verdict) with verdict "ok", "FAIL", "info" or "skip"."""

    def __new__(cls, section, check, result, verdict="info"):
        return super().__new__(cls, (section, check, result, verdict))


class Task:
    """One unit of the plan: `run()` returns its rows; `id` names it in the JSON lines."""

    def __init__(self, id, section, check, run):
        self.id, self.section, self.check, self.run = id, section, check, run


class GateError(RuntimeError):
    """The GPU cannot be used as this check needs; the message names the cause."""


def cuda_gate(report, has_cuda, toolkit):
    """Raise GateError unless Jittor runs on CUDA with cuBLAS and cuDNN. `report` is
    `environment_report()`, `has_cuda` Jittor's `compiler.has_cuda`, `toolkit` the
    `jseg.platform.toolkit.Toolkit` chosen."""
    if not toolkit.uses_cuda:
        why = toolkit.problem or toolkit.reason
        raise GateError(f"a GPU is here but jseg chose no CUDA toolkit for Jittor: {why}")
    if not has_cuda:
        raise GateError(f"a GPU is here but Jittor did not start CUDA with {toolkit.nvcc} "
                        f"({toolkit.reason}); Jittor's log above says why (check "
                        "`python tools/check_env.py`)")
    for name in ("cuBLAS", "cuDNN"):
        state = report.get(name, "not reported")
        if not state.startswith("yes"):
            raise GateError(f"Jittor runs on CUDA without {name} ({state}): its convolutions "
                            f"or matmuls would not be the library's; fix: install the {name} "
                            "wheel (nvidia-cublas / nvidia-cudnn-cu13) or the library into "
                            "the toolkit")


# ---------------------------------------------------------------------------
# The measurements

@contextlib.contextmanager
def _other_side(jt, cuda):
    """Run on the GPU, or (no GPU) on the CPU with jseg's kernels off."""
    from jseg import ops

    if not cuda:
        with ops.disabled():
            yield
        return
    previous, jt.flags.use_cuda = jt.flags.use_cuda, 1
    try:
        yield
    finally:
        jt.flags.use_cuda = previous


def _logits_rows(jt, cuda, variant, size):
    from jseg.config import load_config
    from jseg.diagnostics.parity import pin_jseg_bases
    from jseg.models import build_model

    cfg = load_config(ROOT / VARIANT_CONFIG.format(variant))
    jt.flags.use_cuda = 0
    jt.set_global_seed(0)
    model = build_model(cfg.model)
    model.eval()
    img = np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32)
    outputs = []
    try:
        for side in (contextlib.nullcontext(), _other_side(jt, cuda)):
            with side, jt.no_grad():
                pin_jseg_bases(model, seed=2)
                outputs.append(model.inference(jt.array(img)).numpy())
    finally:
        jt.flags.use_cuda = int(cuda)
    cpu, dev = outputs
    rel = float(np.abs(dev - cpu).max() / max(np.abs(cpu).max(), 1e-30))
    agree = float((dev.argmax(1) == cpu.argmax(1)).mean())
    ok = rel <= LOGITS_REL and agree >= ARGMAX_AGREE and np.isfinite(dev).all()
    other = "GPU" if cuda else "CPU, kernels off"
    return [Row("logits", f"SegNeXt-{variant.upper()} {size[0]}x{size[1]}, {other} vs CPU",
                f"max rel {rel:.1e} (<= {LOGITS_REL:g}), argmax agree {agree:.4%}",
                "ok" if ok else "FAIL")]


def _train(work_dir, data_root, overrides, steps, resume=None):
    """Train the demo config for `steps` iterations; returns the train records."""
    from jseg.config import load_config
    from jseg.engine.trainer import train

    cfg = load_config(ROOT / DEMO_CONFIG, [
        f"data.data_root={data_root}", f"work_dir={work_dir}", f"train.max_iters={steps}",
        "train.log_interval=1", "train.eval_interval=0", "train.checkpoint_interval=2",
        "data.num_workers=0", "scheduler.warmup_iters=2", *overrides])
    train(cfg, resume=resume, seed=0, progress=False)
    with open(Path(work_dir) / "metrics.jsonl") as f:
        return [r for r in map(json.loads, f) if r["mode"] == "train"]


def _training_rows(cuda, amp, data_root, steps, small, tmp):
    name = "AMP (fp16)" if amp else "fp32"
    if amp and not cuda:
        return [Row("training", f"{steps} steps {name}", "CUDA only; not run here")]
    records = _train(Path(tmp) / f"train_{name[:4]}", data_root,
                     [f"train.amp={str(amp).lower()}", *small], steps)
    losses = [r["loss"] for r in records]
    k = max(1, min(5, len(losses) // 2))
    falling = np.mean(losses[-k:]) < np.mean(losses[:k])
    finite = bool(np.isfinite(losses).all())
    result = (f"loss {losses[0]:.3f} -> {losses[-1]:.3f} (first {k} avg "
              f"{np.mean(losses[:k]):.3f}, last {k} avg {np.mean(losses[-k:]):.3f}), "
              f"{np.mean([r['time'] for r in records[1:]]):.3f} s/step")
    if amp:
        result += f", loss scale {records[0].get('loss_scale')} -> {records[-1].get('loss_scale')}"
    return [Row("training", f"{steps} steps {name}, demo data", result,
                "ok" if finite and falling else "FAIL")]


def _resume_rows(data_root, small, tmp):
    from jseg.checkpoint import read_checkpoint

    straight = _train(Path(tmp) / "straight", data_root, small, 4)
    _train(Path(tmp) / "resumed", data_root, small, 2)
    resumed = _train(Path(tmp) / "resumed", data_root, small, 4, resume="auto")
    a = {r["iter"]: r["loss"] for r in straight}
    b = {r["iter"]: r["loss"] for r in resumed}
    loss_diff = max(abs(a[i] - b[i]) for i in a)
    wa = read_checkpoint(str(Path(tmp) / "straight" / "checkpoints" / "iter_00000004.pkl"))[0]
    wb = read_checkpoint(str(Path(tmp) / "resumed" / "checkpoints" / "iter_00000004.pkl"))[0]
    weight_diff = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    ok = sorted(a) == sorted(b) == [1, 2, 3, 4] and loss_diff <= 1e-6 and weight_diff <= 1e-6
    return [Row("resume", "4 iterations vs 2 + resume 2",
                f"max loss diff {loss_diff:.1e}, max weight diff {weight_diff:.1e}",
                "ok" if ok else "FAIL")]


def _speed_value(mode, batch, median):
    return (f"{median * 1e3 / batch:.1f} ms/img ({batch / median:.1f} img/s)"
            if mode == "infer" else f"{median:.3f} s/step (batch {batch})")


class _Speed:
    """The timed rows of one variant: jseg's (`jseg`) and mmseg's (`mmseg`), which reuses
    the weights of jseg's model of the same variant and mode."""

    def __init__(self, jt, cuda, size, iters, mmseg):
        self.jt, self.cuda, self.size, self.iters, self.mmseg = jt, cuda, size, iters, mmseg
        self.weights = {}

    def _config(self, variant):
        from jseg.config import load_config
        return load_config(ROOT / VARIANT_CONFIG.format(variant),
                           [f"device={'cuda' if self.cuda else 'cpu'}"])

    def jseg(self, variant, mode, amp):
        from jseg.diagnostics.benchmark import JittorBench, make_inputs
        from jseg.engine.amp import amp_scope

        batch = 1 if mode == "infer" else 2
        img, label = make_inputs(batch, 3, *self.size, 150, seed=0)
        with amp_scope(amp):
            bench = JittorBench(self._config(variant), mode, img, label, seed=0)
            if not amp:
                self.weights[variant, mode] = bench.state_dict()
            times = [bench.step() for _ in range(2 + self.iters)][2:]
            finite = bench.check_finite()
        mb, kind = bench.memory()
        del bench
        self.jt.gc()
        # a timed AMP step has no loss scaling (the training rows check that), so a
        # non-finite AMP output is reported, not failed; in fp32 it is a failure
        verdict = "info" if finite or amp else "FAIL"
        return [Row("speed", f"jseg {variant.upper()} {mode} {'AMP' if amp else 'fp32'}",
                    f"{_speed_value(mode, batch, float(np.median(times)))}, {mb:.0f} MiB {kind}"
                    + ("" if finite else ", output not finite"), verdict)]

    def mmseg_rows(self, variant, mode):
        from jseg.diagnostics.benchmark import make_inputs

        worker = self.mmseg.get()
        check = f"mmseg {variant.upper()} {mode} fp32"
        if worker is None:
            return [Row("speed", check, f"not run: {self.mmseg.reason}", "skip")]
        batch = 1 if mode == "infer" else 2
        img, label = make_inputs(batch, 3, *self.size, 150, seed=0)
        weights = self.weights.get((variant, mode))
        if weights is None:  # jseg's row was skipped or done earlier: same seed, same weights
            from jseg.diagnostics.benchmark import JittorBench
            weights = JittorBench(self._config(variant), "infer", img, label, seed=0).state_dict()
        worker.setup(self._config(variant), mode, weights, img, label)
        times = [worker.step() for _ in range(2 + self.iters)][2:]
        mb, kind = worker.memory()
        versions = ", ".join(f"{k} {v}" for k, v in worker.info.items())
        return [Row("speed", check, f"{_speed_value(mode, batch, float(np.median(times)))}, "
                    f"{mb:.0f} MiB {kind} ({versions})")]


class _MmsegWorker:
    """mmseg's child process, started on first use and kept for every mmseg row; `reason`
    says why there is none (not installed, switched off)."""

    def __init__(self, enabled, cuda, mmseg_path):
        self.cuda, self.mmseg_path = cuda, mmseg_path
        self.worker, self.reason = None, None if enabled else "switched off (--no-mmseg)"

    def get(self):
        if self.worker is None and self.reason is None:
            from jseg.diagnostics.benchmark import BenchmarkError, TorchProcess
            env = None
            if self.mmseg_path:  # the child's own path: mmseg's packages, then this repository
                env = dict(os.environ, PYTHONPATH=os.pathsep.join([self.mmseg_path, str(ROOT)]))
            try:
                self.worker = TorchProcess(os.cpu_count() or 1, device="cuda" if self.cuda
                                           else "cpu", env=env)
            except BenchmarkError as e:  # not installed there: every mmseg row says so
                self.reason = str(e).splitlines()[0][:300]
            except Exception as e:  # this row fails; the later ones say why they did not run
                self.reason = f"its child process failed ({type(e).__name__})"
                raise
        return self.worker

    def close(self):
        if self.worker is not None:
            self.worker.close()
            self.worker = None


def plan_tasks(jt, cuda, variants, size, steps, iters, data_root, small, tmp, mmseg):
    """The measuring tasks in priority order, after the environment (and its gate):

    1. logits: SegNeXt-T at `size` (512x512), seeded weights, pinned NMF bases, the GPU's
       logits against jseg's CPU ones at the parity tests' tolerances
       (max|gpu - cpu| / max|cpu| <= 1e-4, argmax agreement >= 99.9%).
    2. T inference ms/img (batch 1, fp32) and mmseg's on the same device.
    3. `steps` (20) fp32 training iterations of the demo config on the demo data (every
       loss finite, the last five lower than the first five on average); T training s/step
       (batch 2, AdamW, fp32) and mmseg's.
    4. the same training with `train.amp=true` (and its loss scale); T inference and
       training in AMP.
    5. resume: 4 iterations straight vs 2, then `--resume auto`, 2 more: same losses and
       weights.
    6. S, B, L: S logits, then each variant's inference and training rows as for T.
    """
    speed = _Speed(jt, cuda, size, iters, mmseg)
    tasks = []

    def jseg_row(v, mode, amp):
        return Task(f"speed:jseg:{v}:{mode}:{'amp' if amp else 'fp32'}", "speed",
                    f"jseg {v.upper()} {mode} {'AMP' if amp else 'fp32'}",
                    lambda: speed.jseg(v, mode, amp))

    def mmseg_row(v, mode):
        return Task(f"speed:mmseg:{v}:{mode}", "speed", f"mmseg {v.upper()} {mode} fp32",
                    lambda: speed.mmseg_rows(v, mode))

    def timed(v, mode, amp=True):
        return ([jseg_row(v, mode, False)] + ([jseg_row(v, mode, True)] if amp and cuda else [])
                + [mmseg_row(v, mode)])

    first, rest = variants[0], variants[1:]
    tasks.append(Task(f"logits:{first}", "logits", f"SegNeXt-{first.upper()} logits",
                      lambda: _logits_rows(jt, cuda, first, size)))
    tasks += timed(first, "infer", amp=False)
    tasks.append(Task("training:fp32", "training", f"{steps} steps fp32",
                      lambda: _training_rows(cuda, False, data_root, steps, small, tmp)))
    tasks += timed(first, "train", amp=False)
    tasks.append(Task("training:amp", "training", f"{steps} steps AMP",
                      lambda: _training_rows(cuda, True, data_root, steps, small, tmp)))
    if cuda:
        tasks += [jseg_row(first, "infer", True), jseg_row(first, "train", True)]
    tasks.append(Task("resume", "resume", "4 iterations vs 2 + resume 2",
                      lambda: _resume_rows(data_root, small, tmp)))
    for v in rest:
        if v == "s":
            tasks.append(Task("logits:s", "logits", "SegNeXt-S logits",
                              lambda: _logits_rows(jt, cuda, "s", size)))
        tasks += timed(v, "infer") + timed(v, "train")
    return tasks


# ---------------------------------------------------------------------------
# The runner: streaming, deadline, rows done earlier

_ALWAYS = ("environment", "gate")  # run by every run, whatever an earlier one measured


def read_done(path):
    """(ids of the tasks measured in the JSON-lines file `path`, their rows); a missing file
    gives nothing. Rows skipped or interrupted do not count as done."""
    done, rows = set(), []
    if not path or not os.path.exists(path):
        return done, rows
    with open(path, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for r in records:
        if r.get("verdict") in ("ok", "FAIL", "info") and r.get("id") not in _ALWAYS:
            done.add(r["id"])
    for r in records:
        if r.get("id") in done:
            rows.append(Row(r["section"], r["check"], r["result"], r["verdict"]))
    return done, rows


class Runner:
    """Runs tasks in order, streaming each row (`out` and the JSON-lines file `jsonl`),
    within `deadline` seconds of its creation (None: no deadline), skipping ids in `done`.

    A task not started by the deadline is skipped (rows "skip"); one still running at the
    deadline is interrupted: the Python stacks of every thread are dumped, the table is
    printed and the process exits (code 4). Jittor holds the GIL inside a sync, so that
    happens when Python next runs; faulthandler dumps the stacks 5 s before the deadline
    from C whatever holds the GIL, and tools/gpu_run.py kills the process a little after it.
    `done`: ids of tasks measured by an earlier run (`read_done`)."""

    def __init__(self, jsonl=None, deadline=None, done=(), out=print, exit=os._exit):
        self.start = time.monotonic()
        self.deadline = deadline
        self.jsonl, self.done, self.out, self._exit = jsonl, set(done), out, exit
        self.rows, self.current = [], None
        self.earlier = []  # rows of an earlier run, shown first in the table
        self._lock = threading.Lock()
        self._finished = threading.Event()
        if jsonl:
            os.makedirs(os.path.dirname(os.path.abspath(jsonl)), exist_ok=True)
        if deadline is not None:
            remaining = deadline - self.elapsed()
            faulthandler.dump_traceback_later(max(1.0, remaining - _DUMP_BEFORE), exit=False)
            threading.Thread(target=self._watch, daemon=True).start()

    def elapsed(self):
        return time.monotonic() - self.start

    def emit(self, task, row, seconds=None):
        """Print `row` and append it to the JSON-lines file, at once."""
        with self._lock:
            self.rows.append(row)
            self.out(f"[gpu_check {self.elapsed():5.0f} s] {row[0]} | {row[1]} | {row[2]} | "
                     f"{row[3]}", flush=True)
            if self.jsonl:
                record = dict(id=task.id, section=row[0], check=row[1], result=row[2],
                              verdict=row[3], at_s=round(self.elapsed(), 1),
                              seconds=None if seconds is None else round(seconds, 1))
                with open(self.jsonl, "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    os.fsync(f.fileno())

    def run(self, tasks):
        """Run `tasks`; returns this run's rows so far. GateError propagates (after its
        row)."""
        for task in tasks:
            if task.id in self.done:
                continue
            if self.deadline is not None and self.elapsed() >= self.deadline:
                self.emit(task, Row(task.section, task.check,
                                    f"skipped: deadline {self.deadline:g} s reached", "skip"))
                continue
            self.current, t0 = task, time.monotonic()
            try:
                rows = task.run()
            except GateError as e:
                self.emit(task, Row(task.section, "GPU usable", str(e), "FAIL"))
                raise
            except Exception as e:  # one task failing must not hide the others' results
                text = str(e).splitlines()[0] if str(e) else ""
                rows = [Row(task.section, task.check, f"{type(e).__name__}: {text[:300]}", "FAIL")]
            finally:
                self.current = None
            for row in rows:
                self.emit(task, row, time.monotonic() - t0)
        return self.rows

    def finish(self):
        """Stop the deadline's watchers (call once, after the last task)."""
        self._finished.set()
        faulthandler.cancel_dump_traceback_later()

    def _watch(self):
        if self._finished.wait(max(0.0, self.deadline - self.elapsed())):
            return
        task = self.current
        if task is None:  # between tasks: the loop skips the rest itself
            return
        with self._lock:
            faulthandler.dump_traceback(all_threads=True)  # where it was, on stderr
            self.out(f"gpu_check: deadline {self.deadline:g} s reached while running "
                     f"{task.id}; every thread's stack is on stderr", flush=True)
        self.emit(task, Row(task.section, task.check,
                            f"interrupted: still running at the deadline ({self.deadline:g} s)",
                            "skip"))
        self.out(format_table(self.earlier + self.rows), flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
        self._exit(EXIT_DEADLINE)


def run_gpu_check(quick=False, variants=None, size=None, steps=None, iters=5, with_mmseg=True,
                  mmseg_path=None, data_root=None, train_overrides=None, jsonl=None,
                  deadline=None, done=(), out=print, runner=None):
    """Run the plan; returns the rows of this run. See the module docstring and
    `plan_tasks`. Once Jittor has started, a fatal signal ends the process instead of
    hanging it in Jittor's handler, and a child ended by a signal does not end it
    (`jseg.platform.env.replace_jittor_signal_handlers`).

    with_mmseg: time mmseg's model too (where the child can import it; a row says when it
    cannot). mmseg_path: the child's Python path (default: this process's).
    data_root: the demo data (default data/demo), made there when that folder is missing or
    empty (quick: 8 small images).
    train_overrides: config overrides for the training and resume tasks (the tests pass a
    tiny model).
    Raises GateError when a GPU is here but not usable (after its row).
    """
    runner = runner or Runner(jsonl, deadline, done, out)
    variants = tuple(variants or (("t",) if quick else ("t", "s", "b", "l")))
    size = tuple(size or ((64, 64) if quick else (512, 512)))
    steps = steps or (4 if quick else 20)
    data_root = str(data_root or ROOT / "data" / "demo")
    state = {}

    def environment():
        from jseg.platform.env import environment_report, replace_jittor_signal_handlers
        report = environment_report()
        import jittor as jt
        state["jt"], state["cuda"], state["report"] = jt, bool(jt.compiler.has_cuda), report
        replace_jittor_signal_handlers()  # a crash ends the check, never hangs it
        threads = jt.flags.use_parallel_op_compiler
        report["kernel compiles"] = f"{threads} threads" if threads else "on the calling thread"
        if not os.path.isdir(data_root) or not os.listdir(data_root):  # as `make demo` does
            from jseg.data.demo import make_demo_data
            make_demo_data(data_root, **(dict(num_train=6, num_val=2, size=64) if quick else {}))
        return [Row("environment", k, v) for k, v in report.items()]

    def gate():
        from jseg.platform.env import cuda_toolkit, gpu_available
        if quick and not gpu_available():
            return [Row("environment", "GPU usable", "no GPU: quick CPU run")]
        cuda_gate(state["report"], state["cuda"], cuda_toolkit())
        return [Row("environment", "GPU usable", "Jittor on CUDA with cuBLAS and cuDNN", "ok")]

    mmseg = None
    with tempfile.TemporaryDirectory(prefix="jseg-gpu-check-") as tmp:
        try:
            runner.run([Task("environment", "environment", "environment", environment)])
            if "jt" not in state:  # Jittor did not start: its row says why, nothing else can run
                return runner.rows
            runner.run([Task("gate", "environment", "GPU usable", gate)])
            mmseg = _MmsegWorker(with_mmseg, state["cuda"], mmseg_path)
            if state["cuda"]:
                state["jt"].flags.use_cuda = 1
            runner.run(plan_tasks(state["jt"], state["cuda"], variants, size, steps, iters,
                                  data_root, list(train_overrides or []), tmp, mmseg))
        finally:
            if mmseg is not None:
                mmseg.close()
            runner.finish()
    return runner.rows


def format_table(rows):
    """The rows as one plain-text table."""
    if not rows:
        return "(no rows)"
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"{'section':<{widths[0]}}  {'check':<{widths[1]}}  {'result':<{widths[2]}}  verdict"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return "\n".join(lines)
