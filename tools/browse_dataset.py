"""Write dataset samples next to their colour-label overlay, to check data and augmentation.

    python tools/browse_dataset.py --config-file configs/demo/....yaml --out-dir browse -n 8
    python tools/browse_dataset.py --config-file C --split val --out-dir browse -n 8

train: samples as the training pipeline makes them (resize, crop, flip, photometric
distortion, padding to the crop size; no normalisation), drawn with the config's seed.
val: the files as read (original size, labels after reduce_zero_label).
Each output is <index>_<name>.png: image | label colours over the image. Ignored pixels
(255) are left as they are in the overlay.
"""
import os
import sys


import cv2
import numpy as np

from jseg.utils.cli import ToolParser, positive_int, run_main
from jseg.config import ConfigError, load_config
from jseg.data.datasets import DataError, build_dataset
from jseg.data.loader import epoch_permutation, sample_rng
from jseg.data.palettes import overlay
from jseg.data.transforms import build_train_pipeline


def render(dataset, pipeline, index, seed, opacity):
    sample = dataset[index]
    if pipeline is not None:
        sample = pipeline(sample, sample_rng(seed, 0, index))
    img, seg = sample["img"], sample["seg"]
    if not dataset.to_rgb:
        img = img[..., ::-1]
    if seg is None:
        return np.ascontiguousarray(img)
    gap = np.full((img.shape[0], 4, 3), 255, np.uint8)
    return np.concatenate([img, gap, overlay(img, seg, dataset.palette, opacity)], axis=1)


def browse(config_file, split, out_dir, num, overrides=(), opacity=0.5, shuffle=True):
    """Write `num` samples of `split`; returns the written paths."""
    cfg = load_config(config_file, overrides)
    dataset = build_dataset(cfg.data, split)
    seed = cfg.seed if cfg.seed is not None else 0
    pipeline = build_train_pipeline(cfg.data, normalize=False) if split == "train" else None
    order = epoch_permutation(seed, 0, len(dataset), shuffle and split == "train")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for index in order[:num]:
        picture = render(dataset, pipeline, int(index), seed, opacity)
        name = os.path.splitext(os.path.basename(dataset.samples[index][0]))[0]
        path = os.path.join(out_dir, f"{split}_{int(index):05d}_{name}.png")
        if not cv2.imwrite(path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {path}")
        written.append(path)
    return written


def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("--config-file", required=True, help="config YAML")
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--out-dir", required=True, help="folder for the PNG files")
    p.add_argument("-n", "--num", type=positive_int, default=8,
                   help="number of samples, 1 or more (default: 8; more than the split has: "
                        "all of them)")
    p.add_argument("--opacity", type=float, default=0.5, help="label colour opacity (0.5)")
    p.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = p.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must lie in [0, 1], got {args.opacity}")
    try:
        paths = browse(args.config_file, args.split, args.out_dir, args.num, args.opts,
                       args.opacity)
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {len(paths)} samples to {args.out_dir}")
    return 0


if __name__ == "__main__":
    run_main(main)
