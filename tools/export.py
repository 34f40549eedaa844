"""Export a SegNeXt model: an ONNX graph, or our weights as an mmseg 1.x checkpoint.

examples:
  python tools/export.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint zoo:segnext_mscan-t_ade20k --format onnx --shape 512 512 segnext_t.onnx
  python tools/export.py --config-file C --checkpoint W.pkl --format onnx --dynamic out.onnx
  python tools/export.py --config-file C --checkpoint W.pkl --format mmseg segnext_t_mmseg.pth

onnx: the whole segmentor (MSCAN, LightHamHead with the NMF's multiplicative updates
unrolled, the final resize) as one graph built from our modules (jseg.export.onnx; needs
`pip install onnx`, `onnxruntime` for --verify). Input `image` (1, 3, H, W): the normalised
image as the config's test pipeline makes it; outputs `logits` (1, classes, H, W) and `pred`
(1, H, W) class ids. The NMF bases are constants drawn from --seed (deterministic), or with
--bases input a second input `bases` (S, D, R) per image. --dynamic makes the batch, H and W
free (any H, W >= 1, as our model takes them). Whole-image inference only: slide inference
runs the graph per window, TTA per view. --verify (default on when onnxruntime is installed) runs the
graph and our model on one random input with the same bases and prints the difference.
mmseg: a .pth in torch.save's format that torch.load(weights_only=True) and mmseg's
init_model read (jseg.export.mmseg), written without torch.
Errors are one line on stderr and exit code 1; OUT is written atomically.
"""
import importlib.util
import sys


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
    verify = args.verify
    if verify is None:
        verify = importlib.util.find_spec("onnxruntime") is not None
    model = init_model(cfg, args.checkpoint, device="cpu")
    summary = export_onnx(model, args.out, tuple(args.shape), bases=args.bases, seed=args.seed,
                          opset=args.opset, dynamic=args.dynamic)
    dims = "(N, 3, H, W) free" if args.dynamic else f"(1, 3, {args.shape[0]}, {args.shape[1]})"
    bases = {"seed": f"constants from seed {args.seed}", "input": "the graph input bases",
             "fixed": "the model's fixed bases (rand_init false)"}[summary["bases"]]
    print(f"wrote {args.out}: opset {summary['opset']}, {summary['nodes']} nodes, input "
          f"image {dims}, outputs logits and pred, NMF bases {bases}, "
          f"{summary['bytes'] / 2 ** 20:.1f} MiB")
    if verify and not _verify(model, args.out, tuple(args.shape), "bases" in summary["inputs"],
                              args.seed, print):
        print("error: the exported graph does not match jseg's model within 1e-4 / 99.9%",
              file=sys.stderr)
        return 3
    return 0


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
