"""From a view's logits to the prediction at the original image size, with numpy.

`combine_views` takes the (K, C, h, w) logits of each view of one image (one, or several
for multi-scale + flip), brings them back to the original image (`restore_prediction`:
padding cropped, flip undone, bilinear resize) and returns per row k the argmax, averaging
the views' softmax probabilities as mmseg's test-time augmentation does. The Jittor
evaluator and the ONNX predictor both use it.

Memory: restored scores are (classes, H, W), 2.4 GB for 150 classes at 2000x2000, and
OpenCV resizes many channels at once far slower than a few. So one view is reduced to its
argmax a few classes at a time (a running maximum: the same result), and several views add
their softmax into one (classes, H, W) sum, one view at a time.
"""
import numpy as np

from .transforms import restore_prediction

__all__ = ["combine_views"]

_CHUNK_ELEMENTS = 2 ** 24  # restored scores per chunk (64 MB in float32)


def combine_views(view_logits, count, return_probs=False):
    """[prediction (H, W) int64 per row k] of an image's views.

    view_logits: an iterable of (logits (K, C, h, w) float32, meta) per view, consumed one
        view at a time; count: the number of views. With return_probs, each row gives
        (prediction, (C, H, W) float32 mean probabilities) instead.
    """
    totals = None
    for logits, meta in view_logits:
        if count == 1 and not return_probs:
            return [_chunked_argmax(restore_prediction(row[c], meta)
                                    for c in _class_chunks(row, meta))
                    for row in logits]
        if totals is None:
            totals = [None] * len(logits)
        for k, row in enumerate(logits):
            probs = _restored(row, meta)
            _softmax_inplace(probs)
            if totals[k] is None:
                totals[k] = probs
            else:
                totals[k] += probs
            del probs
    out = []
    for total in totals:
        pred = total.argmax(axis=0)
        if return_probs:
            total /= count
            out.append((pred, total))
        else:
            out.append(pred)
    return out


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
