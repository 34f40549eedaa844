"""One prepared check of jseg on a GPU: correctness, training, resume, speed; one table.

Sections (`run_gpu_check`), each a group of rows (check, result, verdict):
1. environment: `jseg.utils.env.environment_report` (device, toolkit and why, driver,
   cuBLAS / cuDNN).
2. logits: SegNeXt-T and -S at `size` (512x512) with seeded random weights and pinned NMF
   bases: the GPU's logits against the CPU's (jseg's CPU kernels), held to the parity
   tests' tolerances (max|gpu - cpu| / max|cpu| <= 1e-4, argmax agreement >= 99.9%).
3. training: `steps` (20) iterations of the demo config on the demo data, fp32 and with
   `train.amp=true`: every loss finite and the last five lower than the first five on
   average; the AMP rows show the loss scale at the end.
4. resume: 4 iterations straight vs 2, then `resume=auto`, 2 more: the same losses and weights.
5. speed: inference ms/img (batch 1) and a training step (batch 2, AdamW) for each of
   `variants` at `size`, fp32 and AMP, with the most GPU memory Jittor's allocator held; with
   PyTorch + mmsegmentation importable, the same for mmseg's model on the same GPU.

`quick=True` (the CPU smoke run, also what the tests use) keeps the flow but makes it
small: 64x64, SegNeXt-T only, 4 steps; without a GPU the "GPU" side is the CPU with jseg's
kernels off (`jseg.ops.disabled()`, the maths that runs on CUDA) and AMP rows say "CUDA only".
"""
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["run_gpu_check", "format_table", "Row"]

ROOT = Path(__file__).resolve().parents[2]
VARIANT_CONFIG = "configs/segnext/segnext_mscan-{}_ade20k-512x512.yaml"
DEMO_CONFIG = "configs/demo/segnext_mscan-t_demo.yaml"
LOGITS_REL, ARGMAX_AGREE = 1e-4, 0.999  # the parity tests' tolerances


class Row(tuple):
    """(section, check, result, verdict) with verdict "ok", "FAIL" or "info"."""

    def __new__(cls, section, check, result, verdict="info"):
        return super().__new__(cls, (section, check, result, verdict))


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


def _logits_rows(jt, cuda, variants, size):
    from jseg.config import load_config
    from jseg.diagnostics.parity import pin_jseg_bases
    from jseg.models import build_model

    rows, other = [], "GPU" if cuda else "CPU, kernels off"
    for v in variants:
        cfg = load_config(ROOT / VARIANT_CONFIG.format(v))
        jt.flags.use_cuda = 0
        jt.set_global_seed(0)
        model = build_model(cfg.model)
        model.eval()
        img = np.random.default_rng(1).standard_normal((1, 3, *size)).astype(np.float32)
        outputs = []
        for side in (contextlib.nullcontext(), _other_side(jt, cuda)):
            with side, jt.no_grad():
                pin_jseg_bases(model, seed=2)
                outputs.append(model.inference(jt.array(img)).numpy())
        jt.flags.use_cuda = 0
        cpu, dev = outputs
        rel = float(np.abs(dev - cpu).max() / max(np.abs(cpu).max(), 1e-30))
        agree = float((dev.argmax(1) == cpu.argmax(1)).mean())
        ok = rel <= LOGITS_REL and agree >= ARGMAX_AGREE and np.isfinite(dev).all()
        rows.append(Row("logits", f"SegNeXt-{v.upper()} {size[0]}x{size[1]}, {other} vs CPU",
                        f"max rel {rel:.1e} (<= {LOGITS_REL:g}), argmax agree {agree:.4%}",
                        "ok" if ok else "FAIL"))
    return rows


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


def _training_rows(jt, cuda, data_root, steps, small, tmp):
    rows = []
    for amp in (False, True):
        name = "AMP (fp16)" if amp else "fp32"
        if amp and not cuda:
            rows.append(Row("training", f"{steps} steps {name}", "CUDA only; not run here"))
            continue
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
        rows.append(Row("training", f"{steps} steps {name}, demo data", result,
                        "ok" if finite and falling else "FAIL"))
    return rows


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


