"""The training loop: one plain loop with logging, evaluation and checkpoints inline.

Exact resume: everything random in an iteration is a function of (seed,
iteration): the data loader seeds each sample from (seed, epoch, index) and
Jittor's generator (DropPath, dropout, NMF bases) is re-seeded from (seed,
iteration, rank) before every step. A checkpoint therefore only has to hold the
weights, the AdamW moments, the step count, the iteration and the seed; training
2N iterations in one run or N + resume + N gives the same numbers.

Rank-0-only work (logs, checkpoints, the resolved config) is marked as such.
"""
import json
import logging
import math
import os
import resource
import time

import jittor as jt
import numpy as np
from tqdm import tqdm

from jseg.config import config_to_yaml, dump_config
from jseg.data.loader import build_train_loader, build_val_loader

from .amp import DynamicLossScaler, amp_scope
from .checkpoint import load_state_dict, read_checkpoint, write_checkpoint, find_checkpoints
from .evaluator import evaluate
from .metrics import format_table
from .optim import LrSchedule, build_optimizer, clip_grad_norm, initial_lrs, set_lr

__all__ = ["TrainingError", "train", "iteration_seed"]

logger = logging.getLogger("jseg")


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN loss, an incompatible resume); the message says why."""


def iteration_seed(seed, iteration, rank=0):
    """Seed of Jittor's generator for one training iteration on one rank."""
    return int(np.random.SeedSequence([int(seed), int(iteration), int(rank)])
               .generate_state(1)[0] % (2 ** 31))


def _memory_mb():
    """GPU: memory Jittor's allocator uses now; CPU: the process's peak resident size."""
    if jt.flags.use_cuda:
        return round(jt.get_mem_info().total_cuda_used / 2 ** 20)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


class _RunLog:
    """Human-readable log file + JSON-lines metrics in the work dir (rank 0 writes)."""

    def __init__(self, work_dir, enabled):
        self.enabled = enabled
        self.jsonl = None
        if not enabled:
            return
        stamp = time.strftime("%Y%m%d_%H%M%S")
        self.handler = logging.FileHandler(os.path.join(work_dir, f"train_{stamp}.log"))
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(self.handler)
        self.jsonl = open(os.path.join(work_dir, "metrics.jsonl"), "a", encoding="utf-8")

    def record(self, **fields):
        if self.enabled:
            self.jsonl.write(json.dumps(fields) + "\n")
            self.jsonl.flush()

    def close(self):
        if self.enabled:
            logger.removeHandler(self.handler)
            self.handler.close()
            self.jsonl.close()


def _load_backbone_init(model, path):
    """Non-strict backbone initialisation from a converted ImageNet checkpoint."""
    state, _ = read_checkpoint(path)
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    missing, unexpected = load_state_dict(model.backbone, state, strict=False,
                                          source=f"{path} (backbone initialisation)")
    if missing or unexpected:
        logger.warning("backbone init from %s: %d backbone keys missing, %d unexpected",
                       path, len(missing), len(unexpected))
    logger.info("backbone initialised from %s", path)


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


def save_training_checkpoint(path, model, optimizer, iteration, seed, cfg, scaler=None):
    from jseg import __version__
    extra = {"amp": scaler.state_dict()} if scaler is not None else {}
    write_checkpoint(path, {
        **extra,
        "meta": {"iter": int(iteration), "seed": int(seed), "jseg_version": __version__,
                 "config": config_to_yaml(cfg), "time": time.strftime("%Y-%m-%d %H:%M:%S")},
        "state_dict": {k: v.numpy() for k, v in model.state_dict().items()},
        "optimizer": _optimizer_state(optimizer),
    })


def _prune_checkpoints(ckpt_dir, keep):
    for path in find_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        os.remove(path)


