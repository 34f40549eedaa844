"""Serve a local web page that segments the images dropped on it (jseg.deploy.server).

examples:
  python tools/serve.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --checkpoint segnext_t_ade.pkl
  python tools/serve.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml \\
      --onnx segnext_t.onnx --port 8080
  python tools/serve.py --config-file C --checkpoint W.pkl --port 0 model.test_cfg.mode=slide

Open the address it prints (http://127.0.0.1:8000/ by default) and drop an image on the
page, or choose one: it shows the image, the segmentation over it, each class found with its
share of the pixels, the time taken, and a link to the label PNG (class ids, as run_net's
--save-dir writes them). --checkpoint runs the model in Jittor (jseg.apis.inference_model),
--onnx runs a graph of `tools/export.py --format onnx --dynamic --bases input` in
onnxruntime (jseg.deploy.OnnxSegmentor; Jittor is not started). The server listens on
127.0.0.1 only, unless --host says otherwise: it has no login, so --host 0.0.0.0 shows the
demo to the whole network. One line is logged per request; Ctrl-C stops it.
"""
import logging
import os
import sys

from jseg.utils.cli import ToolParser, run_main
import jseg  # noqa: F401; configures Jittor before it is imported


def parse_args(argv=None):
    from jseg.deploy.server import MAX_BYTES, MAX_PIXELS

    p = ToolParser(__doc__)
    p.add_argument("--config-file", required=True, help="YAML config of the model")
    backend = p.add_mutually_exclusive_group(required=True)
    backend.add_argument("--checkpoint", help="weights for Jittor (weights_convert output, a "
                                              "training checkpoint or zoo:NAME)")
    backend.add_argument("--onnx", metavar="FILE", help="an exported ONNX graph, run by "
                                                        "onnxruntime instead of Jittor")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: a free one)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help="Jittor's device (default: the config's)")
    p.add_argument("--opacity", type=float, default=0.5, help="overlay opacity in [0, 1] "
                                                              "(default 0.5)")
    p.add_argument("--max-upload-mb", type=float, default=MAX_BYTES / 2 ** 20,
                   help=f"refuse larger uploads (default {MAX_BYTES / 2 ** 20:g})")
    p.add_argument("--max-megapixels", type=float, default=MAX_PIXELS / 1e6,
                   help=f"refuse images with more pixels (default {MAX_PIXELS / 1e6:g}; "
                        f"Pillow refuses more than 178)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    args = p.parse_intermixed_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port must lie in 0..65535, got {args.port}")
    if not 0.0 <= args.opacity <= 1.0:
        p.error(f"--opacity must lie in [0, 1], got {args.opacity}")
    if not args.max_upload_mb > 0:
        p.error(f"--max-upload-mb must be positive, got {args.max_upload_mb:g}")
    if not 0 < args.max_megapixels <= 178:
        p.error(f"--max-megapixels must lie in (0, 178] (Pillow refuses larger images), "
                f"got {args.max_megapixels:g}")
    if args.onnx and args.device:
        p.error("--device is for Jittor (--checkpoint); onnxruntime runs --onnx on the CPU")
    return args


def build_predictor(args, cfg):
    """(predict(rgb) -> (H, W) int64 class ids, a name for the page) of the chosen backend."""
    if args.onnx:
        from jseg.deploy import OnnxSegmentor
        segmentor = OnnxSegmentor(args.onnx, cfg)
        return (lambda rgb: segmentor(rgb)["pred"]), f"ONNX {os.path.basename(args.onnx)}"
    from jseg.apis import inference_model, init_model
    model = init_model(cfg, args.checkpoint, device=args.device)
    name = f"Jittor {os.path.basename(args.checkpoint)}"
    return (lambda rgb: inference_model(model, rgb)["pred"]), name


def main(argv=None):
    args = parse_args(argv)
    from jseg.checkpoint import CheckpointError, WeightsMismatchError
    from jseg.config import ConfigError, load_config
    from jseg.data.datasets import DataError, dataset_settings
    from jseg.deploy import DeployError
    from jseg.deploy.server import DemoApp, make_server
    from jseg.utils.logging import setup_logging

    known = (ConfigError, CheckpointError, WeightsMismatchError, DataError, DeployError, OSError)
    setup_logging()
    try:
        cfg = load_config(args.config_file, args.overrides)
        settings = dataset_settings(cfg.data)
        try:  # before the weights: a taken port fails at once
            server = make_server(None, args.host, args.port)
        except OSError as e:
            raise OSError(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}; choose "
                          f"another --port (0 picks a free one) or stop what uses it") from None
    except known as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    with server:
        try:
            predict, backend = build_predictor(args, cfg)
        except known as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        server.app = DemoApp(predict, settings["classes"], settings["palette"],
                             title=f"{os.path.basename(args.config_file)} with {backend}",
                             opacity=args.opacity, max_bytes=int(args.max_upload_mb * 2 ** 20),
                             max_pixels=int(args.max_megapixels * 1e6))
        host, port = server.server_address[:2]
        if not host.startswith("127."):
            logging.getLogger("jseg").warning("listening on %s: anyone who can reach this "
                                              "machine can use the demo (it has no login)", host)
        print(f"serving {backend} on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
        server.serve_forever()
    return 0


if __name__ == "__main__":
    run_main(main)
