"""The training loop: one plain loop with logging, evaluation and checkpoints inline.

Exact resume: everything random in an iteration is a function of (seed,
iteration): the data loader seeds each sample from (seed, epoch, index) and
Jittor's generator (DropPath, dropout, NMF bases) is re-seeded from (seed,
iteration, rank) before every step. A checkpoint therefore only has to hold the
weights, the AdamW moments, the step count, the iteration and the seed; training
2N iterations in one run or N + resume + N gives the same numbers.

A user's work is never lost or poisoned:
- everything that can fail at the start (the work dir lock, the checkpoints already
  there, the weights to resume or load, the data) is checked before the run writes
  anything, so a failed start leaves the work dir as it was (see `jseg.engine.workdir`
  for the lock and the rules that keep runs from overwriting each other's checkpoints);
- a checkpoint is written only when every weight and AdamW moment is finite, so the
  checkpoint a NaN stop names is one that can be resumed;
- checkpoints are written atomically, and a failed write says which file and that the
  earlier ones are intact;
- SIGTERM (what SLURM and Kubernetes send before a kill) or SIGINT finishes the current
  step, writes a checkpoint, logs how to resume and stops (`TrainingStopped`); all MPI
  ranks stop at the same iteration. A second signal ends the process at once.

Rank-0-only work (the lock, logs, checkpoints, the resolved config) is marked as such.
"""
import collections
import contextlib
import importlib.util
import json
import logging
import logging.handlers
import math
import os
import re
import resource
import signal
import statistics
import threading
import time
import uuid
from dataclasses import dataclass

import jittor as jt
import numpy as np
from tqdm import tqdm

from jseg.checkpoint import (check_optimizer_state, checkpoint_iteration, load_state_dict,
                             read_checkpoint, read_training_checkpoint, write_checkpoint)
from jseg.config import config_to_yaml, dump_config
from jseg.data.datasets import dataset_settings
from jseg.data.loader import build_train_loader, build_val_loader, random_seed
from jseg.models import build_model
from jseg.utils.atomic import atomic_write

from .amp import DynamicLossScaler, amp_scope
from .evaluator import run_evaluation
from .resume import ResumeConfigError, check_resume_config, keep_earlier_config
from .optim import LrSchedule, build_optimizer, clip_grad_norm, initial_lrs, set_lr
from .tensorboard import INSTALL_HINT as TENSORBOARD_HINT, SampleCollector, TensorBoardLog
from .workdir import CheckpointKeeper, WorkDir

__all__ = ["TrainingError", "TrainingStopped", "train", "iteration_seed"]

logger = logging.getLogger("jseg")

HEARTBEAT_SECONDS = 30  # a progress line at least this often, whatever log_interval says


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible resume); the message says why."""


class TrainingStopped(Exception):
    """Training stopped on a signal after writing a checkpoint; `signum` is the signal."""

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum


class _StopSignals:
    """While training: SIGTERM / SIGINT ask the loop to stop after the current step (the
    first one only sets a flag); a second one ends the process at once, by the signal."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self.saved = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.saved = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
            for s in self.SIGNALS:  # restart system calls (SA_RESTART): Jittor's C++ and
                signal.siginterrupt(s, False)  # MPI code fail on EINTR
        return self

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            os.write(2, f"\n{name} again: stopping now, without a checkpoint\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        os.write(2, f"\n{name} received: the run stops after this step with a checkpoint "
                    f"(send it again to stop at once)\n".encode())

    def requested(self, world):
        """The signal that asks to stop (0: none); under MPI any rank's, agreed by all."""
        if world == 1:
            return self.signum or 0
        got = np.array([self.signum == s for s in self.SIGNALS], np.int32)
        got = jt.array(got).mpi_all_reduce("add").numpy()  # Jittor's MPI sums (no max)
        return next((int(s) for s, n in zip(self.SIGNALS, got) if n), 0)


def iteration_seed(seed, iteration, rank=0):
    """Seed of Jittor's generator for one training iteration on one rank."""
    return int(np.random.SeedSequence([int(seed), int(iteration), int(rank)])
               .generate_state(1)[0] % (2 ** 31))


