"""Segmentation metrics as mmseg 1.x's IoUMetric, read off one confusion matrix.

The only state is the (num_classes, num_classes) int64 confusion matrix of the split
(rows: label, columns: prediction; pixels labelled ignore_index are left out), so memory
does not grow with the dataset; `add` can be called per image or per batch, and the
matrices of several processes simply add up (`merge`). mmseg's four areas per class are
read off it (`areas`): the intersection is the diagonal, the label area a row sum, the
prediction area a column sum. `compute` gives what mmseg's `total_area_to_metrics` gives,
in percent, unrounded (mmseg rounds to 2 decimals; `format_table` prints 2).
"""
import math

import numpy as np

__all__ = ["METRICS", "IoUAccumulator", "format_table", "format_summary"]

METRICS = ("mIoU", "mDice", "mFscore")  # mmseg's iou_metrics

# per-class values of each metric, in the order of mmseg's table (IoU and Acc always)
_CLASS_COLUMNS = {"mIoU": ("IoU", "Acc"), "mDice": ("Dice",),
                  "mFscore": ("Fscore", "Precision", "Recall")}
_SUMMARY = ("aAcc",) + tuple(f"m{c}" for cols in _CLASS_COLUMNS.values() for c in cols)


class IoUAccumulator:
    """Accumulates the confusion matrix of a split; see the module docstring."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, pred, label):
        """pred, label: integer arrays of the same shape (H, W) or (N, H, W)."""
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        keep = label != self.ignore_index
        pred = pred[keep].astype(np.int64)
        label = label[keep].astype(np.int64)
        n = self.num_classes
        if label.size and (label.min() < 0 or label.max() >= n):
            raise ValueError(f"label values must lie in [0, {n}) or be "
                             f"{self.ignore_index}; found {label.min()}..{label.max()}")
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"predicted classes must lie in [0, {n}); found "
                             f"{pred.min()}..{pred.max()}")
        self.confusion += np.bincount(label * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other):
        """Add the counts of another accumulator (or its confusion matrix), e.g. those of
        another process."""
        matrix = other.confusion if isinstance(other, IoUAccumulator) else np.asarray(other)
        if matrix.shape != self.confusion.shape:
            raise ValueError(f"cannot merge a {matrix.shape} confusion matrix into a "
                             f"{self.confusion.shape} one")
        self.confusion += matrix.astype(np.int64)

    @property
    def areas(self):
        """(4, num_classes) int64: intersection, union, prediction and label area per class,
        as mmseg's intersect_and_union summed over the split."""
        inter = np.diag(self.confusion)
        pred, label = self.confusion.sum(axis=0), self.confusion.sum(axis=1)
        return np.stack([inter, pred + label - inter, pred, label])

    def compute(self, metrics=("mIoU",), beta=1):
        """Dict of aAcc, the chosen means and the per-class arrays (percent, unrounded).

        metrics: a subset of METRICS, as mmseg's iou_metrics (mIoU is computed either way).
        Keys in order: aAcc, mIoU, mAcc[, mDice][, mFscore, mPrecision, mRecall], then the
        per-class arrays IoU, Acc[, Dice][, Fscore, Precision, Recall].

        As `IoUMetric.total_area_to_metrics` for `iou_metrics=metrics` (beta 1, nan_to_num
        None):
        - aAcc: the share of labelled pixels predicted right (pixel accuracy over all classes);
        - per class: IoU and Acc (always; Acc is the recall), Dice with mDice, Fscore,
          Precision and Recall with mFscore; nan where the denominator is 0 (a class absent
          from the labels and the predictions has IoU nan; one absent from the labels has
          Acc nan);
        - the means mIoU, mAcc, mDice, mFscore, mPrecision, mRecall: nan-means over the
          classes.
        """
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; valid ones are {', '.join(METRICS)}")
        inter, _, pred, label = self.areas.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_class = {"IoU": inter / (pred + label - inter), "Acc": inter / label}
            if "mDice" in metrics:
                per_class["Dice"] = 2 * inter / (pred + label)
            if "mFscore" in metrics:
                precision, recall = inter / pred, inter / label
                # mmseg's formula as it is: a class never predicted right (precision and
                # recall 0 or nan) has Fscore nan, left out of mFscore, where its Dice is 0
                per_class["Fscore"] = ((1 + beta ** 2) * precision * recall
                                       / (beta ** 2 * precision + recall))
                per_class["Precision"] = precision
                per_class["Recall"] = recall
        total = label.sum()
        result = {"aAcc": 100.0 * inter.sum() / total if total else math.nan}
        for name, values in per_class.items():
            result[f"m{name}"] = 100.0 * _nanmean(values)
        for name, values in per_class.items():
            result[name] = 100.0 * values
        return result


def _nanmean(values):
    """np.nanmean without its warning when every value is nan (then nan)."""
    return float(np.nanmean(values)) if not np.isnan(values).all() else math.nan


def format_summary(result):
    """'aAcc 89.10  mIoU 47.10  mAcc 55.20' and the other means that `result` holds."""
    return "  ".join(f"{k} {result[k]:.2f}" for k in _SUMMARY if k in result)


def format_table(result, class_names):
    """mmseg's per-class table (a column per per-class array of `result`, 2 decimals),
    then the summary line."""
    columns = ["Class"] + [c for cols in _CLASS_COLUMNS.values() for c in cols if c in result]
    rows = [[name] + [f"{result[c][i]:.2f}" for c in columns[1:]]
            for i, name in enumerate(class_names)]
    widths = [max(len(r[j]) for r in [columns] + rows) for j in range(len(columns))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells):  # centred, as PrettyTable draws mmseg's table
        return "|" + "|".join(f" {c:^{w}} " for c, w in zip(cells, widths)) + "|"

    return "\n".join([rule, line(columns), rule, *map(line, rows), rule,
                      format_summary(result)])
