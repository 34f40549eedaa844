"""Metrics from the confusion matrix against hand-computed cases, a brute-force count and
mmseg 1.x's IoUMetric (mIoU, mDice, mFscore)."""
import numpy as np
import pytest

from jseg.engine.metrics import METRICS, IoUAccumulator, format_summary, format_table


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
    a.merge(b)
    np.testing.assert_array_equal(whole.confusion, parts.confusion)
    np.testing.assert_array_equal(whole.confusion, a.confusion)
    np.testing.assert_array_equal(whole.areas, a.areas)


def test_bad_inputs():
    acc = IoUAccumulator(3)
    with pytest.raises(ValueError, match="shape"):
        acc.add(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"label values must lie in \[0, 3\)"):
        acc.add(np.zeros(2), np.array([0, 7]))
    with pytest.raises(ValueError, match=r"predicted classes must lie in \[0, 3\)"):
        acc.add(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"cannot merge a \(4, 4\) confusion matrix"):
        acc.merge(np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match="unknown metrics \\['mF1'\\]; valid ones are "
                                         "mIoU, mDice, mFscore"):
        acc.compute(["mIoU", "mF1"])


def test_confusion_matrix_is_the_brute_force_count_and_halves_add_up():
    rng = np.random.default_rng(1)
    preds = rng.integers(0, 6, size=(3, 13, 17))
    labels = rng.integers(0, 6, size=(3, 13, 17))
    labels[rng.random(labels.shape) < 0.2] = 255
    expected = np.zeros((6, 6), np.int64)
    for label, pred in zip(labels.ravel(), preds.ravel()):
        if label != 255:
            expected[label, pred] += 1  # rows: label, columns: prediction
    whole, first, second = IoUAccumulator(6), IoUAccumulator(6), IoUAccumulator(6)
    whole.add(preds, labels)
    first.add(preds[:, :7], labels[:, :7])
    second.add(preds[:, 7:], labels[:, 7:])
    first.merge(second.confusion)
    assert whole.confusion.dtype == np.int64
    np.testing.assert_array_equal(whole.confusion, expected)
    np.testing.assert_array_equal(first.confusion, expected)
    labelled = int((labels != 255).sum())
    assert expected.sum() == labelled, (expected.sum(), labelled)


def test_fscore_is_nan_where_mmseg_gives_nan_and_dice_is_zero():
    """mmseg's F-score formula gives nan for a class labelled and predicted, never at the
    same pixel (precision = recall = 0); Dice, the same quantity otherwise, gives 0."""
    acc = IoUAccumulator(3)
    acc.add(np.array([1, 0, 1, 2]), np.array([0, 1, 1, 2]))
    res = acc.compute(METRICS)
    assert res["Dice"][0] == 0.0 and np.isnan(res["Fscore"][0]), (res["Dice"], res["Fscore"])
    np.testing.assert_allclose(res["Fscore"][1:], res["Dice"][1:])
    # class 1: 1 of its 2 labelled and 1 of its 2 predicted pixels agree: Dice 50
    assert res["mFscore"] == pytest.approx((50 + 100) / 2), res["mFscore"]
    assert res["mDice"] == pytest.approx((0 + 50 + 100) / 3), res["mDice"]


def test_compute_gives_the_chosen_metrics_in_mmseg_order():
    acc = IoUAccumulator(2)
    acc.add(np.array([0, 1]), np.array([0, 1]))
    assert list(acc.compute()) == ["aAcc", "mIoU", "mAcc", "IoU", "Acc"]
    assert list(acc.compute(["mFscore", "mDice"])) == [
        "aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall",
        "IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"]


def test_table_lists_every_class():
    acc = IoUAccumulator(2)
    acc.add(np.array([0, 1]), np.array([0, 1]))
    text = format_table(acc.compute(), ["sky", "road"])
    assert "sky" in text and "road" in text and "mIoU 100.00" in text
    assert "Dice" not in text and "mDice" not in text, text


def test_table_has_the_columns_of_the_chosen_metrics():
    acc = IoUAccumulator(3)
    acc.add(np.array([0, 1, 1]), np.array([0, 1, 0]))
    text = format_table(acc.compute(METRICS), ["sky", "road", "car"])
    lines = text.splitlines()
    header = [c.strip() for c in lines[1].strip("|").split("|")]
    assert header == ["Class", "IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"], header
    car = [c.strip() for c in lines[5].strip("|").split("|")]
    assert car == ["car", "nan", "nan", "nan", "nan", "nan", "nan"], car
    assert lines[-1] == ("aAcc 66.67  mIoU 50.00  mAcc 75.00  mDice 66.67  mFscore 66.67  "
                         "mPrecision 75.00  mRecall 75.00"), lines[-1]
    assert lines[0] == lines[2] == lines[-2] and set(lines[0]) == {"+", "-"}, text


