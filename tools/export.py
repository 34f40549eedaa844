"""Export a SegNeXt model: an ONNX graph, or our weights as an mmseg 1.x checkpoint.

examples:
  python tools/export.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint zoo:segnext_mscan-t_ade20k --format onnx --shape 512 512 segnext_t.onnx
  python tools/export.py --config-file C --checkpoint W.pkl --format onnx --dynamic out.onnx
  python tools/export.py --config-file C --checkpoint W.pkl --format onnx --dynamic \
      --bases input --int8 --calib 32 segnext_int8.onnx
  python tools/export.py --config-file C --checkpoint W.pkl --format mmseg segnext_t_mmseg.pth

onnx: the whole segmentor (MSCAN, LightHamHead with the NMF's multiplicative updates
unrolled, the final resize) as one graph built from our modules (jseg.export.onnx; needs
`pip install onnx`, `onnxruntime` for --verify). Input `image` (1, 3, H, W): the normalised
image as the config's test pipeline makes it; outputs `logits` (1, classes, H, W) and `pred`
(1, H, W) class ids. The NMF bases are constants drawn from --seed (deterministic), or with
--bases input a second input `bases` (S, D, R) per image. --dynamic makes the batch, H and W
free (any H, W >= 1, as our model takes them). Whole-image inference only: slide inference
runs the graph per window, TTA per view (jseg.deploy.OnnxSegmentor does both). --verify
(default on when onnxruntime is installed) runs the graph and our model on one random input
with the same bases and prints the difference. --int8 writes the graph quantised to INT8
(QDQ, jseg.export.quantize), calibrated on --calib N training images through the test
pipeline; it needs --dynamic, and --verify then reports its agreement with the float graph
on validation images.
mmseg: a .pth in torch.save's format that torch.load(weights_only=True) and mmseg's
init_model read (jseg.export.mmseg), written without torch.
Errors are one line on stderr and exit code 1; OUT is written atomically.
"""
import contextlib
import importlib.util
import os
import sys
import tempfile


import numpy as np

from jseg.utils.cli import ToolParser, run_main
from jseg.config import ConfigError, load_config  # jseg configures Jittor first
from jseg.checkpoint import CheckpointError
from jseg.checkpoint.mapping import ConversionError
from jseg.checkpoint.zoo import fetch_weights, is_remote
from jseg.utils.atomic import check_writable


