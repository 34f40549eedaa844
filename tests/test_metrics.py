"""IoU / accuracy accumulation against hand-computed cases."""
import numpy as np
import pytest

from jseg.engine.metrics import IoUAccumulator, format_table


def test_hand_computed_case_with_ignored_pixels():
    label = np.array([[0, 0, 1, 1],
                      [2, 2, 255, 255]])
    pred = np.array([[0, 1, 1, 1],
                     [2, 0, 2, 0]])
    acc = IoUAccumulator(3)
    acc.add(pred, label)
    # class 0: inter 1, pred {0,0}->2 (the 255 pixels do not count), label 2, union 3
    # class 1: inter 2, pred 3, label 2, union 3; class 2: inter 1, pred 1, label 2, union 2
    np.testing.assert_array_equal(acc.areas, [[1, 2, 1], [3, 3, 2], [2, 3, 1], [2, 2, 2]])
    res = acc.compute()
    np.testing.assert_allclose(res["IoU"], [100 / 3, 200 / 3, 50])
    np.testing.assert_allclose(res["Acc"], [50, 100, 50])
    assert res["aAcc"] == pytest.approx(100 * 4 / 6), res["aAcc"]
    assert res["mIoU"] == pytest.approx((100 / 3 + 200 / 3 + 50) / 3), res["mIoU"]
    assert res["mAcc"] == pytest.approx(200 / 3), res["mAcc"]


def test_absent_class_is_nan_and_left_out_of_the_means():
    acc = IoUAccumulator(3)
    acc.add(np.array([0, 0, 1]), np.array([0, 0, 1]))
    res = acc.compute()
    assert np.isnan(res["IoU"][2]) and np.isnan(res["Acc"][2])
    assert res["mIoU"] == 100.0 and res["mAcc"] == 100.0


def test_predicted_but_absent_class_counts_as_zero_iou():
    acc = IoUAccumulator(3)
    acc.add(np.array([0, 2]), np.array([0, 0]))
    res = acc.compute()
    assert res["IoU"][2] == 0.0 and np.isnan(res["Acc"][2])
    assert res["mIoU"] == pytest.approx(25.0), res["mIoU"]  # (50 + 0) / 2


def test_accumulating_per_image_equals_one_batch_and_merge_adds():
    rng = np.random.default_rng(0)
    preds = rng.integers(0, 5, size=(4, 6, 7))
    labels = rng.integers(0, 5, size=(4, 6, 7))
    labels[labels == 4] = 255
    whole, parts, a, b = (IoUAccumulator(5) for _ in range(4))
    whole.add(preds, labels)
    for p, l in zip(preds, labels):
        parts.add(p, l)
    a.add(preds[:2], labels[:2])
    b.add(preds[2:], labels[2:])
    a.merge(b.areas)
    np.testing.assert_array_equal(whole.areas, parts.areas)
    np.testing.assert_array_equal(whole.areas, a.areas)


def test_bad_inputs():
    acc = IoUAccumulator(3)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 3\)"):
        acc.add(np.zeros(2), np.array([0, 7]))


def test_table_lists_every_class():
    acc = IoUAccumulator(2)
    acc.add(np.array([0, 1]), np.array([0, 1]))
    text = format_table(acc.compute(), ["sky", "road"])
    assert "sky" in text and "road" in text and "mIoU 100.00" in text


def test_equal_to_mmseg_iou_metric():
    """Same predictions and labels through mmseg 1.x's IoUMetric (reference stack only)."""
    from jseg.diagnostics.parity import ReferenceUnavailable, import_reference
    try:
        ref = import_reference()
    except ReferenceUnavailable as e:
        pytest.skip(str(e))
    torch = ref.torch
    from mmseg.evaluation.metrics import IoUMetric

    rng = np.random.default_rng(3)
    names = [f"c{i}" for i in range(7)]
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": names}
    ours = IoUAccumulator(7)
    for _ in range(5):
        label = rng.integers(0, 7, size=(9, 11))
        label[rng.random((9, 11)) < 0.15] = 255
        label[label == 6] = 255  # class 6 never in the labels: nan IoU on both sides
        pred = rng.integers(0, 7, size=(9, 11))
        ours.add(pred, label)
        metric.process([], [{"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(label)[None]}}])
    theirs = metric.compute_metrics(metric.results)
    res = ours.compute()
    for key in ("aAcc", "mIoU", "mAcc"):
        assert round(res[key], 2) == pytest.approx(theirs[key], abs=1e-9), (key, res[key], theirs[key])
