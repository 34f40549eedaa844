"""A training run's work dir: one training at a time, and no run loses another's checkpoints.

    <work_dir>/config.yaml  train_<time>.log  metrics.jsonl  .train.lock
    <work_dir>/checkpoints/iter_XXXXXXXX.pkl
    <work_dir>/confusion_matrix_iter_XXXXXXXX.{npy,png}  (see jseg.engine.evaluator)

- One training per work dir: an exclusive `flock` on `.train.lock`, which the kernel drops
  however the holder ends; a second run is refused, naming the holder. Under the lock,
  temporary files that an interrupted atomic write left are removed.
- A checkpoint is never overwritten or deleted by a run that did not write it: a fresh run
  refuses a folder that already holds checkpoints, a resumed run one holding checkpoints
  from after its starting point, and pruning (`train.keep_checkpoints`) removes only files
  of the run's own lineage (the file names it and the runs it resumed wrote and still keep,
  stored in every checkpoint's meta). Details: docs/training.md.
"""
import fcntl
import logging
import os
import socket
import time

from jseg.utils.atomic import stale_temp_files

from jseg.checkpoint import checkpoint_iteration, checkpoint_name, find_checkpoints

__all__ = ["WorkDirError", "WorkDir", "CheckpointKeeper"]

logger = logging.getLogger("jseg")


class WorkDirError(RuntimeError):
    """The work dir is in use or holds checkpoints a run would overwrite; the message says what to do."""


def _names(paths, limit=4):
    names = [os.path.basename(p) for p in paths]
    return ", ".join(names[:limit]) + (f" ... ({len(names)} in all)" if len(names) > limit else "")


class WorkDir:
    """The folder of one training run (see the module docstring)."""

    LOCK_NAME = ".train.lock"

    def __init__(self, path):
        self.path = os.fspath(path)
        self.ckpt_dir = os.path.join(self.path, "checkpoints")
        self._lock_fd = None

    def checkpoints(self):
        """Paths of the training checkpoints in the folder, oldest (lowest iteration) first."""
        return find_checkpoints(self.ckpt_dir)

    def newest_checkpoint(self):
        """What resume=auto (or weights 'auto') means: the newest checkpoint here."""
        found = self.checkpoints()
        if not found:
            raise WorkDirError(f"resume=auto: no checkpoint in {self.ckpt_dir}; start without "
                               "resuming, or give a checkpoint's path")
        return found[-1]

    # -- one training at a time --------------------------------------------

    def lock(self):
        """Take the folder's training lock, or raise WorkDirError naming its holder."""
        os.makedirs(self.path, exist_ok=True)
        lock_path = os.path.join(self.path, self.LOCK_NAME)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 4096).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise WorkDirError(f"work dir {self.path} is in use by another training ({holder}); "
                               "wait for it to finish, or train into another work_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        self._lock_fd = fd

    def unlock(self):
        # The lock file stays: deleting it would let a process that opened it just before
        # lock the old, unlinked file while a third one locks a new one.
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        self.lock()
        return self

    def __exit__(self, *exc):
        self.unlock()

    def remove_stale_temp_files(self):
        """Delete what interrupted atomic writes left here (only while holding the lock)."""
        assert self._lock_fd is not None, "remove_stale_temp_files needs the work dir lock"
        stale = stale_temp_files(self.path) + stale_temp_files(self.ckpt_dir)
        size = 0
        for path in stale:
            try:
                size += os.path.getsize(path)
                os.remove(path)
            except FileNotFoundError:
                pass
        if stale:
            logger.info("removed %d temporary file(s) (%.1f MB) left by an interrupted run: %s",
                        len(stale), size / 2 ** 20, _names(stale))

    # -- checks before a run writes anything --------------------------------

    def check_fresh_start(self):
        """A run that does not resume must not share its checkpoint folder with another run."""
        found = self.checkpoints()
        if found:
            raise WorkDirError(
                f"{self.ckpt_dir} already holds {len(found)} checkpoint(s) of an earlier run "
                f"({_names(found)}); a new run there could overwrite or prune them. Continue "
                "that run (resume=auto), or give this one another work_dir, or move those "
                "files away")

    def check_resume(self, iteration):
        """A run resumed at `iteration` must not overwrite checkpoints from after it."""
        later = [p for p in self.checkpoints() if checkpoint_iteration(p) > iteration]
        if later:
            raise WorkDirError(
                f"{self.ckpt_dir} holds checkpoint(s) from after iteration {iteration}, where "
                f"this run resumes ({_names(later)}); going on from there would overwrite or "
                "prune them. Resume from the newest (resume=auto), resume into another "
                "work_dir, or move the later files away")


class CheckpointKeeper:
    """The checkpoints of this run's lineage in one folder; pruning touches only these.

    owned: base names of checkpoints in `ckpt_dir` that this run's lineage wrote (from
    the resumed checkpoint's meta); files of other runs are never in it.
    """

    def __init__(self, ckpt_dir, keep, owned=()):
        self.ckpt_dir = ckpt_dir
        self.keep = int(keep)
        self.owned = sorted(n for n in owned
                            if os.path.isfile(os.path.join(ckpt_dir, n)))

    def path(self, iteration):
        return os.path.join(self.ckpt_dir, checkpoint_name(iteration))

    @property
    def newest(self):
        """Path of the newest checkpoint of the lineage, or None."""
        return os.path.join(self.ckpt_dir, self.owned[-1]) if self.owned else None

    def lineage_after(self, path):
        """The names to record in the meta of the checkpoint about to be written at `path`."""
        name = os.path.basename(path)
        return sorted(set(self.owned) | {name})

    def saved(self, path):
        """Record a checkpoint this run wrote, then delete the lineage's oldest beyond `keep`
        (0 keeps all)."""
        self.owned = self.lineage_after(path)
        if self.keep > 0:
            for name in self.owned[:-self.keep]:
                try:
                    os.remove(os.path.join(self.ckpt_dir, name))
                except FileNotFoundError:
                    pass
            self.owned = self.owned[-self.keep:]
