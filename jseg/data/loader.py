"""Batches for training and evaluation, reproducible across workers and MPI ranks.

Training draws an endless stream of samples: epoch e is a permutation of the dataset made
from (seed, e) and the stream is epoch 0, then epoch 1, ...; global batch `it` holds stream
positions [it * B, (it + 1) * B). A batch may cross an epoch boundary, so every batch is
full and the position of the run is the iteration alone (`iter_from(start_iter)` resumes
exactly). Each sample's augmentation uses its own Generator seeded by (seed, epoch, index),
so the batches are the same bytes whatever the number of worker processes. Under MPI each
rank takes its contiguous slice of every global batch (rank r gets items r*B/W ..
(r+1)*B/W - 1; rank and world size from `get_dist_info()`); the slices of all ranks put
together are the single-process batch. An unreadable sample: see `TrainLoader`.

Evaluation (`ValLoader`) yields one image at a time, in dataset order, with the original
label map and the meta data needed to bring predictions back to the original size.
"""
import collections
import logging
import multiprocessing as mp
import os
import sys

import numpy as np

from .datasets import DataError, build_dataset, image_key, load_rgb
from .transforms import build_test_pipeline, build_train_pipeline, build_tta_pipelines

__all__ = ["get_dist_info", "random_seed", "sample_rng", "epoch_permutation", "TrainLoader", "ValLoader",
           "build_train_loader", "build_val_loader", "make_views", "test_pipelines",
           "image_views"]

logger = logging.getLogger(__name__)

_SHUFFLE = 0x5EED  # stream tag: keeps shuffle seeds apart from per-sample seeds
_WORKER_TIMEOUT = 600  # seconds; a worker killed by the OS never answers