def _reference_or_skip():
    from jseg.diagnostics.parity import ReferenceUnavailable, import_reference
    try:
        return import_reference()
    except ReferenceUnavailable as e:
        pytest.skip(str(e))


def _random_split(rng, num_classes=8, images=5, shape=(9, 11)):
    """Predictions and labels with ignored pixels, class 7 never predicted, class 6 never
    labelled, class 5 in neither, class 4 labelled and predicted but never both at a pixel."""
    for _ in range(images):
        label = rng.integers(0, num_classes, size=shape)
        label[rng.random(shape) < 0.15] = 255
        label[(label == 6) | (label == 5)] = 255
        pred = rng.integers(0, num_classes, size=shape)
        pred[(pred == 7) | (pred == 5)] = 0
        pred[(label == 4) & (pred == 4)] = 3
        yield pred, label


def test_equal_to_mmseg_total_area_to_metrics():
    """Areas, every per-class value and every mean against mmseg 1.x's IoUMetric static
    methods, unrounded; tolerance 1e-6 (percent), nan exactly where mmseg has nan."""
    torch = _reference_or_skip().torch
    from mmseg.evaluation.metrics import IoUMetric

    n = 8
    ours = IoUAccumulator(n)
    theirs = np.zeros((4, n))
    for pred, label in _random_split(np.random.default_rng(3), n):
        ours.add(pred, label)
        areas = IoUMetric.intersect_and_union(torch.from_numpy(pred), torch.from_numpy(label),
                                              n, 255)
        theirs += np.stack([a.numpy() for a in areas])
    np.testing.assert_array_equal(ours.areas, theirs)
    ref = IoUMetric.total_area_to_metrics(*(torch.from_numpy(a) for a in theirs),
                                          metrics=list(METRICS))  # float64 areas
    res = ours.compute(METRICS)
    assert set(ref) == {k for k in res if not k.startswith("m")}, (sorted(ref), sorted(res))
    for key, value in ref.items():
        want = 100 * np.asarray(value, np.float64)
        got = np.asarray(res[key], np.float64)
        assert np.array_equal(np.isnan(got), np.isnan(want)), (key, got, want)
        worst = float(np.nanmax(np.abs(got - want), initial=0.0))
        assert worst <= 1e-6, f"{key}: ours {got} vs mmseg {want}, max difference {worst}"
        if key != "aAcc":
            with np.errstate(invalid="ignore"):
                mean = 100 * np.nanmean(value)
            assert abs(res[f"m{key}"] - mean) <= 1e-6, (f"m{key}", res[f"m{key}"], mean)
    assert np.isnan(res["IoU"][5]) and np.isnan(res["Acc"][6]) and res["Recall"][7] >= 0
    assert np.isnan(res["Precision"][7]) and np.isnan(res["Fscore"][4]), res


def test_equal_to_mmseg_iou_metric():
    """The same predictions and labels through mmseg 1.x's IoUMetric(iou_metrics=[mIoU,
    mDice, mFscore]).process / compute_metrics: its summary (rounded to 2 decimals) equals
    ours rounded the same way."""
    torch = _reference_or_skip().torch
    from mmseg.evaluation.metrics import IoUMetric

    n = 8
    metric = IoUMetric(iou_metrics=list(METRICS))
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(n)]}
    ours = IoUAccumulator(n)
    for pred, label in _random_split(np.random.default_rng(5), n):
        ours.add(pred, label)
        metric.process([], [{"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(label)[None]}}])
    theirs = metric.compute_metrics(metric.results)
    res = ours.compute(METRICS)
    summary = {k: v for k, v in res.items() if not isinstance(v, np.ndarray)}
    assert list(theirs) == list(summary), (list(theirs), list(summary))
    for key, value in theirs.items():
        assert np.round(summary[key], 2) == pytest.approx(value, abs=1e-9), \
            (key, summary[key], value)
    assert format_summary(res).split()[1::2] == [f"{v:.2f}" for v in theirs.values()]