def train(cfg, model, *, resume=None, load_from=None, seed=None, progress=True):
    """Train `model` as `cfg` says; returns the last evaluation result (or None).

    resume: a checkpoint path, "auto" (the newest in work_dir/checkpoints) or None.
    load_from: weights to start from (strict), e.g. a converted segmentor checkpoint.
    seed: overrides cfg.seed; None and None draws one (logged and checkpointed).
    """
    rank, world = (jt.rank, jt.world_size) if jt.in_mpi else (0, 1)
    is_main = rank == 0
    work_dir = cfg.work_dir
    ckpt_dir = os.path.join(work_dir, "checkpoints")
    if is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
        dump_config(cfg, os.path.join(work_dir, "config.yaml"))
    run_log = _RunLog(work_dir, is_main)
    try:
        return _train(cfg, model, run_log, ckpt_dir, resume, load_from, seed, progress,
                      rank, world, is_main)
    finally:
        run_log.close()


def _train(cfg, model, run_log, ckpt_dir, resume, load_from, seed, progress, rank, world, is_main):
    train_cfg = cfg.train
    max_iters = train_cfg.max_iters
    start_iter = 0
    checkpoint = None
    if resume is not None:
        if resume == "auto":
            found = find_checkpoints(ckpt_dir)
            if not found:
                raise TrainingError(f"--resume auto: no checkpoint in {ckpt_dir}; "
                                    "start without --resume")
            resume = found[-1]
        state, checkpoint = read_checkpoint(resume, full=True)
        load_state_dict(model, state, strict=True, source=resume)
        start_iter = int(checkpoint["meta"]["iter"])
        saved_seed = int(checkpoint["meta"]["seed"])
        if seed is not None and seed != saved_seed:
            logger.warning("--seed %d ignored: resuming the run seeded %d", seed, saved_seed)
        seed = saved_seed
        logger.info("resumed from %s at iteration %d", resume, start_iter)
    else:
        if cfg.model.backbone.pretrained:
            _load_backbone_init(model, cfg.model.backbone.pretrained)
        if load_from is not None:
            state, _ = read_checkpoint(load_from)
            load_state_dict(model, state, strict=True, source=load_from)
            logger.info("weights loaded from %s", load_from)
    if seed is None:
        seed = cfg.seed
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2 ** 31))
        if world > 1:
            seed = int(jt.array(np.array([seed])).mpi_broadcast(0).numpy()[0])
        logger.info("no seed given; using seed %d (pass --seed %d to repeat this run)", seed, seed)

    if world > 1:  # every rank starts from rank 0's weights, whatever its seed
        for var in model.state_dict().values():
            var.assign(var.mpi_broadcast(0))
        jt.sync_all()
    optimizer = build_optimizer(model, cfg.optimizer)
    base_lr = cfg.optimizer.lr
    # the first value is the base lr (lr_mult 1), logged; the others are the groups'
    schedule = LrSchedule(cfg.scheduler, max_iters, [base_lr] + initial_lrs(optimizer, base_lr))
    if checkpoint is not None:
        _restore_optimizer(optimizer, checkpoint["optimizer"], resume)
    scaler = None
    if train_cfg.amp:
        if not jt.flags.use_cuda:
            raise TrainingError("train.amp=true needs a CUDA GPU (Jittor computes in float16 "
                                "only there); set train.amp=false to train in float32")
        scaler = DynamicLossScaler()
        if checkpoint is not None and "amp" in checkpoint:
            scaler.load_state_dict(checkpoint["amp"])
        logger.info("mixed precision on: fp16 compute, loss scale %g", scaler.scale)
    loader = build_train_loader(cfg, seed=seed)
    val_loader = None
    last_eval = None
    model.train()
    logger.info("training %s for %d iterations (from %d), global batch %d on %d process(es), "
                "seed %d", cfg.name, max_iters, start_iter, cfg.data.batch_size, world, seed)

    bar = tqdm(total=max_iters, initial=start_iter, desc="train", unit="it",
               disable=not (progress and is_main), dynamic_ncols=True)
    window = []
    t_last = time.time()
    try:
        batches = loader.iter_from(start_iter, max_iters - start_iter)
        for it in range(start_iter, max_iters):
            t0 = time.time()
            batch = next(batches)
            data_time = time.time() - t0
            lrs = schedule.values(it)
            lr = lrs[0]
            set_lr(optimizer, lrs[1:])
            jt.set_seed(iteration_seed(seed, it, rank))
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
                raise TrainingError(
                    f"the loss is {loss_value} at iteration {it + 1}; stopping. The last good "
                    f"checkpoint in {ckpt_dir} is untouched: lower optimizer.lr, set "
                    "optimizer.grad_clip, or check the data, then --resume from it")
            if scaler is not None and scaler.unscale(optimizer):
                logger.warning("iteration %d: fp16 gradients overflowed; step skipped, loss "
                               "scale lowered to %g", it + 1, scaler.scale)
            else:
                if cfg.optimizer.grad_clip is not None:
                    clip_grad_norm(optimizer, cfg.optimizer.grad_clip)
                optimizer.step()
            done = it + 1
            bar.update(1)
            window.append(loss_value)

            if done % train_cfg.log_interval == 0 or done == max_iters:
                values = {k: float(v.item()) for k, v in losses.items()}
                if world > 1:
                    values = {k: float(jt.array(np.array([v])).mpi_all_reduce("mean").item())
                              for k, v in values.items()}
                now = time.time()
                record = {"mode": "train", "iter": done, "lr": lr, "loss": loss_value,
                          "loss_avg": float(np.mean(window)), **values,
                          "time": (now - t_last) / len(window), "data_time": data_time,
                          "memory_mb": _memory_mb()}
                t_last, window = now, []
                run_log.record(**record)
                logger.info("iter %d/%d lr %.3e loss %.4f (avg %.4f) %s time %.3fs data %.3fs "
                            "mem %dMB", done, max_iters, lr, loss_value, record["loss_avg"],
                            " ".join(f"{k} {v:.4f}" for k, v in values.items()),
                            record["time"], data_time, record["memory_mb"])
                bar.set_postfix(loss=f"{loss_value:.3f}", lr=f"{lr:.2e}")

            if is_main and (done % train_cfg.checkpoint_interval == 0 or done == max_iters):
                path = os.path.join(ckpt_dir, f"iter_{done:08d}.pkl")
                save_training_checkpoint(path, model, optimizer, done, seed, cfg, scaler)
                _prune_checkpoints(ckpt_dir, train_cfg.keep_checkpoints)
                logger.info("checkpoint saved: %s", path)

            interval = train_cfg.eval_interval
            if (interval > 0 and done % interval == 0) or done == max_iters:
                if val_loader is None:
                    val_loader = build_val_loader(cfg, rank=rank, world_size=world)
                last_eval = run_evaluation(cfg, model, val_loader, run_log, done, progress)
                model.train()
    except KeyboardInterrupt:
        logger.error("interrupted; the newest complete checkpoint in %s can be resumed with "
                     "--resume auto", ckpt_dir)
        raise
    finally:
        bar.close()
        loader.close()
    return last_eval


def run_evaluation(cfg, model, loader, run_log=None, iteration=None, progress=True,
                   on_prediction=None):
    """Evaluate on `loader`, log the per-class table and the summary; returns the result dict."""
    from jseg.data.datasets import dataset_settings

    head = cfg.model.decode_head
    acc, seconds = evaluate(model, loader, head.num_classes, head.ignore_index,
                            on_prediction=on_prediction, progress=progress)
    result = acc.compute()
    classes = dataset_settings(cfg.data)["classes"]
    logger.info("evaluation%s on %d images (%.1fs):\n%s",
                f" at iteration {iteration}" if iteration else "", len(loader), seconds,
                format_table(result, classes))
    if run_log is not None:
        run_log.record(mode="val", iter=iteration, aAcc=result["aAcc"], mIoU=result["mIoU"],
                       mAcc=result["mAcc"],
                       IoU={c: (None if np.isnan(v) else float(v))
                            for c, v in zip(classes, result["IoU"])})
    return result
