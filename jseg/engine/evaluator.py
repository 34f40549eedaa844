"""Evaluation and prediction over a split: logits per view -> original size -> metrics.

For each image the loader gives one view (or several for multi-scale + flip).
Each view is run through `model.inference` (whole or slide, from the config),
its logits are brought back to the original image (padding cropped, flip undone,
bilinear resize), and with several views their softmax probabilities are
averaged, as mmseg's test-time augmentation does. The argmax is the prediction.
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


def predict_image(model, views, return_probs=False):
    """Prediction (H, W) int64 at the original size for one loader item's `views`.

    With return_probs, also the (C, H, W) float32 class probabilities.
    """
    total = None
    for view in views:
        with jt.no_grad():
            logits = model.inference(jt.array(view["img"]))
        scores = restore_prediction(logits.numpy()[0], view["meta"])
        if len(views) > 1 or return_probs:
            scores = _softmax(scores)
        total = scores if total is None else total + scores
    pred = total.argmax(axis=0)
    if return_probs:
        return pred, (total / len(views)).astype(np.float32)
    return pred


def _softmax(scores):
    e = np.exp(scores - scores.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


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