def _memory_mb():
    """GPU: memory Jittor's allocator uses now; CPU: the process's peak resident size."""
    if jt.flags.use_cuda:
        return round(jt.get_mem_info().total_cuda_used / 2 ** 20)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _duration(seconds):
    seconds = int(round(seconds))
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _eta(durations, remaining):
    """Time left from the median of the recent iterations' durations: the first ones,
    which compile Jittor's kernels, would make a mean absurd."""
    if len(durations) < 3:
        return "unknown yet"
    return _duration(statistics.median(durations) * remaining)


class _LogFileHandler(logging.FileHandler):
    """A log file that, on a full disk, warns once on the console instead of printing a
    traceback per record."""

    def handleError(self, record):
        if not getattr(self, "_warned", False):
            self._warned = True
            logger.warning("cannot write the log file %s any more; the console keeps logging",
                           self.baseFilename)


class _RunLog:
    """The run's text log and JSON-lines metrics in the work dir (rank 0 writes).

    Until `open` the records logged since `__init__` are kept in memory: a start that
    fails leaves no log file behind, and a start that succeeds has them in its log.
    """

    def __init__(self, enabled):
        self.enabled = enabled
        self.handler = self.jsonl = self.tensorboard = None
        self.buffer = logging.handlers.BufferingHandler(capacity=10 ** 6)
        logger.addHandler(self.buffer)

    def open(self, work_dir, start_iter=0):
        """Start writing into `work_dir`; a run resumed at `start_iter` first drops the
        metrics records of later iterations (a run that went on past its checkpoint), as
        TensorBoard's purge does, so that each iteration is recorded once."""
        logger.removeHandler(self.buffer)
        if not self.enabled:
            return
        stamp = time.strftime("%Y%m%d_%H%M%S")
        for n in range(1, 100):  # a name no other run has used
            path = os.path.join(work_dir, f"train_{stamp}{'' if n == 1 else f'_{n}'}.log")
            try:
                open(path, "x").close()
                break
            except FileExistsError:
                continue
        self.handler = _LogFileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        for record in self.buffer.buffer:
            self.handler.handle(record)
        logger.addHandler(self.handler)
        path = os.path.join(work_dir, "metrics.jsonl")
        if start_iter > 0 and os.path.exists(path):
            _drop_records_after(path, start_iter)
        self.jsonl = open(path, "a", encoding="utf-8")

    def record(self, **fields):
        if self.tensorboard is not None:
            self.tensorboard.record(**fields)
        if self.jsonl is None:
            return
        try:
            self.jsonl.write(json.dumps(fields) + "\n")
            self.jsonl.flush()
        except OSError as e:
            logger.warning("cannot write %s any more (%s); metrics stay in the log only",
                           self.jsonl.name, e.strerror or e)
            with contextlib.suppress(OSError):
                self.jsonl.close()
            self.jsonl = None

    def close(self):
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        logger.removeHandler(self.buffer)
        if self.handler is not None:
            logger.removeHandler(self.handler)
            self.handler.close()
        if self.jsonl is not None:
            with contextlib.suppress(OSError):
                self.jsonl.close()


def _stage_of(key):
    """'block2.0.attn.proj_1.weight' -> 2 (patch_embed{i}, block{i}, norm{i} of MSCAN)."""
    found = re.match(r"(?:patch_embed|block|norm)(\d+)\.", key)
    return int(found.group(1)) if found else 0


