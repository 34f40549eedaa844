"""Segmentation metrics as mmseg's IoUMetric: per-class areas accumulated over a split.

Only four vectors of length num_classes are kept, so memory does not grow with
the dataset; `add` can be called per image or per batch, and partial sums from
several processes simply add up (`merge`).
"""
import numpy as np

__all__ = ["IoUAccumulator", "format_table"]


class IoUAccumulator:
    """Accumulates intersection, union, prediction and label areas per class."""

    def __init__(self, num_classes, ignore_index=255):
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.areas = np.zeros((4, self.num_classes), dtype=np.int64)  # inter, union, pred, label

    def add(self, pred, label):
        """pred, label: integer arrays of the same shape (H, W) or (N, H, W)."""
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {label.shape}")
        keep = label != self.ignore_index
        pred = pred[keep].astype(np.int64)
        label = label[keep].astype(np.int64)
        if label.size and (label.min() < 0 or label.max() >= self.num_classes):
            raise ValueError(f"label values must lie in [0, {self.num_classes}) or be "
                             f"{self.ignore_index}; found {label.min()}..{label.max()}")
        n = self.num_classes
        inter = np.bincount(label[pred == label], minlength=n)[:n]
        area_pred = np.bincount(pred[(pred >= 0) & (pred < n)], minlength=n)[:n]
        area_label = np.bincount(label, minlength=n)[:n]
        self.areas += np.stack([inter, area_pred + area_label - inter, area_pred, area_label])

    def merge(self, other_areas):
        self.areas += np.asarray(other_areas, dtype=np.int64)

    def compute(self):
        """Returns dict: aAcc, mIoU, mAcc (percent, nan-mean over classes with labels) and
        per-class IoU / Acc arrays (percent, nan where a class never occurs)."""
        inter, union, _, label = self.areas.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
            acc = inter / label
        total = label.sum()
        return {
            "aAcc": 100.0 * inter.sum() / total if total else float("nan"),
            "mIoU": 100.0 * np.nanmean(iou) if np.isfinite(iou).any() else float("nan"),
            "mAcc": 100.0 * np.nanmean(acc) if np.isfinite(acc).any() else float("nan"),
            "IoU": 100.0 * iou,
            "Acc": 100.0 * acc,
        }


def format_table(result, class_names):
    """A plain-text table: one row per class (IoU, Acc), then aAcc / mIoU / mAcc."""
    width = max([len("Class")] + [len(n) for n in class_names])
    lines = [f"{'Class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    for name, iou, acc in zip(class_names, result["IoU"], result["Acc"]):
        lines.append(f"{name:<{width}}  {iou:6.2f}  {acc:6.2f}")
    lines.append(f"aAcc {result['aAcc']:.2f}  mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}")
    return "\n".join(lines)
