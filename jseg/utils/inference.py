"""Inference arithmetic without Jittor, shared by jseg.models and the ONNX predictor
(jseg.deploy): the slide-window grid and the seeded NMF bases (numpy)."""
import numpy as np

__all__ = ["L2_EPS", "seeded_bases", "slide_windows"]

# torch.nn.functional.normalize's default eps (Jittor/JSeg's jt.normalize uses 1e-30).
L2_EPS = 1e-12


def seeded_bases(shape, seed: int = 0, index=0):
    """Reproducible NMF bases without Jittor's RNG: a float32 array of `shape` (B*S, D, R).

    U[0, 1) values from numpy's generator seeded with (seed, index) -- `index` an int or a
    tuple of ints, e.g. (image, draw) -- L2-normalised over D (axis 1, the norm taken in
    float64) as jseg.models' `NMF2D.random_bases` normalises its draw. Used to give two
    implementations the same bases (jseg.diagnostics.parity, index = the k-th draw), as the
    constant bases of an exported graph (jseg.export.onnx) and per image in evaluation
    (jseg.models.ham_head.ImageBases, jseg.deploy.OnnxSegmentor).
    """
    index = tuple(int(i) for i in index) if isinstance(index, (tuple, list)) else (int(index),)
    rng = np.random.default_rng((int(seed), *index))
    bases = rng.random(tuple(shape), dtype=np.float32)
    norm = np.sqrt((bases.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return (bases / np.maximum(norm, L2_EPS)).astype(np.float32)


def slide_windows(height: int, width: int, crop_size, stride):
    """Windows (y1, y2, x1, x2) of sliding-window inference over a height x width image.

    mmseg's rule: h_grids = max(H - h_crop + h_stride - 1, 0) // h_stride + 1 (same for W);
    window (i, j) starts at (i * h_stride, j * w_stride), its end is clamped to the image and
    its start pulled back to end - crop (not below 0). Windows are listed row by row.
    Needs 0 < stride <= crop_size per dimension (EncoderDecoder checks its settings).
    """
    h_crop, w_crop = crop_size
    h_stride, w_stride = stride
    assert 0 < h_stride <= h_crop and 0 < w_stride <= w_crop, \
        f"slide windows need 0 < stride <= crop_size per dimension, got crop_size " \
        f"{tuple(crop_size)} and stride {tuple(stride)}"
    h_grids = max(height - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(width - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, height)
            x2 = min(w_idx * w_stride + w_crop, width)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows
