"""Train, evaluate or predict with a YAML config.

examples:
  # train (checkpoints, logs and the resolved config go to work_dirs/<config name>)
  python tools/run_net.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml --task train
  # start from an ImageNet backbone converted by weights_convert, with overrides
  python tools/run_net.py --config-file C --task train model.backbone.pretrained=mscan_t.pkl train.max_iters=80000
  # continue the newest checkpoint of the run (never happens without --resume)
  python tools/run_net.py --config-file C --task train --resume auto
  # evaluate weights (mIoU table), optionally with multi-scale + flip
  python tools/run_net.py --config-file C --task val --load-from work_dirs/x/checkpoints/iter_00160000.pkl --tta
  # write label maps and colour overlays for the validation images
  python tools/run_net.py --config-file C --task test --load-from W --save-dir results/
  # several processes (data parallel, synchronised BatchNorm):
  mpirun -np 2 python tools/run_net.py --config-file C --task train
"""
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jseg.utils.cli import ToolParser  # noqa: E402
from jseg.config import ConfigError, load_config  # noqa: E402  (jseg configures Jittor)

logger = logging.getLogger("jseg")


def parse_args(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--config-file", required=True, help="YAML config")
    parser.add_argument("--task", required=True, choices=("train", "val", "test"))
    parser.add_argument("--resume", metavar="CKPT|auto",
                        help="train: continue this checkpoint (auto: the newest in the work dir)")
    parser.add_argument("--load-from", metavar="WEIGHTS",
                        help="weights to start from (train) or to evaluate (val / test)")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    parser.add_argument("--save-dir", help="test: folder for label maps and overlays")
    parser.add_argument("--seed", type=int, help="random seed (data order, augmentation, NMF bases)")
    parser.add_argument("--tta", action="store_true", help="val / test: multi-scale + flip")
    parser.add_argument("--label-ids", action="store_true",
                        help="test on Cityscapes: write label ids (for the official evaluation "
                             "server) instead of train ids")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_iters=2000")
    return parser.parse_intermixed_args(argv)  # KEY=VALUE may stand between options


def _weights_for_eval(args, cfg):
    path = args.load_from or args.resume
    if path == "auto":
        from jseg.checkpoint import find_checkpoints
        found = find_checkpoints(os.path.join(cfg.work_dir, "checkpoints"))
        if not found:
            raise FileNotFoundError(f"--resume auto: no checkpoint in {cfg.work_dir}/checkpoints")
        path = found[-1]
    if path is None:
        raise FileNotFoundError(f"--task {args.task} needs weights: pass --load-from WEIGHTS")
    return path


# Cityscapes train id -> label id (the official evaluation server expects label ids).
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def _writer(cfg, save_dir, label_ids=False):
    """on_prediction callback writing <stem>.png (class ids) and overlay/<stem>.jpg.

    label_ids (Cityscapes): the PNGs hold label ids instead of train ids.
    """
    import numpy as np
    from jseg.apis import show_result
    from jseg.data.datasets import dataset_settings
    from jseg.utils.atomic import write_image

    palette = dataset_settings(cfg.data)["palette"]
    os.makedirs(os.path.join(save_dir, "overlay"), exist_ok=True)

    lut = np.array(CITYSCAPES_LABEL_IDS, np.uint8) if label_ids else None

    def write(item, pred):
        stem = os.path.splitext(os.path.basename(item["img_path"]))[0]
        ids = lut[pred] if lut is not None else pred.astype(np.uint8)
        write_image(os.path.join(save_dir, f"{stem}.png"), ids)  # atomic: never a partial PNG
        show_result(item["img_path"], {"pred": pred}, palette, legend=False,
                    out_file=os.path.join(save_dir, "overlay", f"{stem}.jpg"))

    return write


def run(args):
    from jseg.utils.logging import setup_logging

    overrides = list(args.overrides)
    if args.work_dir:
        overrides.append(f"work_dir={args.work_dir}")
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config_file, overrides)

    import signal

    import jittor as jt
    from jseg.models import build_model
    from jseg.utils.env import init_device

    # Jittor installs a SIGINT handler that exits at once; Python's own turns Ctrl-C into
    # KeyboardInterrupt, so a run stops between steps (checkpoints are written atomically).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    setup_logging(jt.rank if jt.in_mpi else 0)
    try:
        device = init_device(cfg.device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    logger.info("%s on %s, config %s", args.task, device, args.config_file)
    if args.task == "train":
        from jseg.engine.trainer import train
        os.makedirs(cfg.work_dir, exist_ok=True)
        if not os.access(cfg.work_dir, os.W_OK):
            raise PermissionError(f"work dir {cfg.work_dir} is not writable; pass --work-dir")
        seed = args.seed if args.seed is not None else cfg.seed
        if seed is not None:  # weight initialisation, the same on every rank
            jt.set_global_seed(seed, different_seed_for_mpi=False)
        model = build_model(cfg.model)
        train(cfg, model, resume=args.resume, load_from=args.load_from, seed=args.seed,
              progress=not args.no_progress)
        logger.info("done; checkpoints, logs and metrics are in %s", cfg.work_dir)
        return 0

    from jseg.data.loader import build_val_loader
    from jseg.checkpoint import load_weights
    from jseg.engine.trainer import run_evaluation

    labelled = cfg.data.val.ann_dir is not None
    if args.task == "val" and not labelled:
        raise ConfigError("--task val computes metrics and needs label maps, but data.val.ann_dir "
                          "is null; use --task test to write predictions for unlabelled images")
    weights = _weights_for_eval(args, cfg)
    model = build_model(cfg.model)
    load_weights(model, weights, strict=True)
    seed = args.seed if args.seed is not None else (cfg.seed if cfg.seed is not None else 0)
    jt.set_global_seed(seed)  # NMF bases: the same seed (and process count) gives the same numbers
    rank, world = (jt.rank, jt.world_size) if jt.in_mpi else (0, 1)
    loader = build_val_loader(cfg, tta=args.tta, rank=rank, world_size=world)
    on_prediction = None
    if args.task == "test":
        save_dir = args.save_dir or os.path.join(cfg.work_dir, "predictions")
        if args.label_ids and cfg.data.type != "cityscapes":
            raise ConfigError(f"--label-ids is for Cityscapes; this config's data.type is "
                              f"{cfg.data.type!r}")
        on_prediction = _writer(cfg, save_dir, label_ids=args.label_ids)
    logger.info("evaluating %s (seed %d%s)", weights, seed, ", multi-scale + flip" if args.tta else "")
    result = run_evaluation(cfg, model, loader, progress=not args.no_progress,
                            on_prediction=on_prediction)
    if args.task == "test":
        logger.info("label maps and overlays written to %s", save_dir)
    if result is None:
        print(f"{len(loader)} label maps written to {save_dir} (no labels, no metrics)")
    else:
        print(f"aAcc {result['aAcc']:.2f}  mIoU {result['mIoU']:.2f}  mAcc {result['mAcc']:.2f}")
    return 0


def main(argv=None):
    args = parse_args(argv)
    from jseg.data.datasets import DataError
    from jseg.checkpoint import WeightsMismatchError
    from jseg.engine.trainer import TrainingError
    from jseg.engine.workdir import WorkDirError
    from jseg.checkpoint.safe_pickle import CheckpointError

    try:
        return run(args)
    except (ConfigError, DataError, WeightsMismatchError, CheckpointError, TrainingError,
            WorkDirError, OSError) as e:  # OSError: e.g. a full disk (writes are atomic)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
