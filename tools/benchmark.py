"""Time SegNeXt inference or a training step, optionally against mmseg's PyTorch model.

examples:
  python tools/benchmark.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml
  python tools/benchmark.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --mode train --batch 2 --iters 5
  python tools/benchmark.py --config-file configs/segnext/segnext_mscan-b_ade20k-512x512.yaml \\
      --threads 2 --vs-torch --vs-onnxruntime
  python tools/benchmark.py --config-file C --checkpoint segnext_t.pkl --shape 1024 2048 \\
      model.test_cfg.mode=slide model.test_cfg.crop_size=[1024,1024] model.test_cfg.stride=[768,768]
  python tools/benchmark.py --config-file C --threads 2 --iters 3 --int8 photos/*.jpg

infer: eval-mode model.inference (whole or slide, as the config's test_cfg says) under
jt.no_grad, timed to jt.sync_all; reported per image. train: forward on random input and
labels, optimizer.backward, step (AdamW), timed to jt.sync_all; reported per step.
Printed: median, IQR and min - max of the timed iterations, images per second, peak memory
(CPU: peak RSS of the process; GPU: Jittor's allocator), device, threads, versions, load.

--threads T sets OMP_NUM_THREADS=T before Jittor starts (its oneDNN convolutions use GNU
OpenMP) and torch.set_num_threads(T); default: OMP_NUM_THREADS, else every CPU this process
may use. --vs-torch builds mmseg 1.2.2's model of the same config with the same weights in a
child process and alternates rounds with Jittor; it prints Jittor time / PyTorch time.
Needs the reference: pip install -e .[parity]. --vs-onnxruntime exports the same model to
ONNX (jseg.export.onnx) and times onnxruntime on it, interleaved, with the same threads
(inference, whole mode; pip install -e .[export]). --int8 PHOTO... times our model, its
graph and the graph quantised to INT8 on real photos at --shape, with argmax agreement
(jseg.diagnostics.int8_bench). Details: jseg/diagnostics/benchmark.py.
Exit codes: 0 done, 1 bad input or no reference installed.
"""
import os
import sys

from jseg.utils.cli import ToolParser, run_main
from jseg.checkpoint.zoo import is_remote
from jseg.config import load_config  # jseg configures Jittor; no Jittor yet
from jseg.diagnostics.benchmark import (MODES, VS_ONNXRUNTIME_HINT, VS_TORCH_HINT,
                                        check_settings, format_report, onnxruntime_available,
                                        run_benchmark, torch_available)


def parse_args(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--config-file", required=True, help="YAML config")
    parser.add_argument("--checkpoint", default=None,
                        help="weights (converted by weights_convert or saved by training, or "
                             "zoo:NAME); default: random weights")
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input height and width (default 512 512)")
    parser.add_argument("--batch", type=int, default=1, help="images per iteration (default 1)")
    parser.add_argument("--mode", choices=MODES, default="infer",
                        help="infer: inference per image; train: one AdamW step (default infer)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed iterations first; the first compiles Jittor's kernels "
                             "(default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for Jittor and torch (default: OMP_NUM_THREADS, else "
                             "all CPUs usable)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random weights, input and labels (default 0)")
    parser.add_argument("--vs-torch", action="store_true",
                        help="also time mmseg's PyTorch model, interleaved, and print the ratio")
    parser.add_argument("--vs-onnxruntime", action="store_true",
                        help="also time the model exported to ONNX, run by onnxruntime with "
                             "the same threads, interleaved (inference, whole mode)")
    parser.add_argument("--floor", action="store_true",
                        help="also measure the machine's sgemm peak and report Jittor's time "
                             "against the model's MACs at that rate (inference only)")
    parser.add_argument("--int8", nargs="+", metavar="PHOTO",
                        help="instead: time our model, its ONNX graph and the graph quantised to "
                             "INT8 on these photos (the first --calib calibrate), interleaved, "
                             "with argmax agreement (jseg.diagnostics.int8_bench)")
    parser.add_argument("--calib", type=int, default=None, metavar="K",
                        help="--int8: photos to calibrate on (default: half of them)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.test_cfg.mode=slide")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.threads is not None and args.threads <= 0:
            raise ValueError(f"--threads must be a positive integer, got {args.threads}")
        check_settings(args.mode, tuple(args.shape), args.batch, args.iters, args.warmup,
                       args.floor)
        if args.vs_torch and not torch_available():
            raise ValueError(VS_TORCH_HINT)
        if args.vs_onnxruntime and not onnxruntime_available():
            raise ValueError(VS_ONNXRUNTIME_HINT)
        cfg = load_config(args.config_file, overrides=args.overrides)
        if args.checkpoint is not None and not os.path.isfile(args.checkpoint) \
                and not is_remote(args.checkpoint):
            raise ValueError(f"--checkpoint {args.checkpoint}: no such file")
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 1

    from jseg.utils.logging import setup_logging
    setup_logging()
    if args.int8:
        return _int8(args, cfg)
    try:
        result = run_benchmark(cfg, mode=args.mode, shape=args.shape, batch=args.batch,
                               iters=args.iters, warmup=args.warmup, checkpoint=args.checkpoint,
                               vs_torch=args.vs_torch, threads=args.threads, seed=args.seed,
                               config_name=args.config_file,
                               vs_onnxruntime=args.vs_onnxruntime, floor=args.floor)
    except (ValueError, OSError) as e:
        # BenchmarkError, CheckpointError, WeightsMismatchError, a model the config cannot build
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(format_report(result)))
    return 0


def _int8(args, cfg):
    from jseg.diagnostics.int8_bench import format_int8_report, run_int8_benchmark
    try:
        missing = [p for p in args.int8 if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"--int8: no such photo(s): {', '.join(missing)}")
        if not onnxruntime_available():
            raise ValueError(VS_ONNXRUNTIME_HINT)
        result = run_int8_benchmark(cfg, args.int8, calib=args.calib, shape=tuple(args.shape),
                                    iters=args.iters, warmup=args.warmup, threads=args.threads,
                                    seed=args.seed, checkpoint=args.checkpoint,
                                    config_name=args.config_file)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(format_int8_report(result)))
    return 0


if __name__ == "__main__":
    run_main(main)
