"""Segment one image or a folder of images and write overlays and label maps.

examples:
  python tools/demo.py photo.jpg --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint segnext_t_ade.pkl --out-dir out/
  python tools/demo.py data/demo/images/validation --config-file configs/demo/segnext_mscan-t_demo.yaml \\
      --checkpoint work_dirs/demo/checkpoints/iter_00000400.pkl --out-dir out/ --opacity 0.6

For each image IMG it writes OUT/IMG_overlay.jpg (colours over the image, with a legend of the
classes found) and OUT/IMG.png (class ids), and prints the classes found and the time taken.
A file that cannot be read (or has no pixels) is reported and skipped; the exit code is 1 if
any image failed. Outputs are written atomically; a write that fails (a full disk) stops the
run with exit code 1 and leaves the file it was writing as it was.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jseg.utils.cli import ToolParser  # noqa: E402
import jseg  # noqa: E402,F401  (configures Jittor before it is imported)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(path):
    if os.path.isdir(path):
        files = sorted(os.path.join(path, n) for n in os.listdir(path)
                       if n.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return files
    if not os.path.exists(path):
        raise FileNotFoundError(f"image or folder not found: {path}")
    return [path]


def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("input", metavar="IMG_OR_DIR")
    p.add_argument("--config-file", required=True)
    p.add_argument("--checkpoint", required=True, help="weights (weights_convert output or a training checkpoint)")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1] (default 0.5)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument("--tta", action="store_true", help="multi-scale + flip")
    p.add_argument("--seed", type=int, default=0, help="seed of the NMF bases (default 0)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. model.test_cfg.mode=slide")
    args = p.parse_args(argv)
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must lie in [0, 1], got {args.opacity}")

    from tqdm import tqdm
    import numpy as np
    from jseg.apis import inference_model, init_model, show_result
    from jseg.config import ConfigError, load_config
    from jseg.data.datasets import DataError, dataset_settings
    from jseg.checkpoint import WeightsMismatchError
    from jseg.utils.atomic import write_image
    from jseg.checkpoint.safe_pickle import CheckpointError

    try:
        files = list_images(args.input)
        cfg = load_config(args.config_file, args.cfg_options)
        model = init_model(cfg, args.checkpoint, device=args.device)
        os.makedirs(args.out_dir, exist_ok=True)
    except (ConfigError, CheckpointError, WeightsMismatchError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import jittor as jt
    jt.set_global_seed(args.seed)
    settings = dataset_settings(model.cfg.data)
    failed = 0
    for path in tqdm(files, desc="demo", unit="img", disable=len(files) == 1):
        stem = os.path.splitext(os.path.basename(path))[0]
        start = time.time()
        try:
            result = inference_model(model, path, tta=args.tta)
        except (DataError, ValueError) as e:
            failed += 1
            tqdm.write(f"skipped {path}: {e}", file=sys.stderr)
            continue
        seconds = time.time() - start
        pred = result["pred"]
        try:
            show_result(path, result, settings["palette"], settings["classes"], args.opacity,
                        out_file=os.path.join(args.out_dir, f"{stem}_overlay.jpg"))
            write_image(os.path.join(args.out_dir, f"{stem}.png"), pred.astype(np.uint8))
        except OSError as e:  # the output folder, not this image: the next writes fail too
            tqdm.write(f"error: {e}", file=sys.stderr)
            return 1
        ids, counts = np.unique(pred, return_counts=True)
        found = ", ".join(f"{settings['classes'][i]} {100 * n / pred.size:.0f}%"
                          for i, n in sorted(zip(ids, counts), key=lambda t: -t[1]))
        tqdm.write(f"{path}: {found} ({seconds:.2f}s)")
    print(f"{len(files) - failed} of {len(files)} images written to {args.out_dir}"
          + (f"; {failed} skipped" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
