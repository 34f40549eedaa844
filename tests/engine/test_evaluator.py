"""jseg/engine/evaluator.py: predict_image's chunked restore, argmax and softmax sum give
what restoring every class at once gives, for one view and for several (multi-scale + flip);
evaluations log the chosen metrics, record them in metrics.jsonl and write the confusion
matrix into the work dir."""
import os
from types import SimpleNamespace

import numpy as np
import pytest

import jseg  # noqa: F401  (configures Jittor)
from jseg.data.transforms import restore_prediction
from jseg.engine import evaluator


class FixedLogits:
    """A stand-in model whose `inference` returns given (C, h, w) logits, one per call."""

    def __init__(self, logits):
        self.logits = list(logits)

    def inference(self, img):
        import jittor as jt
        return jt.array(self.logits.pop(0)[None])


def reference(logits, metas):
    """All classes restored at once, softmax per view (several views), summed: mmseg's way."""
    scores = [restore_prediction(l, m) for l, m in zip(logits, metas)]
    if len(scores) == 1:
        return scores[0].argmax(axis=0), None
    probs = [np.exp(s - s.max(axis=0)) / np.exp(s - s.max(axis=0)).sum(axis=0) for s in scores]
    total = sum(probs)
    return total.argmax(axis=0), total / len(probs)


@pytest.mark.parametrize("classes,view,original", [(150, (24, 32), (61, 83)),
                                                   (6, (8, 8), (300, 200))])
@pytest.mark.parametrize("num_views", [1, 3])
def test_chunked_prediction_equals_restoring_all_classes(classes, view, original, num_views,
                                                         monkeypatch):
    rng = np.random.default_rng(classes + num_views)
    h, w = view
    logits = [rng.normal(size=(classes, h, w)).astype(np.float32) * 3 for _ in range(num_views)]
    metas = [{"img_shape": (h - 2, w), "ori_shape": original, "flip": v == 1}
             for v in range(num_views)]
    views = [{"img": np.zeros((1, 3, h, w), np.float32), "meta": m} for m in metas]
    from jseg.data import predictions
    monkeypatch.setattr(predictions, "_CHUNK_ELEMENTS", 7 * original[0] * original[1])  # 7 classes
    expected, expected_probs = reference(logits, metas)
    pred = evaluator.predict_image(FixedLogits(logits), views)
    assert pred.shape == original and pred.dtype == np.int64, (pred.shape, pred.dtype)
    agree = (pred == expected).mean()
    assert agree == 1.0, f"{agree:.6f} of the pixels agree"
    pred, probs = evaluator.predict_image(FixedLogits(logits), views, return_probs=True)
    assert probs.shape == (classes, *original) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=1e-5)
    if expected_probs is not None:
        worst = float(np.abs(probs - expected_probs).max())
        assert worst <= 1e-6, f"probabilities differ by up to {worst}"
    assert (pred == expected).mean() == 1.0


def test_training_and_val_write_the_chosen_metrics_and_the_confusion_matrix(demo_root,
                                                                           tmp_path):
    """End to end on the tiny model: a 2-iteration training evaluates at its end, then
    evaluate_weights (what --task val runs) evaluates its checkpoint. Both log the table
    with the chosen metrics' columns and write the confusion matrix (counts of every
    labelled pixel) and its heat map into the work dir; metrics.jsonl holds the means and
    the per-class values."""
    import json
    import logging

    import cv2
    from conftest import DEMO_CONFIG, TINY_OVERRIDES
    from jseg.config import load_config
    from jseg.data.loader import build_val_loader
    from jseg.engine.trainer import train

    cfg = load_config(DEMO_CONFIG, TINY_OVERRIDES + [
        f"data.data_root={demo_root}", f"work_dir={tmp_path}", "train.max_iters=2",
        "train.checkpoint_interval=2", "evaluation.metrics=[mIoU,mDice,mFscore]"])
    labelled = sum(int((item["seg"] != 255).sum()) for item in build_val_loader(cfg))
    jseg_logger = logging.getLogger("jseg")
    level = jseg_logger.level
    jseg_logger.setLevel(logging.INFO)  # as tools/run_net.py's setup_logging
    try:
        result = train(cfg, seed=7, progress=False)
        val_result, count = evaluator.evaluate_weights(cfg, "auto", progress=False)
    finally:
        jseg_logger.setLevel(level)
    n = cfg.model.decode_head.num_classes
    for res, name in ((result, "confusion_matrix_iter_00000002"), (val_result, "confusion_matrix")):
        counts = np.load(tmp_path / f"{name}.npy")
        assert counts.shape == (n, n) and counts.dtype == np.int64, (counts.shape, counts.dtype)
        assert counts.sum() == labelled, f"{name}: {counts.sum()} counts, {labelled} labelled"
        np.testing.assert_array_equal(res["confusion_matrix"], counts)
        image = cv2.imread(str(tmp_path / f"{name}.png"))
        assert image is not None and image.shape[0] > 100, name
        for key in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall"):
            assert key in res and (np.isnan(res[key]) or 0 <= res[key] <= 100), (key, res)
    assert count == 2

    log = next(tmp_path.glob("train_*.log")).read_text()
    header = next(l for l in log.splitlines() if l.startswith("| ") and "Class" in l)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns == ["Class", "IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"], header
    assert "mDice" in log and "mFscore" in log and "confusion_matrix_iter_00000002.npy" in log
    with open(tmp_path / "metrics.jsonl") as f:
        val = [r for r in map(json.loads, f) if r["mode"] == "val"]
    assert len(val) == 1 and val[0]["iter"] == 2, val
    classes = list(cfg.data.classes)
    for key in ("mIoU", "mDice", "mFscore", "mPrecision", "mRecall"):
        assert val[0][key] == (None if np.isnan(result[key]) else pytest.approx(result[key])), key
    for key in ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"):
        assert list(val[0][key]) == classes, (key, val[0][key])
    assert val[0]["confusion_matrix"] == "confusion_matrix_iter_00000002.npy", val[0]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_no_confusion_matrix_when_switched_off(tmp_path):
    """evaluation.confusion_matrix=false: the metrics, and no file."""
    from conftest import DEMO_CONFIG
    from jseg.config import load_config

    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(6, 8, 8)).astype(np.float32)]
    meta = {"img_shape": (8, 8), "ori_shape": (8, 8), "flip": False}
    loader = [{"views": [{"img": np.zeros((1, 3, 8, 8), np.float32), "meta": meta}],
               "seg": rng.integers(0, 6, size=(8, 8)), "img_path": "x.jpg", "index": 0,
               "key": (0, 0, 0, 0)}]
    for switch in ("false", "true"):
        cfg = load_config(DEMO_CONFIG, [f"work_dir={tmp_path / switch}",
                                        f"evaluation.confusion_matrix={switch}"])
        model = FixedLogits(list(logits))
        model.is_training, model.eval = (lambda: False), (lambda: None)
        # what the evaluator sets per image: the NMF's bases_fn and the number of draws
        model.decode_head = SimpleNamespace(hamburger=SimpleNamespace(
            ham=SimpleNamespace(bases_fn=None)))
        model.nmf_draws = 1
        result = evaluator.run_evaluation(cfg, model, loader, progress=False)
        assert result["confusion_matrix"].sum() == 64, result["confusion_matrix"]
        written = sorted(os.listdir(tmp_path / switch)) if (tmp_path / switch).exists() else []
        want = ["confusion_matrix.npy", "confusion_matrix.png"] if switch == "true" else []
        assert written == want, (switch, written)
