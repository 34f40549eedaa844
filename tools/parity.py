"""Compare jseg's SegNeXt with mmsegmentation's (PyTorch) on one checkpoint and one input.

examples:
  python tools/parity.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint segnext_mscan-t_ade20k.pth --image demo.jpg
  python tools/parity.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint segnext_mscan-t_ade20k.pth --shape 75 53
  python tools/parity.py --config-file C --checkpoint X.pth --shape 80 112 \\
      model.test_cfg.mode=slide model.test_cfg.crop_size=[64,64] model.test_cfg.stride=[48,48]

mmseg's model is built from the equivalent mmseg config and loads the checkpoint with torch
(mmseg 1.x or official key names); ours converts it with weights_convert and loads it
strictly. Both run in eval mode (whole or slide inference, as the config's test_cfg says) with
the same pinned NMF bases. Printed: max |jittor - torch|, max |torch| and their ratio for each
backbone stage and for the logits, and the share of pixels whose argmax class agrees.

The input is --image (read with OpenCV, normalised with the config's data.mean / data.std,
resized to --shape if given) or a seeded N(0, 1) tensor of --shape (default 512 512).

Needs the PyTorch reference: pip install -e .[parity]
Exit codes: 0 within tolerance (rel <= 1e-4, agreement >= 99.9%), 3 beyond it,
1 bad input or no reference installed.
"""
import os
import sys


import numpy as np

from jseg.utils.cli import ToolParser, run_main
from jseg.config import load_config  # jseg configures Jittor
from jseg.checkpoint.zoo import fetch_source, is_remote


def parse_args(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--config-file", required=True, help="YAML config of the model")
    parser.add_argument("--checkpoint", required=True,
                        help="PyTorch checkpoint (.pth) in mmseg 1.x or official key names, "
                             "or zoo:NAME (the downloaded mmseg file)")
    parser.add_argument("--image", default=None, help="input image (default: random input)")
    parser.add_argument("--shape", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="input size (random input: default 512 512; with --image: resize)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random input and of the pinned NMF bases (default 0)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.test_cfg.mode=slide")
    return parser.parse_args(argv)


class BadInput(ValueError):
    """One line for the user, exit code 1."""


def read_input(args, cfg):
    """(1, 3, H, W) float32: the normalised image, or seeded N(0, 1) values."""
    if args.shape is not None and min(args.shape) <= 0:
        raise BadInput(f"--shape must be two positive integers, got {args.shape[0]} "
                       f"{args.shape[1]}")
    if args.image is None:
        height, width = args.shape or (512, 512)
        rng = np.random.default_rng(args.seed)
        return rng.standard_normal((1, 3, height, width)).astype(np.float32)
    import cv2

    if not os.path.isfile(args.image):
        raise BadInput(f"--image {args.image}: no such file")
    img = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if img is None:
        raise BadInput(f"--image {args.image}: OpenCV cannot read it as an image")
    if args.shape is not None:
        img = cv2.resize(img, (args.shape[1], args.shape[0]), interpolation=cv2.INTER_LINEAR)
    data = cfg["data"]
    if data["to_rgb"]:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = (img.astype(np.float32) - np.float32(data["mean"])) / np.float32(data["std"])
    return np.ascontiguousarray(img.transpose(2, 0, 1)[None])


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = load_config(args.config_file, overrides=args.overrides)
        if is_remote(args.checkpoint):  # zoo:NAME or a URL: the downloaded PyTorch file
            args.checkpoint = fetch_source(args.checkpoint)[0]
        if not os.path.isfile(args.checkpoint):
            raise BadInput(f"--checkpoint {args.checkpoint}: no such file")
        img = read_input(args, cfg)
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1

    from jseg.diagnostics import parity

    try:
        ref = parity.import_reference()
    except parity.ReferenceUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    from jseg.checkpoint.safe_pickle import CheckpointError

    try:
        ref_model = parity.build_reference_model(ref, cfg["model"])
        parity.load_reference_checkpoint(ref, ref_model, args.checkpoint)
        model = parity.build_jseg_model(cfg["model"], args.checkpoint)
    except (ValueError, OSError, CheckpointError) as e:
        # CheckpointError, ConversionError, WeightsMismatchError, settings mmseg lacks
        print(f"error: {e}", file=sys.stderr)
        return 1

    result = parity.eval_parity(ref, ref_model, model, img, seed=args.seed)
    test_cfg = cfg["model"]["test_cfg"]
    mode = test_cfg["mode"]
    if mode == "slide":
        mode += f" (crop {tuple(test_cfg['crop_size'])}, stride {tuple(test_cfg['stride'])})"
    print(f"config:     {args.config_file}")
    print(f"checkpoint: {args.checkpoint}")
    source = args.image if args.image else f"random N(0, 1), seed {args.seed}"
    print(f"input:      {' x '.join(map(str, img.shape))} ({source})")
    print(f"inference:  {mode}, {result['windows']} window(s), NMF bases pinned "
          f"(seed {args.seed})")
    print(f"reference:  mmsegmentation {ref.mmseg_version}, torch {ref.torch.__version__}")
    for line in parity.format_eval_report(result):
        print(line)
    return 0 if parity.eval_within_tolerance(result) else 3


if __name__ == "__main__":
    run_main(main)
