"""Train, evaluate or predict with a YAML config.

examples:
  # train (checkpoints, logs and the resolved config go to work_dirs/<config name>)
  python tools/run_net.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml --task train
  # start from an ImageNet backbone converted by weights_convert, with overrides
  python tools/run_net.py --config-file C --task train model.backbone.pretrained=mscan_t.pkl train.max_iters=80000
  # continue the newest checkpoint of the run (never happens without --resume)
  python tools/run_net.py --config-file C --task train --resume auto
  # evaluate weights (mIoU table), optionally with multi-scale + flip; the confusion matrix
  # goes to the work dir (confusion_matrix.npy / .png)
  python tools/run_net.py --config-file C --task val --load-from work_dirs/x/checkpoints/iter_00160000.pkl --tta
  # mmseg's other metrics too: Dice, and F-score / precision / recall
  python tools/run_net.py --config-file C --task val --load-from W "evaluation.metrics=[mIoU,mDice,mFscore]"
  # the spread of mIoU over 5 NMF seeds (mean, std, min, max, per class too; backbone once)
  python tools/run_net.py --config-file C --task val --load-from W --nmf-seeds 5
  # write label maps and colour overlays for the validation images
  python tools/run_net.py --config-file C --task test --load-from W --save-dir results/
  python tools/run_net.py --config-file C --task val --backend onnx --onnx segnext.onnx
  # several processes (data parallel, synchronised BatchNorm):
  mpirun -np 2 python tools/run_net.py --config-file C --task train

Messages of the training and evaluation engine name its settings: resume=auto is
--resume auto, load_from is --load-from, work_dir is --work-dir (or the override
work_dir=DIR), seed is --seed (or seed=N).
"""
import logging
import os
import sys

from jseg.utils.cli import ToolParser, run_main
from jseg.config import ConfigError, load_config  # jseg configures Jittor

logger = logging.getLogger("jseg")


def parse_args(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--config-file", required=True, help="YAML config")
    parser.add_argument("--task", required=True, choices=("train", "val", "test"))
    parser.add_argument("--resume", metavar="CKPT|auto",
                        help="train: continue this checkpoint (auto: the newest in the work dir)")
    parser.add_argument("--resume-changed", metavar="KEY[,KEY]", default="",
                        help="train with --resume: accept these config keys (or sections, "
                             "e.g. optimizer) differing from the checkpoint's config")
    parser.add_argument("--load-from", metavar="WEIGHTS",
                        help="weights to start from (train) or to evaluate (val / test)")
    parser.add_argument("--work-dir", help="output folder (default: work_dirs/<config name>)")
    parser.add_argument("--save-dir", help="test: folder for label maps and overlays")
    parser.add_argument("--seed", type=int, help="random seed (data order, augmentation, NMF bases)")
    parser.add_argument("--tta", action="store_true", help="val / test: multi-scale + flip")
    parser.add_argument("--nmf-seeds", type=int, default=1, metavar="K",
                        help="val: evaluate with the NMF seeds seed .. seed+K-1 and report "
                             "the spread of the metrics (default 1)")
    parser.add_argument("--label-ids", action="store_true",
                        help="test on Cityscapes: write label ids (for the official evaluation "
                             "server) instead of train ids")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config")
    parser.add_argument("--backend", choices=("jittor", "onnx"), default="jittor",
                        help="val / test: our Jittor model (default), or an exported graph run "
                             "by onnxruntime (--onnx F) with the same pipeline")
    parser.add_argument("--onnx", metavar="F", help="the graph of --backend onnx (tools/export.py "
                        "--format onnx --dynamic --bases input)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.max_iters=2000")
    return parser.parse_intermixed_args(argv)  # KEY=VALUE may stand between options


def run(args):
    from jseg.utils.logging import setup_logging

    overrides = list(args.overrides)
    if args.work_dir:
        overrides.append(f"work_dir={args.work_dir}")
    if args.device:
        overrides.append(f"device={args.device}")
    cfg = load_config(args.config_file, overrides)
    if args.nmf_seeds < 1:
        raise ConfigError(f"--nmf-seeds must be 1 or more, got {args.nmf_seeds}")
    if args.nmf_seeds > 1 and args.task != "val":
        raise ConfigError(f"--nmf-seeds measures the spread of the metrics: use it with "
                          f"--task val, not --task {args.task}")
    if (args.backend == "onnx") != (args.onnx is not None):
        raise ConfigError("--backend onnx and --onnx F go together: pass both to evaluate an "
                          "exported graph, neither for the Jittor model")
    if args.backend == "onnx" and args.task == "train":
        raise ConfigError("--backend onnx evaluates an exported graph: use it with --task val "
                          "or --task test")
    if args.task != "train" and not (args.load_from or args.resume or args.onnx):
        raise ConfigError(f"--task {args.task} needs weights: pass --load-from WEIGHTS (or "
                          "--resume auto for the newest checkpoint of the work dir)")

    import jittor as jt  # jseg keeps Python's Ctrl-C (KeyboardInterrupt): a run stops
    from jseg.platform.env import init_device  # between steps, checkpoints are written atomically

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
        train(cfg, resume=args.resume, load_from=args.load_from, seed=args.seed,
              progress=not args.no_progress,
              resume_changed=[k.strip() for k in args.resume_changed.split(",") if k.strip()])
        logger.info("done; checkpoints, logs and metrics are in %s", cfg.work_dir)
        return 0

    from jseg.engine.evaluator import evaluate_weights
    from jseg.engine.metrics import format_summary

    save_dir = None
    if args.task == "test":
        save_dir = args.save_dir or os.path.join(cfg.work_dir, "predictions")
    result, count = evaluate_weights(
        cfg, args.load_from or args.resume, save_dir=save_dir, metrics=args.task == "val",
        tta=args.tta, seed=args.seed, label_ids=args.label_ids, progress=not args.no_progress,
        nmf_seeds=args.nmf_seeds, onnx=args.onnx)
    if args.nmf_seeds > 1:
        v = result["summary"]["mIoU"]
        print(f"mIoU over {args.nmf_seeds} NMF seeds: mean {v['mean']:.2f}  std {v['std']:.2f}"
              f"  min {v['min']:.2f}  max {v['max']:.2f}")
    elif result is None:
        print(f"{count} label maps written to {save_dir} (no labels, no metrics)")
    else:
        print(format_summary(result))
    return 0


def main(argv=None):
    args = parse_args(argv)
    from jseg.checkpoint import CheckpointError, WeightsMismatchError
    from jseg.data.datasets import DataError
    from jseg.deploy import DeployError
    from jseg.engine.evaluator import EvaluationError
    from jseg.engine.trainer import TrainingError, TrainingStopped
    from jseg.engine.workdir import WorkDirError

    try:
        return run(args)
    except (ConfigError, DataError, WeightsMismatchError, CheckpointError, TrainingError,
            EvaluationError, DeployError, WorkDirError, OSError) as e:  # OSError: e.g. a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TrainingStopped as e:  # logged; exit as a process ended by the signal reports
        return 128 + e.signum


if __name__ == "__main__":
    run_main(main)