def _load_backbone_init(model, path, strict=True):
    """Initialise the backbone from `path` (a converted ImageNet MSCAN, a segmentor whose
    `backbone.*` keys are taken, or zoo:mscan_*), reporting the tensors matched per stage.

    strict: refuse (TrainingError) unless every MSCAN tensor is matched by name and shape;
    otherwise load what matches and warn about the rest, which keeps its random init.
    """
    state, _ = read_checkpoint(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    own = {k: tuple(v.shape) for k, v in model.backbone.state_dict().items()}
    matched = {k for k, v in state.items() if own.get(k) == tuple(np.shape(v))}
    misshaped = sorted(k for k in state if k in own and k not in matched)
    missing = sorted(k for k in own if k not in matched)
    stages = sorted({_stage_of(k) for k in own})
    per_stage = ", ".join(
        f"stage {i} {sum(_stage_of(k) == i for k in matched)}/"
        f"{sum(_stage_of(k) == i for k in own)}" for i in stages)
    report = (f"backbone init from {path}: {len(matched)}/{len(own)} MSCAN tensors matched "
              f"({per_stage})")
    if missing:
        parts = [f"{len(missing)} not matched (e.g. {', '.join(missing[:3])})"]
        if misshaped:
            k = misshaped[0]
            parts.append(f"{len(misshaped)} of them have another shape ({k}: file "
                         f"{tuple(np.shape(state[k]))} vs model {own[k]}), weights of another "
                         "MSCAN variant")
        if any(".mlp.dwconv.dwconv." in k or k.endswith("num_batches_tracked") for k in state):
            parts.append("the file is in a PyTorch layout: convert it first with "
                         "python weights_convert/convert.py SRC DST --format imagenet")
        if not strict:
            logger.warning("%s; %s; model.backbone.pretrained_strict is false, so these keep "
                           "their random initialisation", report, "; ".join(parts))
        else:
            raise TrainingError(
                f"{report}; {'; '.join(parts)}. Use weights of this variant converted by "
                "weights_convert (or zoo:mscan_t/s/b/l), or set "
                "model.backbone.pretrained_strict=false to train knowingly with the "
                "unmatched tensors at their random initialisation")
    else:
        logger.info(report)
    load_state_dict(model.backbone, {k: state[k] for k in matched}, strict=False,
                    source=f"{path} (backbone initialisation)")
    ignored = len(state) - len(matched) - len(misshaped)
    if ignored:
        logger.info("backbone init: %d tensors of %s are not MSCAN's and were ignored (e.g. "
                    "an ImageNet classifier or a decode head)", ignored, path)


def _optimizer_state(optimizer):
    state = {"n_step": int(optimizer.n_step), "m": {}, "v": {}}
    for g in optimizer.param_groups:
        for name, m, v in zip(g["names"], g["m"], g["values"]):
            state["m"][name] = m.numpy()
            state["v"][name] = v.numpy()
    return state


def _restore_optimizer(optimizer, state, source):
    names = [n for g in optimizer.param_groups for n in g["names"]]
    missing = [n for n in names if n not in state["m"] or n not in state["v"]]
    if missing:
        raise TrainingError(f"optimizer state in {source} lacks {len(missing)} parameters "
                            f"(e.g. {missing[:3]}); it was written for another model")
    for g in optimizer.param_groups:
        for name, m, v in zip(g["names"], g["m"], g["values"]):
            m.update(jt.array(state["m"][name]))
            v.update(jt.array(state["v"][name]))
    optimizer.n_step = int(state["n_step"])


def _drop_records_after(path, iteration):
    """Rewrite metrics.jsonl (atomically) without the records of iterations > `iteration`;
    lines that are not such records stay."""
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()

    def later(line):
        try:
            it = json.loads(line).get("iter")
        except (ValueError, AttributeError):
            return False
        return isinstance(it, int) and it > iteration

    kept = [line for line in lines if not later(line)]
    if len(kept) == len(lines):
        return
    if kept and not kept[-1].endswith("\n"):  # a line cut by a crash
        kept[-1] += "\n"
    with atomic_write(path, "w") as f:
        f.writelines(kept)
    logger.info("%s: dropped %d records of iterations after %d (the run went on past the "
                "checkpoint it resumes from)", path, len(lines) - len(kept), iteration)


def _last_good(keeper):
    if keeper is not None and keeper.newest is not None:
        return f"the last good checkpoint is {keeper.newest}"
    return "no checkpoint of this run was written yet"


def save_training_checkpoint(path, model, optimizer, iteration, seed, cfg, scaler=None, *,
                             run_id=None, lineage=None):
    """Write a resumable checkpoint, only if every weight and AdamW moment is finite.

    run_id / lineage: the run's identity and the checkpoint names its lineage keeps
    (see `jseg.engine.workdir`). Raises TrainingError, writing nothing, on non-finite
    values; OSError from the write (the earlier file at `path`, if any, is unchanged).
    """
    from jseg import __version__

    state = {k: v.numpy() for k, v in model.state_dict().items()}
    optim = _optimizer_state(optimizer)
    arrays = [(k, a) for k, a in state.items()] + \
        [(f"AdamW {kind} of {k}", a) for kind in ("m", "v") for k, a in optim[kind].items()]
    bad = [k for k, a in arrays if not np.isfinite(a).all()]
    if bad:
        raise TrainingError(
            f"{len(bad)} of {len(arrays)} weight and AdamW tensors are NaN or infinite after "
            f"iteration {iteration} (e.g. {', '.join(bad[:3])}); the step diverged, and the "
            f"checkpoint was not written")
    extra = {"amp": scaler.state_dict()} if scaler is not None else {}
    write_checkpoint(path, {
        **extra,
        "meta": {"iter": int(iteration), "seed": int(seed), "jseg_version": __version__,
                 "config": config_to_yaml(cfg), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "run_id": run_id or uuid.uuid4().hex,
                 "checkpoints": list(lineage or [os.path.basename(path)])},
        "state_dict": state,
        "optimizer": optim,
    })


@dataclass
class _Start:
    """Where a run starts: everything checked and loaded before anything is written."""
    model: object
    start_iter: int
    seed: int
    run_id: str
    optimizer: object
    schedule: LrSchedule
    scaler: object
    loader: object
    keeper: object  # CheckpointKeeper on rank 0, None elsewhere
    resumed_config: object = None  # the resumed checkpoint's config (YAML text)


def _resolve_seed(seed, cfg, checkpoint, world):
    """The run's seed, decided once: a resumed run's own (unless a change of it was
    accepted, see check_resume_config), else `seed`, else cfg.seed, else a random one (rank
    0's under MPI), logged so that the run can be repeated."""
    if checkpoint is not None:
        asked = seed if seed is not None else cfg.seed
        return asked if asked is not None else checkpoint["meta"]["seed"]
    if seed is None:
        seed = cfg.seed
    if seed is None:
        seed = random_seed(world)
        logger.info("no seed given; using seed %d (set seed=%d to repeat this run)", seed, seed)
    return seed


def _lineage(resume, ckpt, work):
    """Checkpoint names in this work dir that the resumed run's lineage wrote."""
    if os.path.realpath(os.path.dirname(os.path.abspath(resume))) != \
            os.path.realpath(work.ckpt_dir):
        return []  # resumed from elsewhere: nothing here is ours
    names = ckpt["meta"].get("checkpoints")
    if names is None:  # written before lineages were recorded: the folder was the run's
        k = ckpt["meta"]["iter"]
        names = [os.path.basename(p) for p in work.checkpoints() if checkpoint_iteration(p) <= k]
    return names


def _prepare(cfg, model, work, resume, load_from, seed, is_main, world, resume_changed=()):
    """Check and load everything the run needs; writes nothing (see the module docstring).

    Builds the model (initialised from the run's seed, the same on every rank) unless one
    is given."""
    max_iters = cfg.train.max_iters
    start_iter, checkpoint, owned = 0, None, []
    if resume is not None:
        if load_from is not None:
            raise TrainingError("resume continues a run with its own weights; load_from "
                                "cannot be given with it")
        if resume == "auto":
            resume = work.newest_checkpoint()
        state, checkpoint = read_training_checkpoint(resume)
        try:
            check_resume_config(checkpoint, cfg, resume, resume_changed,
                                seed if seed is not None else cfg.seed)
        except ResumeConfigError as e:
            raise TrainingError(str(e)) from None
    seed = _resolve_seed(seed, cfg, checkpoint, world)
    if model is None:
        jt.set_global_seed(seed, different_seed_for_mpi=False)  # weight init, alike on every rank
        model = build_model(cfg.model)
    if checkpoint is not None:
        check_optimizer_state(checkpoint, model, resume)
        start_iter = checkpoint["meta"]["iter"]
        if start_iter >= max_iters:
            raise TrainingError(
                f"{resume} is at iteration {start_iter} and train.max_iters is {max_iters}: "
                f"nothing to train; raise train.max_iters (e.g. train.max_iters="
                f"{start_iter + max(max_iters, 1000)}) to go on")
        if is_main:
            work.check_resume(start_iter)
            owned = _lineage(resume, checkpoint, work)
        load_state_dict(model, state, strict=True, source=resume)
        logger.info("resumed from %s at iteration %d", resume, start_iter)
    else:
        if is_main:
            work.check_fresh_start()
        if cfg.model.backbone.pretrained:
            _load_backbone_init(model, cfg.model.backbone.pretrained,
                                cfg.model.backbone.pretrained_strict)
        if load_from is not None:
            state, _ = read_checkpoint(load_from)
            load_state_dict(model, state, strict=True, source=load_from)
            logger.info("weights loaded from %s", load_from)

    if world > 1:  # every rank starts from rank 0's weights, whatever its seed
        for var in model.state_dict().values():
            var.assign(var.mpi_broadcast(0))
        jt.sync_all()
    optimizer = build_optimizer(model, cfg.optimizer)
    if checkpoint is not None:
        _restore_optimizer(optimizer, checkpoint["optimizer"], resume)
    base_lr = cfg.optimizer.lr
    # the first value is the base lr (lr_mult 1), logged; the others are the groups'
    schedule = LrSchedule(cfg.scheduler, max_iters, [base_lr] + initial_lrs(optimizer, base_lr))
    if cfg.scheduler.warmup_iters > max_iters:
        logger.warning("scheduler.warmup_iters %d is longer than train.max_iters %d: the run "
                       "only warms up, to %.3g x optimizer.lr at its last iteration (as "
                       "mmengine runs it)", cfg.scheduler.warmup_iters, max_iters,
                       schedule.values(max_iters - 1)[0] / base_lr)
    scaler = None
    if cfg.train.amp:
        if not jt.flags.use_cuda:
            raise TrainingError("train.amp=true needs a CUDA GPU (Jittor computes in float16 "
                                "only there); set train.amp=false to train in float32")
        scaler = DynamicLossScaler()
        if checkpoint is not None and "amp" in checkpoint:
            scaler.load_state_dict(checkpoint["amp"])
        logger.info("mixed precision on: fp16 compute, loss scale %g", scaler.scale)
    loader = build_train_loader(cfg, seed=seed)  # lists the dataset: bad data stops us here
    keeper = CheckpointKeeper(work.ckpt_dir, cfg.train.keep_checkpoints, owned) if is_main \
        else None
    run_id = checkpoint["meta"].get("run_id") if checkpoint is not None else None
    return _Start(model, start_iter, seed, run_id or uuid.uuid4().hex, optimizer, schedule,
                  scaler, loader, keeper,
                  checkpoint["meta"].get("config") if checkpoint is not None else None)


def train(cfg, model=None, *, resume=None, load_from=None, seed=None, progress=True,
          resume_changed=()):
    """Train the model of `cfg` (or `model`, built by the caller); returns the last
    evaluation result (or None).

    resume: a checkpoint path, "auto" (the newest in work_dir/checkpoints) or None.
    load_from: weights to start from (strict), e.g. a converted segmentor checkpoint.
    seed: overrides cfg.seed; None and None draws one (logged and checkpointed). The model
        is initialised from it.
    resume_changed: config keys (or sections) allowed to differ from the resumed
        checkpoint's config beyond the free ones (jseg.engine.resume); each change is logged
        and the earlier config.yaml is kept as config.iter_<N>.yaml.
    Raises TrainingError, WorkDirError (jseg.engine.workdir), CheckpointError,
    WeightsMismatchError, DataError or OSError with a message for the user.
    """
    rank, world = (jt.rank, jt.world_size) if jt.in_mpi else (0, 1)
    is_main = rank == 0
    if cfg.train.tensorboard and is_main and importlib.util.find_spec("tensorboardX") is None:
        raise TrainingError(TENSORBOARD_HINT)  # before anything is written
    work = WorkDir(cfg.work_dir)
    run_log = _RunLog(is_main)
    try:
        with work if is_main else contextlib.nullcontext():  # rank 0: one training per folder
            if is_main:
                work.remove_stale_temp_files()
            start = _prepare(cfg, model, work, resume, load_from, seed, is_main, world,
                             resume_changed)
            if is_main:  # the start is sound: from here on the run writes
                os.makedirs(work.ckpt_dir, exist_ok=True)
                keep_earlier_config(work.path, start.resumed_config, start.start_iter,
                                    config_to_yaml(cfg))
                dump_config(cfg, os.path.join(work.path, "config.yaml"))
            run_log.open(work.path, start.start_iter)
            if is_main and cfg.train.tensorboard:
                run_log.tensorboard = TensorBoardLog(os.path.join(work.path, "tensorboard"),
                                                     start.start_iter)
                logger.info("TensorBoard: tensorboard --logdir %s",
                            run_log.tensorboard.log_dir)
            try:
                return _train(cfg, start.model, start, run_log, progress, rank, world, is_main)
            finally:
                start.loader.close()
    finally:
        run_log.close()


def _step(model, optimizer, scaler, batch, grad_clip, world):
    """One forward/backward/update; returns (losses, loss value). No update on a non-finite loss."""
    with amp_scope(scaler is not None):
        losses = model(jt.array(batch["img"]), jt.array(batch["seg"]))
        loss = sum(v for k, v in losses.items() if k.startswith("loss"))
        if scaler is None:
            optimizer.backward(loss)
        else:
            scaler.backward(optimizer, loss)
    if world > 1:
        loss = loss.mpi_all_reduce("mean")
    jt.sync_all()
    loss_value = float(loss.item())
    if not math.isfinite(loss_value):
        return losses, loss_value
    if scaler is not None and scaler.unscale(optimizer):
        logger.warning("fp16 gradients overflowed; step skipped, loss scale lowered to %g",
                       scaler.scale)
        return losses, loss_value
    if grad_clip is not None:
        clip_grad_norm(optimizer, grad_clip)
    optimizer.step()
    return losses, loss_value


class _Meter:
    """The loop's measurements and log lines: a line (and a metrics.jsonl record) every
    train.log_interval iterations and at the end, with the losses averaged over the ranks,
    and a progress line at least every HEARTBEAT_SECONDS; both give the time left."""

    def __init__(self, cfg, run_log, bar, world):
        self.log_interval, self.max_iters = cfg.train.log_interval, cfg.train.max_iters
        self.run_log, self.bar, self.world = run_log, bar, world
        self.window = []  # losses since the last log line
        self.durations = collections.deque(maxlen=20)  # recent iterations' seconds, for the eta
        self.t_last = self.t_line = self.t_end = time.time()

    def paused(self):
        """After an evaluation: its time is not an iteration's."""
        self.t_line = self.t_end = time.time()

    def update(self, done, loss_value, losses, lr, data_time, loss_scale=None):
        now = time.time()
        self.bar.update(1)
        self.window.append(loss_value)
        self.durations.append(now - self.t_end)
        self.t_end = now
        eta = _eta(self.durations, self.max_iters - done)
        if done % self.log_interval == 0 or done == self.max_iters:
            values = {k: float(v.item()) for k, v in losses.items()}
            if self.world > 1:
                values = {k: float(jt.array(np.array([v])).mpi_all_reduce("mean").item())
                          for k, v in values.items()}
            record = {"mode": "train", "iter": done, "lr": lr, "loss": loss_value,
                      "loss_avg": float(np.mean(self.window)), **values,
                      "time": (now - self.t_last) / len(self.window), "data_time": data_time,
                      "memory_mb": _memory_mb()}
            if loss_scale is not None:  # mixed precision: the dynamic loss scale after the step
                record["loss_scale"] = loss_scale
            self.t_last = self.t_line = now
            self.window = []
            self.run_log.record(**record)
            logger.info("iter %d/%d lr %.3e loss %.4f (avg %.4f) %s time %.3fs data %.3fs "
                        "mem %dMB eta %s", done, self.max_iters, lr, loss_value,
                        record["loss_avg"], " ".join(f"{k} {v:.4f}" for k, v in values.items()),
                        record["time"], data_time, record["memory_mb"], eta)
            self.bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")
        elif now - self.t_line >= HEARTBEAT_SECONDS:  # slow iterations: still say where we are
            self.t_line = now
            logger.info("iter %d/%d loss %.4f, last iteration %.2fs, eta %s", done,
                        self.max_iters, loss_value, self.durations[-1], eta)


def _train(cfg, model, s, run_log, progress, rank, world, is_main):
    """The loop: a step per iteration, then logging, checkpoints and evaluation when due."""
    max_iters, train_cfg = cfg.train.max_iters, cfg.train
    evaluate_at_all = cfg.data.val.get("ann_dir") is not None
    if not evaluate_at_all:
        logger.info("data.val has no labels (ann_dir null): no evaluation during training")
    logger.info("training %s for %d iterations (from %d), global batch %d on %d process(es), "
                "seed %d; the first iterations compile Jittor's kernels (minutes on a new "
                "machine, cached afterwards)", cfg.name, max_iters, s.start_iter,
                cfg.data.batch_size, world, s.seed)
    bar = tqdm(total=max_iters, initial=s.start_iter, desc="train", unit="it",
               disable=not (progress and is_main), dynamic_ncols=True)
    meter = _Meter(cfg, run_log, bar, world)
    val_loader = last_eval = None
    model.train()
    try:
        with _StopSignals() as stop:
            batches = s.loader.iter_from(s.start_iter, max_iters - s.start_iter)
            for it in range(s.start_iter, max_iters):
                t0 = time.time()
                batch = next(batches)
                data_time = time.time() - t0
                lrs = s.schedule.values(it)  # [base lr, each param group's]
                set_lr(s.optimizer, lrs[1:])
                jt.set_seed(iteration_seed(s.seed, it, rank))
                losses, loss_value = _step(model, s.optimizer, s.scaler, batch,
                                           cfg.optimizer.grad_clip, world)
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"the loss is {loss_value} at iteration {it + 1}; stopping. Checkpoints "
                        f"are written only with finite weights and {_last_good(s.keeper)}: lower "
                        "optimizer.lr, set optimizer.grad_clip, or check the data, then resume "
                        "from it")
                done = it + 1
                meter.update(done, loss_value, losses, lrs[0], data_time,
                             None if s.scaler is None else s.scaler.scale)
                saved = done % train_cfg.checkpoint_interval == 0 or done == max_iters
                if is_main and saved:
                    _save(cfg, model, s, done)
                signum = stop.requested(world)
                if signum:
                    _stop_on_signal(cfg, model, s, done, signum, saved, is_main, world)
                interval = train_cfg.eval_interval
                due = (interval > 0 and done % interval == 0) or done == max_iters
                if evaluate_at_all and due:
                    if val_loader is None:
                        val_loader = build_val_loader(cfg, rank=rank, world_size=world)
                    samples = None
                    if run_log.tensorboard is not None and train_cfg.tensorboard_samples:
                        samples = SampleCollector(train_cfg.tensorboard_samples)
                    last_eval = run_evaluation(cfg, model, val_loader, run_log, done, progress,
                                               on_prediction=samples, seed=s.seed)
                    if samples is not None:
                        run_log.tensorboard.samples(samples.items,
                                                    dataset_settings(cfg.data)["palette"], done)
                    model.train()
                    meter.paused()
    except KeyboardInterrupt:
        logger.error("interrupted; %s (continue with resume=auto)", _last_good(s.keeper))
        raise
    finally:
        bar.close()
    return last_eval