def _speed_rows(jt, cuda, variants, size, iters, with_mmseg):
    from jseg.config import load_config
    from jseg.diagnostics.benchmark import JittorBench, make_inputs
    from jseg.engine.amp import amp_scope

    rows = []
    for v in variants:
        cfg = load_config(ROOT / VARIANT_CONFIG.format(v), [f"device={'cuda' if cuda else 'cpu'}"])
        for mode, batch in (("infer", 1), ("train", 2)):
            for amp in ((False, True) if cuda else (False,)):
                img, label = make_inputs(batch, 3, *size, 150, seed=0)
                with amp_scope(amp):
                    bench = JittorBench(cfg, mode, img, label, seed=0)
                    times = [bench.step() for _ in range(2 + iters)][2:]
                    finite = bench.check_finite()
                mb, kind = bench.memory()
                median = float(np.median(times))
                value = (f"{median * 1e3 / batch:.1f} ms/img ({batch / median:.1f} img/s)"
                         if mode == "infer" else f"{median:.3f} s/step (batch {batch})")
                # a timed AMP step has no loss scaling (the training rows check that), so a
                # non-finite AMP output is reported, not failed; in fp32 it is a failure
                verdict = "info" if finite or amp else "FAIL"
                rows.append(Row("speed", f"jseg {v.upper()} {mode} {'AMP' if amp else 'fp32'}",
                                f"{value}, {mb:.0f} MiB {kind}"
                                + ("" if finite else ", output not finite"), verdict))
                del bench
                jt.gc()
            if with_mmseg:
                rows.append(_mmseg_speed(cfg, v, mode, batch, size, iters, cuda))
    return rows


def _mmseg_speed(cfg, v, mode, batch, size, iters, cuda):
    """mmseg's model of the same config on the same device, timed the same way."""
    from jseg.diagnostics import parity
    from jseg.diagnostics.benchmark import make_inputs

    ref = parity.import_reference()
    torch = ref.torch
    device = "cuda" if cuda else "cpu"
    model = parity.build_reference_model(ref, cfg["model"]).to(device)
    img, label = make_inputs(batch, 3, *size, 150, seed=0)
    img, label = torch.from_numpy(img).to(device), torch.from_numpy(label).long().to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad():
                model.encode_decode(img, [dict(img_shape=size, ori_shape=size,
                                               pad_shape=size)] * batch)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)

        def step():
            logits = model.encode_decode(img, [dict(img_shape=size)] * batch)
            loss = torch.nn.functional.cross_entropy(logits, label, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
    times = []
    for i in range(2 + iters):
        sync()
        t0 = time.perf_counter()
        step()
        sync()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    median = float(np.median(times))
    value = (f"{median * 1e3 / batch:.1f} ms/img ({batch / median:.1f} img/s)"
             if mode == "infer" else f"{median:.3f} s/step (batch {batch})")
    if cuda:
        value += f", {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB torch peak"
    return Row("speed", f"mmseg {v.upper()} {mode} fp32", value)


def run_gpu_check(quick=False, variants=None, size=None, steps=None, iters=5, with_mmseg=None,
                  data_root=None, train_overrides=None, out=print):
    """Run every section; returns the rows. See the module docstring.

    data_root: the demo data (default data/demo), made there when that folder is missing or
    empty (quick: 8 small images).
    train_overrides: config overrides for the training and resume sections (the tests pass
    a tiny model).
    """
    from jseg.utils.env import environment_report

    env = environment_report()
    import jittor as jt

    cuda = bool(jt.compiler.has_cuda)
    variants = variants or (("t",) if quick else ("t", "s", "b", "l"))
    size = tuple(size or ((64, 64) if quick else (512, 512)))
    steps = steps or (4 if quick else 20)
    if with_mmseg is None:
        from jseg.diagnostics.benchmark import torch_available
        with_mmseg = torch_available()
    small = list(train_overrides or [])
    from jseg.data.demo import make_demo_data
    data_root = str(data_root or ROOT / "data" / "demo")
    if not os.path.isdir(data_root) or not os.listdir(data_root):  # as `make demo` makes it
        make_demo_data(data_root, **(dict(num_train=6, num_val=2, size=64) if quick else {}))
    rows = [Row("environment", k, v) for k, v in env.items()]
    sections = [
        ("logits", lambda: _logits_rows(jt, cuda, [v for v in variants if v in "ts"] or ["t"],
                                        size)),
        ("training", lambda: _training_rows(jt, cuda, data_root, steps, small, tmp)),
        ("resume", lambda: _resume_rows(data_root, small, tmp)),
        ("speed", lambda: _speed_rows(jt, cuda, variants, size, iters, with_mmseg)),
    ]
    with tempfile.TemporaryDirectory(prefix="jseg-gpu-check-") as tmp:
        for name, section in sections:
            t0 = time.time()
            out(f"[gpu_check] {name} ...", flush=True)
            if cuda:
                jt.flags.use_cuda = 1
            try:
                got = section()
            except Exception as e:  # one section failing must not hide the others' results
                text = str(e).splitlines()[0] if str(e) else ""
                got = [Row(name, "error", f"{type(e).__name__}: {text[:300]}", "FAIL")]
            rows.extend(got)
            rows.append(Row(name, "time", f"{time.time() - t0:.0f} s"))
            out(f"[gpu_check] {name} done in {time.time() - t0:.0f} s", flush=True)
    return rows


def format_table(rows):
    """The rows as one plain-text table."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    lines = [f"{'section':<{widths[0]}}  {'check':<{widths[1]}}  {'result':<{widths[2]}}  verdict"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return "\n".join(lines)
