"""The training loop: `train` = check and load everything (`_prepare`), then one plain loop
with logging, evaluation and checkpoints inline.

Exact resume: everything random in an iteration is a function of (seed, iteration) (the
loader seeds each sample from (seed, epoch, index); Jittor's generator is re-seeded from
(seed, iteration, rank) before every step), so a checkpoint holds the weights, the AdamW
state, the iteration and the seed, and N + resume + N equals 2N iterations.

A failed start writes nothing; checkpoints are atomic and finite only (a NaN stops the run
naming the last good one); SIGTERM / SIGINT stop after the step with a checkpoint
(`jseg.engine.stop`). Rank-0-only work (the lock, logs, checkpoints, config) is marked.
"""
import contextlib
import importlib.util
import logging
import math
import os
import signal
import time
import uuid
from dataclasses import dataclass

import jittor as jt
import numpy as np
from tqdm import tqdm

from jseg.checkpoint import (NonFiniteError, check_optimizer_state, load_backbone_init,
                             load_state_dict, read_checkpoint, read_training_checkpoint,
                             save_training_checkpoint)
from jseg.config import config_to_yaml, dump_config
from jseg.data.datasets import dataset_settings
from jseg.data.loader import build_train_loader, build_val_loader
from jseg.models import build_model

from .amp import DynamicLossScaler, amp_scope
from .evaluator import run_evaluation
from .optim import (LrSchedule, build_optimizer, clip_grad_norm, initial_lrs, optimizer_state,
                    restore_optimizer, set_lr)
from .resume import (ResumeConfigError, check_resume_config, keep_earlier_config,
                     resolve_seed, resume_lineage)
from .runlog import Meter, RunLog
from .stop import StopSignals, TrainingStopped
from .tensorboard import INSTALL_HINT as TENSORBOARD_HINT, SampleCollector, TensorBoardLog
from .workdir import CheckpointKeeper, WorkDir

__all__ = ["TrainingError", "TrainingStopped", "train", "iteration_seed"]

logger = logging.getLogger("jseg")


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible resume); the message says why."""


def iteration_seed(seed, iteration, rank=0):
    """Seed of Jittor's generator for one training iteration on one rank."""
    return int(np.random.SeedSequence([int(seed), int(iteration), int(rank)])
               .generate_state(1)[0] % (2 ** 31))


def _last_good(keeper):
    if keeper is not None and keeper.newest is not None:
        return f"the last good checkpoint is {keeper.newest}"
    return "no checkpoint of this run was written yet"


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
    seed = resolve_seed(seed, cfg, checkpoint, world)
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
            owned = resume_lineage(resume, checkpoint, work)
        load_state_dict(model, state, strict=True, source=resume)
        logger.info("resumed from %s at iteration %d", resume, start_iter)
    else:
        if is_main:
            work.check_fresh_start()
        if cfg.model.backbone.pretrained:
            load_backbone_init(model, cfg.model.backbone.pretrained,
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
        restore_optimizer(optimizer, checkpoint["optimizer"], resume)
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
    run_log = RunLog(is_main)
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
    meter = Meter(cfg, run_log, bar, world)
    val_loader = last_eval = None
    model.train()
    try:
        with StopSignals() as stop:
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
        save_training_checkpoint(
            path, {k: v.numpy() for k, v in model.state_dict().items()},
            optimizer_state(s.optimizer), done, s.seed, config_to_yaml(cfg),
            None if s.scaler is None else s.scaler.state_dict(),
            run_id=s.run_id, lineage=s.keeper.lineage_after(path))
    except NonFiniteError as e:
        raise TrainingError(f"{e}; {_last_good(s.keeper)}: lower optimizer.lr or set "
                            "optimizer.grad_clip, then resume from it") from None
    except OSError as e:
        raise TrainingError(
            f"could not write checkpoint {path} ({os.strerror(e.errno) if e.errno else e}); "
            f"nothing was written there, the earlier checkpoints are intact and "
            f"{_last_good(s.keeper)}: free some disk space, then resume=auto") from None
    s.keeper.saved(path)
    logger.info("checkpoint saved: %s", path)
