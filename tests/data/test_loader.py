"""jseg.data.loader: same batches for any number of workers and ranks, exact resume, bad samples."""
import logging
import os

import cv2
import numpy as np
import pytest

from jseg.data import loader as loader_mod
from jseg.data.datasets import DataError, SegDataset
from jseg.data.loader import TrainLoader, ValLoader, get_dist_info
from jseg.data.transforms import build_test_pipeline, build_train_pipeline

N = 7  # samples; not a multiple of the batch size, so batches cross epochs
CFG = dict(img_scale=[32, 24], ratio_range=[0.5, 2.0], crop_size=[16, 16], cat_max_ratio=0.75,
           flip_prob=0.5, photometric_distortion=True, mean=[123.675, 116.28, 103.53],
           std=[58.395, 57.12, 57.375], to_rgb=True, test_scale=[32, 24], test_keep_ratio=True,
           size_divisor=16, size_divisor_mode="pad")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    for d in ("img", "ann"):
        os.makedirs(root / d)
    for i in range(N):
        rng = np.random.default_rng(i)
        h, w = (24, 32) if i % 3 else (30, 20)
        cv2.imwrite(str(root / f"img/{i}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        seg = (np.arange(w)[None] // 6 + np.arange(h)[:, None] // 8 + i) % 3
        cv2.imwrite(str(root / f"ann/{i}.png"), seg.astype(np.uint8))
    return SegDataset(str(root), "img", "ann", classes=("a", "b", "c"), img_suffix=".png")


def make(dataset, **kw):
    kw.setdefault("seed", 3)
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return TrainLoader(dataset, build_train_pipeline(CFG), kw.pop("batch_size", 4), **kw)


def assert_same(a, b, what):
    for k in ("img", "seg", "indices"):
        assert np.array_equal(a[k], b[k]), f"{what}: '{k}' differs"


def test_batches_and_epochs(dataset):
    ld = make(dataset)
    b = ld.batch(0)
    assert b["img"].shape == (4, 3, 16, 16) and b["img"].dtype == np.float32
    assert b["seg"].shape == (4, 16, 16) and b["seg"].dtype == np.int32
    stream = [ld.global_samples(it) for it in range(7)]  # 28 positions = 4 epochs of 7
    flat = [s for batch in stream for s in batch]
    for epoch in range(4):
        idx = sorted(i for e, i in flat if e == epoch)
        assert idx == list(range(N)), f"epoch {epoch} covers every sample once: {idx}"
    orders = [[i for e, i in flat if e == epoch] for epoch in range(4)]
    assert len({tuple(o) for o in orders}) > 1, "each epoch has its own order"
    assert make(dataset).global_samples(5) == stream[5], "same seed, same order"
    assert make(dataset, seed=4).global_samples(0) != stream[0], "another seed, another order"
    assert ld.iters_per_epoch == 2


def test_same_batches_with_and_without_workers(dataset):
    serial = list(make(dataset).iter_from(0, 3))
    with make(dataset, num_workers=2) as ld:
        parallel = list(ld.iter_from(0, 3))
    for it, (a, b) in enumerate(zip(serial, parallel)):
        assert_same(a, b, f"batch {it}, 0 vs 2 workers")
    assert len(parallel) == 3


def test_abandoned_iteration_does_not_disturb_another(dataset):
    serial = make(dataset)
    with make(dataset, num_workers=2) as ld:
        a = ld.iter_from(0)
        next(a)
        b = ld.iter_from(2)
        first = next(b)
        a.close()  # e.g. a loop left with break
        assert_same(next(b), serial.batch(3), "b after a was closed")
    assert_same(first, serial.batch(2), "b before")
    assert not ld._pools, "leaving the with-block stops the workers"


def test_resume_from_an_iteration(dataset):
    ld = make(dataset)
    first = list(ld.iter_from(0, 4))
    assert_same(next(ld.iter_from(3)), first[3], "iter_from(3)")
    assert [b["iter"] for b in first] == [0, 1, 2, 3]


def test_two_ranks_recombine_to_the_single_process_batch(dataset, monkeypatch):
    whole = make(dataset).batch(2)
    parts = []
    for rank in (0, 1):
        monkeypatch.setattr(loader_mod, "get_dist_info", lambda r=rank: (r, 2))
        ld = TrainLoader(dataset, build_train_pipeline(CFG), 4, seed=3)
        assert (ld.rank, ld.world_size, ld.local_batch_size) == (rank, 2, 2)
        parts.append(ld.batch(2))
    for k in ("img", "seg", "indices"):
        joined = np.concatenate([p[k] for p in parts])
        assert np.array_equal(joined, whole[k]), f"ranks 0+1 '{k}' != 1-rank batch"
    with pytest.raises(ValueError, match="multiple of the number of processes 3"):
        make(dataset, rank=0, world_size=3)


def test_dist_info_without_mpi():
    assert get_dist_info() == (0, 1)


def test_bad_sample_fail_or_skip(tmp_path, dataset, caplog):
    root = tmp_path / "bad"
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i in range(3):
        cv2.imwrite(str(root / f"img/{i}.png"), np.full((20, 20, 3), 9 * i, np.uint8))
        cv2.imwrite(str(root / f"ann/{i}.png"), np.full((20, 20), i % 2, np.uint8))
    (root / "img/1.png").write_bytes(b"garbage")
    ds = SegDataset(str(root), "img", "ann", classes=("a", "b"), img_suffix=".png")
    ld = TrainLoader(ds, build_train_pipeline(CFG), 3, seed=0, shuffle=False, rank=0,
                     world_size=1)
    with pytest.raises(DataError, match=r"img/1.png"):
        ld.batch(0)
    skip = TrainLoader(ds, build_train_pipeline(CFG), 3, seed=0, shuffle=False,
                       on_bad_sample="skip", rank=0, world_size=1)
    with caplog.at_level(logging.WARNING, logger="jseg.data.loader"):
        b = skip.batch(0)
    assert b["indices"].tolist() == [0, 2, 2], "bad sample 1 replaced by the next, sample 2"
    assert "img/1.png" in caplog.text, caplog.text
    assert_same(b, skip.batch(0), "skip is deterministic")
    with make(ds, batch_size=3, seed=0, shuffle=False, on_bad_sample="skip",
              num_workers=2) as par:
        assert_same(next(par.iter_from(0)), b, "skip with workers")


def test_val_loader_keeps_original_labels(dataset):
    pipe = build_test_pipeline(CFG)
    items = list(ValLoader(dataset, pipe))
    assert len(items) == N
    it = items[0]  # 30x20 into (32, 24): factor min(32/30, 24/20) -> 32x21, padded to 32x32
    assert it["img"].shape == (1, 3, 32, 32) and it["img"].dtype == np.float32, it["img"].shape
    assert it["meta"]["img_shape"] == (32, 21) and it["meta"]["ori_shape"] == (30, 20), it["meta"]
    assert it["seg"].shape == (30, 20) and it["seg"].dtype == np.int32
    assert it["index"] == 0 and it["img_path"].endswith("0.png")
    par = list(ValLoader(dataset, pipe, num_workers=2))
    assert all(np.array_equal(a["img"], b["img"]) for a, b in zip(items, par))
    shard = ValLoader(dataset, [pipe, pipe], rank=1, world_size=2)
    assert [x["index"] for x in shard] == [1, 3, 5] and len(next(iter(shard))["views"]) == 2