def get_dist_info():
    """(rank, world_size): Jittor's when running under MPI, else (0, 1)."""
    jt = sys.modules.get("jittor")
    if jt is None and any(k in os.environ for k in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")):
        import jittor as jt  # under mpirun Jittor knows the rank
    if jt is not None and getattr(jt, "in_mpi", False):
        return int(jt.rank), int(jt.world_size)
    return 0, 1


def sample_rng(seed, epoch, index):
    """The Generator that augments sample `index` in `epoch` of a run seeded with `seed`."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


def epoch_permutation(seed, epoch, n, shuffle=True):
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([int(seed), int(epoch), _SHUFFLE]).permutation(n)


# ---------------------------------------------------------------------------
# Work done per sample, in the main process or a worker.

_WORKER = {}


def _init_worker(dataset, pipeline, on_bad_sample):
    import signal

    import cv2
    # Ctrl-C in a terminal reaches the whole process group: the main process decides (the
    # trainer stops after its step), the workers go on until it closes the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    cv2.setNumThreads(1)  # the workers are the parallelism
    _WORKER.update(dataset=dataset, pipeline=pipeline, on_bad_sample=on_bad_sample)


def _train_sample(dataset, pipeline, on_bad_sample, seed, epoch, index):
    """Read + augment one sample; returns (img CHW float32, seg int32, index used, skipped)."""
    skipped = []
    n = len(dataset)
    for attempt in range(n):
        j = (index + attempt) % n
        try:
            sample = dataset[j]
        except DataError as e:
            if on_bad_sample != "skip":
                raise
            skipped.append(str(e))
            continue
        if sample["seg"] is None:
            raise DataError(f"training sample {sample['img_path']} has no label map "
                            f"(the dataset has no ann_dir)")
        out = pipeline(sample, sample_rng(seed, epoch, index))
        img = np.ascontiguousarray(out["img"].transpose(2, 0, 1), dtype=np.float32)
        return img, out["seg"].astype(np.int32), j, skipped
    raise DataError(f"every one of the {n} samples of {dataset!r} failed to load; first: "
                    f"{skipped[0] if skipped else '?'}")


def _train_task(args):
    w = _WORKER
    return _train_sample(w["dataset"], w["pipeline"], w["on_bad_sample"], *args)


def make_views(sample, pipelines):
    """Run every test pipeline on `sample` ({img (H, W, 3) uint8, ori_shape, ...}).

    Returns [{img (1, 3, h, w) float32, meta {ori_shape, img_shape, pad_shape,
    scale_factor, flip}}], one per pipeline (several for multi-scale + flip).
    """
    views = []
    for p in pipelines:
        out = p(dict(sample), None)
        img = np.ascontiguousarray(out["img"].transpose(2, 0, 1)[None], dtype=np.float32)
        meta = {k: out[k] for k in ("ori_shape", "img_shape", "pad_shape", "scale_factor", "flip")}
        views.append({"img": img, "meta": meta})
    return views


def test_pipelines(cfg, tta=False):
    """The test pipeline of a full config, or with tta its multi-scale + flip views
    (cfg.model.test_cfg's tta_ratios and tta_flip)."""
    if not tta:
        return [build_test_pipeline(cfg["data"])]
    test_cfg = cfg["model"]["test_cfg"]
    return build_tta_pipelines(cfg["data"], test_cfg["tta_ratios"], test_cfg["tta_flip"])


def image_views(img, pipelines):
    """(rgb (H, W, 3) uint8, make_views of it) for an image path or RGB array (load_rgb)."""
    rgb = load_rgb(img)
    return rgb, make_views({"img": rgb, "ori_shape": rgb.shape[:2]}, pipelines)


def _val_sample(dataset, pipelines, index):
    sample = dataset[index]
    seg = sample.pop("seg")
    views = make_views(sample, pipelines)
    return {"img": views[0]["img"], "meta": views[0]["meta"], "views": views,
            "seg": None if seg is None else seg.astype(np.int32),
            "ori_shape": sample["ori_shape"], "img_path": sample["img_path"],
            "seg_path": sample["seg_path"], "index": index, "key": image_key(sample["img"])}


def _val_task(index):
    return _val_sample(_WORKER["dataset"], _WORKER["pipeline"], index)


class _Pool:
    """A process pool whose workers hold the dataset and pipeline (sent once)."""

    def __init__(self, num_workers, dataset, pipeline, on_bad_sample, start_method=None):
        # Not "fork": a child forked after OpenCV or Jittor started their thread pools can
        # deadlock in its first OpenCV call (seen: cv2.setNumThreads hung in a worker).
        methods = mp.get_all_start_methods()
        method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        ctx = mp.get_context(method)
        self.pool = ctx.Pool(num_workers, initializer=_init_worker,
                             initargs=(dataset, pipeline, on_bad_sample))

    def submit(self, fn, args):
        return self.pool.apply_async(fn, (args,))

    def result(self, job, timeout=_WORKER_TIMEOUT):
        try:
            return job.get(timeout)
        except mp.TimeoutError:
            raise RuntimeError(f"a data worker gave no result in {timeout} s; it may have been "
                               f"killed (out of memory?); try fewer data.num_workers") from None

    def close(self):
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


# ---------------------------------------------------------------------------

class TrainLoader:
    """Endless, shuffled, augmented training batches for this rank.

    Each batch is a dict: img (n, 3, H, W) float32, seg (n, H, W) int32, indices
    (n,) dataset indices actually used, epoch (the epoch of the batch's first
    sample) and iter; n = batch_size / world_size.

    A sample that cannot be read (`DataError`) stops the run, naming the file
    (on_bad_sample "fail"), or (on_bad_sample "skip") is replaced by the next readable
    sample in dataset order, augmented with the bad sample's own seed; the replacement is
    logged.
    """

    def __init__(self, dataset, pipeline, batch_size, *, seed=0, num_workers=0, shuffle=True,
                 on_bad_sample="fail", rank=None, world_size=None, prefetch=2,
                 start_method=None):
        if on_bad_sample not in ("fail", "skip"):
            raise ValueError(f"on_bad_sample must be 'fail' or 'skip', got {on_bad_sample!r}")
        if rank is None or world_size is None:
            r, ws = get_dist_info()
            rank = r if rank is None else rank
            world_size = ws if world_size is None else world_size
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"the global batch size {batch_size} must be a positive multiple of "
                             f"the number of processes {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if len(dataset) == 0:
            raise DataError(f"{dataset!r} is empty")
        self.dataset, self.pipeline = dataset, pipeline
        self.batch_size, self.seed, self.shuffle = batch_size, int(seed), shuffle
        self.num_workers, self.on_bad_sample = num_workers, on_bad_sample
        self.rank, self.world_size = rank, world_size
        self.local_batch_size = batch_size // world_size
        self.prefetch = max(1, prefetch)
        self._start_method = start_method
        self._pools = set()
        self._perms = collections.OrderedDict()  # a few recent epoch permutations

    @property
    def iters_per_epoch(self):
        """Global batches per pass over the dataset (the last one may continue into the next)."""
        return -(-len(self.dataset) // self.batch_size)

    def _perm(self, epoch):
        if epoch not in self._perms:
            self._perms[epoch] = epoch_permutation(self.seed, epoch, len(self.dataset),
                                                   self.shuffle)
            while len(self._perms) > 3:
                self._perms.popitem(last=False)
        return self._perms[epoch]

    def global_samples(self, it):
        """[(epoch, dataset index)] of the whole global batch `it`, in order."""
        n = len(self.dataset)
        out = []
        for pos in range(it * self.batch_size, (it + 1) * self.batch_size):
            epoch = pos // n
            out.append((epoch, int(self._perm(epoch)[pos % n])))
        return out

    def local_samples(self, it):
        """This rank's slice of `global_samples(it)`."""
        k = self.local_batch_size
        return self.global_samples(it)[self.rank * k:(self.rank + 1) * k]

    def _collate(self, it, results):
        imgs, segs, used = [], [], []
        for (img, seg, j, skipped), (epoch, index) in zip(results, self.local_samples(it)):
            for msg in skipped:
                logger.warning("skipping a bad training sample (epoch %d, index %d): %s",
                               epoch, index, msg)
            imgs.append(img)
            segs.append(seg)
            used.append(j)
        shapes = {i.shape for i in imgs}
        if len(shapes) > 1:
            raise ValueError(f"training samples of batch {it} differ in size {sorted(shapes)}; "
                             f"the pipeline must pad every sample to the crop size")
        return {"img": np.stack(imgs), "seg": np.stack(segs), "indices": np.array(used),
                "epoch": self.local_samples(it)[0][0], "iter": it}

    def batch(self, it):
        """Batch `it` computed in this process (no workers)."""
        results = [_train_sample(self.dataset, self.pipeline, self.on_bad_sample, self.seed, e, i)
                   for e, i in self.local_samples(it)]
        return self._collate(it, results)

    def iter_from(self, start_iter=0, num_iters=None):
        """Yield batches start_iter, start_iter + 1, ... (forever unless num_iters is given)."""
        stop = None if num_iters is None else start_iter + num_iters
        if self.num_workers <= 0:
            it = start_iter
            while stop is None or it < stop:
                yield self.batch(it)
                it += 1
            return
        # Each iteration owns its pool: abandoning it (break, error) drops only its work.
        pool = _Pool(self.num_workers, self.dataset, self.pipeline, self.on_bad_sample,
                     self._start_method)
        self._pools.add(pool)
        pending = collections.deque()
        next_submit = start_iter
        try:
            while True:
                while len(pending) < self.prefetch and (stop is None or next_submit < stop):
                    jobs = [pool.submit(_train_task, (self.seed, e, i))
                            for e, i in self.local_samples(next_submit)]
                    pending.append((next_submit, jobs))
                    next_submit += 1
                if not pending:
                    return
                it, jobs = pending.popleft()
                yield self._collate(it, [pool.result(j) for j in jobs])
        finally:
            pool.close()
            self._pools.discard(pool)

    def __iter__(self):
        return self.iter_from(0)

    def close(self):
        """Stop the worker processes of any unfinished iteration."""
        for pool in list(self._pools):
            pool.close()
        self._pools.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class ValLoader:
    """Evaluation samples one by one, in dataset order (this rank's share when sharded).

    Each item: img (1, 3, h, w) float32 and meta {ori_shape, img_shape, pad_shape,
    scale_factor, flip} of the first view; views (one {img, meta} per test pipeline,
    several for multi-scale + flip); seg (H, W) int32 original labels (None without
    labels); ori_shape, img_path, seg_path, index; key (`image_key` of the decoded image,
    which chooses its NMF bases). With world_size W, rank r takes
    indices r, r + W, r + 2W, ...
    """

    def __init__(self, dataset, pipelines, *, num_workers=0, rank=0, world_size=1, prefetch=4,
                 start_method=None):
        self.dataset = dataset
        self.pipelines = list(pipelines) if isinstance(pipelines, (list, tuple)) else [pipelines]
        self.num_workers = num_workers
        self.indices = list(range(rank, len(dataset), world_size))
        self.prefetch = max(1, prefetch)
        self._start_method = start_method

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        if self.num_workers <= 0:
            for i in self.indices:
                yield _val_sample(self.dataset, self.pipelines, i)
            return
        pool = _Pool(self.num_workers, self.dataset, self.pipelines, "fail", self._start_method)
        try:
            pending = collections.deque()
            todo = iter(self.indices)
            for i in todo:
                pending.append(pool.submit(_val_task, i))
                if len(pending) >= self.prefetch:
                    break
            while pending:
                item = pool.result(pending.popleft())
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(_val_task, nxt))
                yield item
        finally:
            pool.close()


def random_seed(world_size=1):
    """A fresh random seed in [0, 2**31); under MPI rank 0's, so that every rank agrees."""
    seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    if world_size > 1:
        import jittor as jt
        seed = int(jt.array(np.array([seed], np.int32)).mpi_broadcast(0).numpy()[0])
    return seed


def build_train_loader(cfg, seed=None, **kwargs):
    """The training loader of a full config (`cfg.data`, `cfg.seed`).

    seed: overrides cfg.seed; when both are None a random seed is drawn (rank 0's
    under MPI) and logged. kwargs go to TrainLoader (rank, world_size, start_method...).
    """
    data = cfg["data"]
    dataset = build_dataset(data, "train")
    pipeline = build_train_pipeline(data, ignore_index=255)
    seed = cfg.get("seed") if seed is None else seed
    if seed is None:
        rank, world = kwargs.get("rank"), kwargs.get("world_size")
        if rank is None or world is None:
            rank, world = get_dist_info()
        seed = random_seed(world)
        logger.info("no seed configured; data seed %d", seed)
    kwargs.setdefault("num_workers", data["num_workers"])
    kwargs.setdefault("on_bad_sample", data["on_bad_sample"])
    return TrainLoader(dataset, pipeline, data["batch_size"], seed=seed, **kwargs)


def build_val_loader(cfg, tta=False, **kwargs):
    """The validation loader of a full config; tta adds cfg.model.test_cfg's scales and flips."""
    data = cfg["data"]
    dataset = build_dataset(data, "val")
    pipelines = test_pipelines(cfg, tta)
    kwargs.setdefault("num_workers", data["num_workers"])
    return ValLoader(dataset, pipelines, **kwargs)