def _stop_on_signal(cfg, model, s, done, signum, saved, is_main, world):
    """The loop got SIGTERM / SIGINT: checkpoint iteration `done` (rank 0, unless the loop
    just did), log where to go on from, raise TrainingStopped. Under MPI the other ranks
    wait for the checkpoint: a rank that exits first makes mpirun end the job."""
    if is_main and not saved:
        _save(cfg, model, s, done)
    if world > 1:
        jt.array(np.zeros(1, np.int32)).mpi_all_reduce("add").sync()
    message = (f"stopped by {signal.Signals(signum).name} after iteration {done}; "
               f"checkpoint {s.keeper.newest if is_main else ''} holds it: continue with "
               f"--resume auto (same config and work dir)")
    if is_main:
        logger.warning(message)
    raise TrainingStopped(signum, message)


def _save(cfg, model, s, done):
    """Rank 0: write the checkpoint of iteration `done`, then prune the lineage's oldest."""
    path = s.keeper.path(done)
    try:
        save_training_checkpoint(path, model, s.optimizer, done, s.seed, cfg, s.scaler,
                                 run_id=s.run_id, lineage=s.keeper.lineage_after(path))
    except TrainingError as e:
        raise TrainingError(f"{e}; {_last_good(s.keeper)}: lower optimizer.lr or set "
                            "optimizer.grad_clip, then resume from it") from None
    except OSError as e:
        raise TrainingError(
            f"could not write checkpoint {path} ({os.strerror(e.errno) if e.errno else e}); "
            f"nothing was written there, the earlier checkpoints are intact and "
            f"{_last_good(s.keeper)}: free some disk space, then resume=auto") from None
    s.keeper.saved(path)
    logger.info("checkpoint saved: %s", path)
