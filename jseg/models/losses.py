"""Pixel-wise cross-entropy and accuracy with mmsegmentation's semantics.

mmseg's CrossEntropyLoss with `avg_non_ignore=False` (what SegNeXt trains with):
per-pixel loss = class_weight[y] * -log softmax(logits)[y] for labelled pixels, 0 for pixels
labelled `ignore_index`; the loss is the MEAN OVER ALL PIXELS, ignored ones included in the
denominator, also with class weights (PyTorch's weighted mean would divide by the sum of the
weights instead; mmseg does not). Labels outside [0, num_classes) other than ignore_index
are not checked and contribute 0.
"""
import jittor as jt
from jittor import nn

from .layers import resize

__all__ = ["cross_entropy", "accuracy", "CrossEntropyLoss"]


def _one_hot_valid(label, num_classes, ignore_index):
    """(B, H, W) int labels -> (B, C, H, W) float one-hot, all zeros where label == ignore_index."""
    classes = jt.arange(num_classes).reshape((1, -1, 1, 1))
    valid = (label != ignore_index).unsqueeze(1)  # (B, 1, H, W)
    return ((label.unsqueeze(1) == classes) & valid).float32()


def _class_weights(class_weight, num_classes):
    """The (C,) float32 class weights (ones without class_weight);
    a ValueError when their number is not C."""
    if class_weight is not None and len(class_weight) != num_classes:
        raise ValueError(f"class_weight has {len(class_weight)} entries for {num_classes} "
                         "classes")
    return jt.array(list(class_weight) if class_weight is not None else [1.0] * num_classes,
                    "float32")


def _percent(correct, labelled):
    """correct / labelled in percent, a float32 epsilon added to both as mmseg does (an
    all-ignored batch gives 100)."""
    eps = 1.1920928955078125e-07
    return (correct + eps) / (labelled + eps) * 100.0


def cross_entropy(logits, label, class_weight=None, ignore_index: int = 255):
    """Mean over all B*H*W pixels of the (weighted) per-pixel cross-entropy; ignored pixels add 0.

    Args:
        logits: (B, C, H, W).
        label: (B, H, W) integer class ids, `ignore_index` for unlabelled pixels.
        class_weight: None or C floats.
        ignore_index: label value without loss.
    """
    num_classes = logits.shape[1]
    weight = _class_weights(class_weight, num_classes)
    one_hot = _one_hot_valid(label, num_classes, ignore_index)  # (B, C, H, W)
    if class_weight is not None:
        one_hot = one_hot * weight.reshape((1, -1, 1, 1))
    log_prob = nn.log_softmax(logits, dim=1)
    per_pixel = -(log_prob * one_hot).sum(dim=1)  # (B, H, W)
    return per_pixel.mean()


def accuracy(logits, label, ignore_index: int = 255):
    """Percent of labelled pixels whose argmax equals the label, without gradient.

    As mmseg, a float32 epsilon is added to both counts (an all-ignored batch gives 100).
    """
    with jt.no_grad():
        pred, _ = jt.argmax(logits.detach(), dim=1)  # (B, H, W)
        valid = (label != ignore_index).float32()
        correct = ((pred == label).float32() * valid).sum()
        return _percent(correct, valid.sum())


class CrossEntropyLoss(nn.Module):
    """`loss_weight * cross_entropy(logits, label, class_weight, ignore_index)`.

    Holds no Vars (class_weight is kept as a tuple), so it adds nothing to the state dict.
    """

    def __init__(self, loss_weight: float = 1.0, class_weight=None, ignore_index: int = 255,
                 loss_name: str = "loss_ce"):
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.class_weight = None if class_weight is None else tuple(float(w) for w in class_weight)
        self.ignore_index = int(ignore_index)
        self.loss_name = loss_name

    def execute(self, logits, label):
        loss = cross_entropy(logits, label, self.class_weight, self.ignore_index)
        return self.loss_weight * loss

    def accuracy(self, logits, label):
        """Percent of labelled pixels predicted right (`accuracy`)."""
        return accuracy(logits, label, self.ignore_index)

    def resized(self, logits, label, align_corners=False):
        """(loss, accuracy) of `logits` (B, C, h, w) resized bilinearly to the size of
        `label` (B, H, W) first, as mmseg's decode head does."""
        logits = resize(logits, label.shape[1:], align_corners)
        return self(logits, label), self.accuracy(logits, label)

    def class_weights(self, num_classes):
        """(C,) float32 class weights, ones without `class_weight`."""
        return _class_weights(self.class_weight, num_classes)

    @staticmethod
    def percent(correct, labelled):
        """correct / labelled in percent, as `accuracy` counts it."""
        return _percent(correct, labelled)
