"""The confusion matrix's files: the counts (.npy) and a heat map (.png).

`save_confusion_matrix(directory, name, matrix, class_names)` writes, atomically:
- <name>.npy: the (num_classes, num_classes) int64 counts that jseg.engine.metrics
  accumulates (rows: label, columns: prediction, class ids in the config's order; pixels
  labelled ignore_index are not counted), `np.load` reads it;
- <name>.png: the matrix normalised per row, so that a row shows where the pixels of one
  class went and its diagonal cell is that class's Acc.

The heat map is drawn with OpenCV and numpy alone (no plotting library needed, the same
pixels everywhere): viridis from 0 to 100 % of the row, grey rows for classes absent from
the labels, the class names on both axes up to LEGIBLE_NAMES classes (else the class ids
every k-th row and column), and the percentages in the cells when they fit.
"""
import os

import numpy as np

from jseg.utils.atomic import atomic_write, write_image

__all__ = ["LEGIBLE_NAMES", "draw_confusion_matrix", "save_confusion_matrix"]

LEGIBLE_NAMES = 40  # more classes: ids every k-th row / column instead of names

_SCALE = 0.4  # tick label font scale (Hershey simplex, about 9 px high)
_WHITE, _BLACK, _GREY = (255, 255, 255), (0, 0, 0), (200, 200, 200)


def _text_size(text, scale=_SCALE):
    import cv2
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    return w, h + base


def _put(canvas, text, x, y, scale=_SCALE, color=_BLACK):
    """Draw `text` with its top-left corner at (x, y)."""
    import cv2
    (_, h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.putText(canvas, text, (int(x), int(y + h)), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1,
                cv2.LINE_AA)


def _rotated_text(text, scale=_SCALE):
    """`text` on white, turned 90 degrees to read from bottom to top."""
    w, h = _text_size(text, scale)
    strip = np.full((h + 2, w + 2, 3), 255, np.uint8)
    _put(strip, text, 1, 1, scale)
    return np.ascontiguousarray(np.rot90(strip))


def _tick_step(cell, spacing=14):
    """The smallest of 1, 2, 5, 10, 20, 50, ... classes whose ticks are `spacing` px apart."""
    for magnitude in (10 ** e for e in range(8)):
        for step in (1, 2, 5):
            if step * magnitude * cell >= spacing:
                return step * magnitude
    return 10 ** 8


def draw_confusion_matrix(matrix, class_names=None):
    """The row-normalised heat map of `matrix` as a BGR uint8 image (see the module docstring)."""
    import cv2

    matrix = np.asarray(matrix, np.int64)
    n = matrix.shape[0]
    assert matrix.shape == (n, n) and n > 0, f"a confusion matrix is square, got {matrix.shape}"
    names = None
    if class_names is not None and n <= LEGIBLE_NAMES:
        # Hershey fonts draw ASCII only
        names = [str(c).encode("ascii", "replace").decode()[:24] for c in class_names]
    cell = int(np.clip(800 // n, 14 if names else 4, 48))
    step = 1 if names else _tick_step(cell)
    ticks = [(i, names[i] if names else str(i)) for i in range(0, n, step)]

    rows = matrix.sum(axis=1, keepdims=True)
    share = matrix / np.maximum(rows, 1)
    heat = cv2.applyColorMap(np.round(share * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
    heat[rows[:, 0] == 0] = _GREY  # a class absent from the labels: no row to normalise
    heat = np.repeat(np.repeat(heat, cell, axis=0), cell, axis=1)
    if cell >= 12:  # thin lines between the cells
        heat[::cell, :] = heat[:, ::cell] = _WHITE
    if cell >= 30:
        for r in range(n):
            for c in range(n):
                if matrix[r, c]:
                    text = f"{100 * share[r, c]:.0f}"
                    w, h = _text_size(text)
                    _put(heat, text, c * cell + (cell - w) / 2, r * cell + (cell - h) / 2,
                         color=_BLACK if share[r, c] > 0.6 else _WHITE)

    side = n * cell
    title = "rows: label, columns: prediction, % of the row"
    row_labels = [_text_size(t)[0] for _, t in ticks]
    col_labels = [_rotated_text(t) for _, t in ticks]
    axis_w, axis_h = _text_size("label", 0.5)
    left = 8 + axis_h + 8 + max(row_labels) + 6
    top = 8 + _text_size(title, 0.5)[1] + 10
    bar_x = left + side + 16
    right = 16 + 16 + 6 + _text_size("100%")[0] + 8
    bottom = 6 + max(im.shape[0] for im in col_labels) + 8 + axis_h + 8
    width = max(left + side + right, _text_size(title, 0.5)[0] + 16)
    canvas = np.full((top + side + bottom, width, 3), 255, np.uint8)
    canvas[top:top + side, left:left + side] = heat
    _put(canvas, title, 8, 8, 0.5)

    for (i, text), w in zip(ticks, row_labels):
        _put(canvas, text, left - 6 - w, top + i * cell + (cell - _text_size(text)[1]) / 2)
    for (i, _), im in zip(ticks, col_labels):
        x = int(left + i * cell + (cell - im.shape[1]) / 2)
        x = min(max(x, 0), width - im.shape[1])
        canvas[top + side + 6:top + side + 6 + im.shape[0], x:x + im.shape[1]] = im
    label_axis = _rotated_text("label", 0.5)
    y = int(top + (side - label_axis.shape[0]) / 2)
    y = min(max(y, 0), canvas.shape[0] - label_axis.shape[0])
    canvas[y:y + label_axis.shape[0], 8:8 + label_axis.shape[1]] = label_axis
    _put(canvas, "prediction", left + (side - axis_w) / 2, canvas.shape[0] - 8 - axis_h, 0.5)

    # colour bar: 100 % at the top, 0 % at the bottom
    ramp = np.linspace(255, 0, side).round().astype(np.uint8)[:, None]
    canvas[top:top + side, bar_x:bar_x + 16] = cv2.applyColorMap(ramp, cv2.COLORMAP_VIRIDIS)
    _put(canvas, "100%", bar_x + 22, top)
    _put(canvas, "0%", bar_x + 22, top + side - _text_size("0%")[1])
    return canvas


def save_confusion_matrix(directory, name, matrix, class_names=None):
    """Write <directory>/<name>.npy (int64 counts) and <name>.png (the heat map) atomically;
    returns the two paths. Raises OSError naming the file that could not be written."""
    matrix = np.asarray(matrix)
    if matrix.dtype.kind not in "iu" or matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"a confusion matrix holds integer counts in a square array, got "
                         f"{matrix.dtype} {matrix.shape}")
    os.makedirs(directory, exist_ok=True)
    npy, png = (os.path.join(directory, f"{name}.{ext}") for ext in ("npy", "png"))
    with atomic_write(npy) as f:
        np.save(f, matrix.astype(np.int64))
    write_image(png, draw_confusion_matrix(matrix, class_names))
    return npy, png