def parse_args(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--config-file", required=True, help="YAML config of the model")
    parser.add_argument("--checkpoint", required=True,
                        help="weights: converted by weights_convert, saved by training, or "
                             "zoo:NAME")
    parser.add_argument("--format", required=True, choices=("onnx", "mmseg"))
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="onnx: input height and width (default 512 512)")
    parser.add_argument("--dynamic", action="store_true", help="onnx: free input H and W")
    parser.add_argument("--bases", choices=("seed", "input"), default="seed",
                        help="onnx: NMF bases as constants from --seed, or a graph input")
    parser.add_argument("--seed", type=int, default=0, help="onnx: seed of the NMF bases")
    parser.add_argument("--opset", type=int, default=17, help="onnx: opset (>= 17)")
    parser.add_argument("--int8", action="store_true",
                        help="onnx: quantise to INT8 (QDQ), calibrated on --calib images")
    parser.add_argument("--calib", type=int, default=32, metavar="N",
                        help="onnx --int8: training images to calibrate on (default 32)")
    verify = parser.add_mutually_exclusive_group()
    verify.add_argument("--verify", dest="verify", action="store_true", default=None,
                        help="onnx: compare onnxruntime with our model on a random input "
                             "(default: when onnxruntime is installed)")
    verify.add_argument("--no-verify", dest="verify", action="store_false")
    parser.add_argument("out", metavar="OUT", help="file to write (.onnx or .pth)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser.parse_intermixed_args(argv)


def export_mmseg(args):
    from jseg.export.mmseg import export_mmseg_checkpoint

    load_config(args.config_file, args.overrides)  # a bad config fails here, before reading
    weights = fetch_weights(args.checkpoint) if is_remote(args.checkpoint) else args.checkpoint
    export_mmseg_checkpoint(weights, args.out, config_file=args.config_file)


def _verify(model, path, shape, bases_input, seed, report):
    """Our logits vs onnxruntime's on one random input with the same NMF bases."""
    import jittor as jt
    from jseg.export.onnx import graph_bases, run_onnx

    rng = np.random.default_rng(seed)
    h, w = shape
    image = rng.standard_normal((1, 3, h, w)).astype(np.float32)
    bases = graph_bases(model, seed)  # (S, D, R): one image's, as the graph holds them
    ham = model.decode_head.hamburger.ham
    saved = ham.bases_fn
    ham.bases_fn = lambda B, S, D, R: jt.array(np.tile(bases, (B, 1, 1)))
    try:
        with jt.no_grad():
            ours = model.encode_decode(jt.array(image)).numpy()
    finally:
        ham.bases_fn = saved
    theirs = run_onnx(path, image, bases=bases if bases_input else None)
    rel = float(np.abs(ours - theirs).max() / max(np.abs(ours).max(), 1e-12))
    agreement = float((ours.argmax(1) == theirs.argmax(1)).mean())
    report(f"verify: onnxruntime vs jseg at {h}x{w}, same NMF bases: max rel error {rel:.2e}, "
           f"argmax agreement {agreement * 100:.3f}%")
    return rel <= 1e-4 and agreement >= 0.999


def export_onnx_file(args):
    from jseg.apis import init_model
    from jseg.export.onnx import export_onnx

    cfg = load_config(args.config_file, args.overrides)
    if args.int8:
        _check_int8_args(args)
    verify = args.verify
    if verify is None:
        verify = importlib.util.find_spec("onnxruntime") is not None
    model = init_model(cfg, args.checkpoint, device="cpu")
    # --int8: the float graph is an intermediate, staged beside OUT and removed after
    folder = os.path.dirname(os.path.abspath(args.out))
    staging = (tempfile.TemporaryDirectory(dir=folder, prefix=".export-") if args.int8
               else contextlib.nullcontext())
    with staging as work:
        fp32 = os.path.join(work, "fp32.onnx") if args.int8 else args.out
        summary = export_onnx(model, fp32, tuple(args.shape), bases=args.bases, seed=args.seed,
                              opset=args.opset, dynamic=args.dynamic)
        dims = ("(N, 3, H, W) free" if args.dynamic
                else f"(1, 3, {args.shape[0]}, {args.shape[1]})")
        bases = {"seed": f"constants from seed {args.seed}", "input": "the graph input bases",
                 "fixed": "the model's fixed bases (rand_init false)"}[summary["bases"]]
        print(f"{'float graph' if args.int8 else f'wrote {args.out}'}: opset {summary['opset']}, "
              f"{summary['nodes']} nodes, input image {dims}, outputs logits and pred, NMF bases "
              f"{bases}, {summary['bytes'] / 2 ** 20:.1f} MiB")
        if verify and not _verify(model, fp32, tuple(args.shape), "bases" in summary["inputs"],
                                  args.seed, print):
            print("error: the exported graph does not match jseg's model within 1e-4 / 99.9%",
                  file=sys.stderr)
            return 3
        if args.int8:
            _write_int8(cfg, fp32, args, verify)
    return 0


def _check_int8_args(args):
    if args.calib < 1:
        raise ValueError(f"--calib must be 1 or more training images, got {args.calib}")
    if not args.dynamic:
        raise ValueError("--int8 calibrates on the test pipeline's images, which have many "
                         "sizes: add --dynamic")
    if importlib.util.find_spec("onnxruntime") is None:
        raise ImportError("--int8 needs onnxruntime's quantiser: pip install onnxruntime")


def _write_int8(cfg, fp32, args, verify):
    """Quantise `fp32` into args.out, calibrated on args.calib training images spread over
    the split; with verify, print its argmax agreement with fp32 on validation images."""
    import time

    from jseg.data.datasets import build_dataset
    from jseg.deploy import OnnxSegmentor
    from jseg.export.quantize import INT8_OPS, quantize_int8

    train = build_dataset(cfg.data, "train")
    picks = sorted(set(np.linspace(0, len(train) - 1, min(args.calib, len(train))).round()
                       .astype(int).tolist()))
    start = time.time()
    forwards = quantize_int8(fp32, args.out, cfg, [train[i]["img"] for i in picks])
    size = os.path.getsize(args.out)
    print(f"wrote {args.out}: INT8 (QDQ) {', '.join(INT8_OPS)} ops, per-channel weights, "
          f"calibrated on {len(picks)} training images ({forwards} forwards, "
          f"{time.time() - start:.1f}s), {size / 2 ** 20:.1f} MiB")
    if verify:
        val = build_dataset(cfg.data, "val")
        images = [val[i]["img"] for i in range(min(8, len(val)))]
        full, int8 = OnnxSegmentor(fp32, cfg), OnnxSegmentor(args.out, cfg)
        same = sum(int((full(img)["pred"] == int8(img)["pred"]).sum()) for img in images)
        pixels = sum(img.shape[0] * img.shape[1] for img in images)
        print(f"verify: INT8 vs float graph on {len(images)} validation images: argmax "
              f"agreement {same / pixels * 100:.2f}%")


def main(argv=None):
    args = parse_args(argv)
    try:
        check_writable(args.out)
        if args.format == "mmseg":
            export_mmseg(args)
            return 0
        return export_onnx_file(args)
    except (ConfigError, CheckpointError, ConversionError, OSError, ValueError, ImportError,
            NotImplementedError) as e:
        # ValueError: WeightsMismatchError and bad export arguments; ImportError: no onnx;
        # NotImplementedError: a module the exporter does not know (a customised model)
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    run_main(main)
