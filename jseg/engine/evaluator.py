"""Evaluation and prediction over a split: logits per view -> original size -> metrics.

For each image the loader gives one view (or several for multi-scale + flip).
Each view is run through `model.inference` (whole or slide, from the config),
its logits are brought back to the original image (padding cropped, flip undone,
bilinear resize), and with several views their softmax probabilities are
averaged, as mmseg's test-time augmentation does. The argmax is the prediction.

Memory and time at the original size H x W: the restored scores are
(classes, H, W), 2.4 GB per copy for 150 classes and a 2000x2000 photo, and
OpenCV resizes many channels at once far slower than a few at a time. So scores
are restored a few classes at a time: one view is reduced to its argmax as it
goes (a running maximum; each class is restored on its own, so the result is the
same), and several views add their softmax into one (classes, H, W) sum, one
view at a time (the sum and one view's probabilities are the largest arrays).
"""
import logging
import time

import jittor as jt
import numpy as np
from tqdm import tqdm

from jseg.data.transforms import restore_prediction

from .metrics import IoUAccumulator

__all__ = ["predict_image", "evaluate"]

logger = logging.getLogger(__name__)

_CHUNK_ELEMENTS = 2 ** 24  # restored scores per chunk (64 MB in float32)


def predict_image(model, views, return_probs=False):
    """Prediction (H, W) int64 at the original size for one loader item's `views`.

    With return_probs, also the (C, H, W) float32 class probabilities.
    """
    total = None
    for view in views:
        with jt.no_grad():
            logits = model.inference(jt.array(view["img"])).numpy()[0]
        if len(views) == 1 and not return_probs:
            return _chunked_argmax(restore_prediction(logits[c], view["meta"])
                                   for c in _class_chunks(logits, view["meta"]))
        probs = _restored(logits, view["meta"])
        _softmax_inplace(probs)
        if total is None:
            total = probs
        else:
            total += probs
        del probs
    pred = total.argmax(axis=0)
    if return_probs:
        total /= len(views)
        return pred, total
    return pred


def _class_chunks(logits, meta):
    """Slices of a few classes whose restored scores fit in _CHUNK_ELEMENTS."""
    height, width = meta["ori_shape"]
    step = max(1, _CHUNK_ELEMENTS // (height * width))
    return [slice(c, c + step) for c in range(0, logits.shape[0], step)]


def _restored(logits, meta):
    """restore_prediction of (C, h, w) logits into one (C, H, W) float32 array, by chunks."""
    height, width = meta["ori_shape"]
    out = np.empty((logits.shape[0], height, width), np.float32)
    for chunk in _class_chunks(logits, meta):
        out[chunk] = restore_prediction(logits[chunk], meta)
    return out


def _chunked_argmax(chunks):
    """argmax over the classes of a stream of (c, H, W) chunks; the first maximum wins,
    as with np.argmax."""
    best = index = None
    start = 0
    for scores in chunks:
        top, arg = scores.max(axis=0), scores.argmax(axis=0) + start
        if best is None:
            best, index = top, arg
        else:
            better = top > best
            best[better], index[better] = top[better], arg[better]
        start += scores.shape[0]
    return index


def _softmax_inplace(scores):
    """Softmax over axis 0 of a float32 (C, H, W) array, without temporaries of its size."""
    scores -= scores.max(axis=0, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=0, keepdims=True)


def evaluate(model, loader, num_classes, ignore_index=255, on_prediction=None, progress=True,
             labelled=True):
    """Run `model` over `loader`; returns (IoUAccumulator, seconds).

    on_prediction(item, pred) is called per image (e.g. to write PNGs). Under MPI each
    rank evaluates its share of the loader and the per-class areas are summed.
    labelled=False (a split without label maps, e.g. a benchmark's test images): only
    predictions, and (None, seconds) is returned.
    """
    was_training = model.is_training()
    model.eval()
    acc = IoUAccumulator(num_classes, ignore_index)
    start = time.time()
    try:
        for item in tqdm(loader, desc="eval", unit="img", disable=not progress, leave=False):
            pred = predict_image(model, item["views"])
            if labelled:
                if item["seg"] is None:
                    raise ValueError(f"{item['img_path']} has no label map in a labelled split")
                acc.add(pred, item["seg"])
            if on_prediction is not None:
                on_prediction(item, pred)
    finally:
        if was_training:
            model.train()
    if not labelled:
        return None, time.time() - start
    if jt.in_mpi:
        acc.areas = jt.array(acc.areas.astype(np.float64)).mpi_all_reduce("add").numpy() \
            .round().astype(np.int64)
    return acc, time.time() - start
