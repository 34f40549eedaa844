"""The training run's records: its text log and metrics.jsonl in the work dir (`RunLog`),
and the loop's measurements and log lines (`Meter`). Rank 0 writes; a full disk warns once
and the console keeps logging."""
import collections
import contextlib
import json
import logging
import logging.handlers
import os
import resource
import statistics
import time

import jittor as jt
import numpy as np

from jseg.utils.atomic import atomic_write

__all__ = ["RunLog", "Meter", "HEARTBEAT_SECONDS"]

logger = logging.getLogger("jseg")

HEARTBEAT_SECONDS = 30  # a progress line at least this often, whatever log_interval says


def memory_mb():
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


class RunLog:
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
            drop_records_after(path, start_iter)
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


def drop_records_after(path, iteration):
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


class Meter:
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
                      "memory_mb": memory_mb()}
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
