"""jseg/engine/confusion.py: the confusion matrix's .npy (exact counts) and heat map (.png),
both written atomically, legible for few and for many classes."""
import os

import numpy as np
import pytest

from jseg.engine import confusion
from jseg.engine.confusion import LEGIBLE_NAMES, draw_confusion_matrix, save_confusion_matrix


def test_counts_round_trip_and_both_files_go_through_the_atomic_writers(tmp_path, monkeypatch):
    calls = []
    real_write, real_image = confusion.atomic_write, confusion.write_image
    monkeypatch.setattr(confusion, "atomic_write",
                        lambda path, *a, **k: calls.append(os.path.basename(path))
                        or real_write(path, *a, **k))
    monkeypatch.setattr(confusion, "write_image",
                        lambda path, image: calls.append(os.path.basename(path))
                        or real_image(path, image))
    counts = np.array([[5, 0, 2], [0, 0, 0], [1, 3, 2 ** 40]], np.int64)  # row 1: no labels
    npy, png = save_confusion_matrix(tmp_path / "out", "confusion_matrix", counts,
                                     ["sky", "road", "car"])
    assert calls == ["confusion_matrix.npy", "confusion_matrix.png"], calls
    back = np.load(npy)
    assert back.dtype == np.int64, back.dtype
    np.testing.assert_array_equal(back, counts)
    import cv2
    image = cv2.imread(png)
    assert image is not None and image.shape[0] >= 3 * 14 and image.shape[1] >= 3 * 14, \
        None if image is None else image.shape
    assert sorted(os.listdir(tmp_path / "out")) == ["confusion_matrix.npy",
                                                    "confusion_matrix.png"]


@pytest.mark.parametrize("classes", [1, 6, LEGIBLE_NAMES, LEGIBLE_NAMES + 1, 150, 171])
def test_heat_map_stays_a_legible_size(classes):
    rng = np.random.default_rng(classes)
    counts = rng.integers(0, 100, size=(classes, classes))
    names = [f"class name {i} \u00e9" for i in range(classes)]  # non-ASCII: drawn as '?'
    image = draw_confusion_matrix(counts, names)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, image.shape
    # at least 4 px per cell, at most 48; names get 14 px per row
    cell = 14 if classes <= LEGIBLE_NAMES else 4
    assert cell * classes <= image.shape[0] <= 48 * classes + 400, (classes, image.shape)
    assert image.shape[1] <= 48 * classes + 600, (classes, image.shape)


def test_only_square_integer_counts_are_saved(tmp_path):
    for bad in (np.zeros((2, 3), np.int64), np.zeros((2, 2), np.float64)):
        with pytest.raises(ValueError, match="integer counts in a square array"):
            save_confusion_matrix(tmp_path, "cm", bad)
    assert not os.listdir(tmp_path)
