"""predict_image (jseg/engine/evaluator.py): the chunked restore, argmax and softmax sum give
what restoring every class at once gives, for one view and for several (multi-scale + flip)."""
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
    monkeypatch.setattr(evaluator, "_CHUNK_ELEMENTS", 7 * original[0] * original[1])  # 7 classes
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
