"""TensorBoard event files of a training run (`train.tensorboard: true`), written with
tensorboardX (pip install -e .[tensorboard]; no TensorFlow, no torch).

Everything the run records in metrics.jsonl goes there too, as scalars:
- per log line, `train/<field>`: loss, loss_avg, lr, every loss term, time, data_time,
  memory_mb (and loss_scale under mixed precision);
- per evaluation, `val/<metric>` (aAcc, mIoU, mAcc, mDice, ...) and
  `val_<metric>/<class>` for every per-class value (IoU, Acc, Dice, ...);
and per evaluation a few images, `val/sample_<k>`: the image, its label and the prediction
(colours of the dataset's palette over the image), side by side.

View them with `tensorboard --logdir <work_dir>/tensorboard`. A resumed run appends a
new event file and drops the events after its start iteration (purge_step), so the curves
continue without a fork.
"""
import numpy as np

from jseg.data.datasets import read_image
from jseg.data.palettes import overlay

__all__ = ["TensorBoardLog", "SampleCollector", "INSTALL_HINT"]

INSTALL_HINT = ("train.tensorboard needs tensorboardX; install it with: pip install "
                "tensorboardX (or pip install -e .[tensorboard]), or set train.tensorboard=false")


class TensorBoardLog:
    """An event-file writer in `log_dir` whose `record(**fields)` takes metrics.jsonl
    records. Raises ImportError (INSTALL_HINT) without tensorboardX."""

    def __init__(self, log_dir, start_iter=0):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError(INSTALL_HINT) from None
        self.writer = SummaryWriter(log_dir, purge_step=start_iter or None)
        self.log_dir = log_dir

    def record(self, mode, iter=None, **fields):
        if iter is None:  # an evaluation outside the training loop: no step to put it at
            return
        for key, value in fields.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{mode}/{key}", value, iter)
            elif isinstance(value, dict):  # per class; None: absent from the labels (nan)
                for name, v in value.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        self.writer.add_scalar(f"{mode}_{key}/{name}", v, iter)
        self.writer.flush()

    def samples(self, collected, palette, step):
        """Images of `SampleCollector.items`: image | label | prediction, per sample."""
        for k, (img_path, seg, pred) in enumerate(collected):
            rgb = read_image(img_path, to_rgb=True)
            panels = [rgb]
            if seg is not None:
                labelled = seg != 255
                shown = overlay(rgb, np.where(labelled, seg, 0), palette, 0.5)
                panels.append(np.where(labelled[:, :, None], shown, rgb))
            panels.append(overlay(rgb, pred, palette, 0.5))
            gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
            strip = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
            self.writer.add_image(f"val/sample_{k}", strip, step, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


class SampleCollector:
    """An evaluator `on_prediction` callback keeping the first `limit` (image path, label,
    prediction) triples, for `TensorBoardLog.samples`."""

    def __init__(self, limit):
        self.limit = int(limit)
        self.items = []

    def __call__(self, item, pred):
        if len(self.items) < self.limit:
            self.items.append((item["img_path"], item["seg"], pred))
