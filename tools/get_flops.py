"""Print a model's parameter count and GMACs at an input size.

examples:
  python tools/get_flops.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml
  python tools/get_flops.py --config-file configs/segnext/segnext_mscan-t_cityscapes-1024x1024.yaml --shape 1024 2048

MACs count convolutions and the decode head's NMF matmuls (at eval steps), as the SegNeXt
paper's "FLOPs" do (see jseg/diagnostics/flops.py). The model is only built and traced, never run,
so this takes seconds even for MSCAN-L at 2048x1024.
"""
import sys

from jseg.utils.cli import ToolParser, run_main
from jseg.config import ConfigError, load_config  # jseg configures Jittor


def parse_args(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--config-file", required=True, help="YAML config")
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 512), metavar=("H", "W"),
                        help="input height and width (default 512 512)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. model.decode_head.num_classes=19")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    height, width = args.shape
    if height <= 0 or width <= 0:
        print(f"error: --shape must be two positive integers, got {height} {width}",
              file=sys.stderr)
        return 1
    try:
        cfg = load_config(args.config_file, overrides=args.overrides)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    from jseg.models import build_model
    from jseg.diagnostics.flops import model_complexity

    try:
        model = build_model(cfg["model"])
    except ValueError as e:
        print(f"error: cannot build the model of {args.config_file}: {e}", file=sys.stderr)
        return 1
    in_channels = cfg["model"]["backbone"]["in_channels"]
    result = model_complexity(model, (1, in_channels, height, width))
    print(f"config:     {args.config_file}")
    print(f"input:      1 x {in_channels} x {height} x {width}")
    print(f"parameters: {result['params']:,} ({result['params'] / 1e6:.2f} M)")
    print(f"MACs:       {result['macs'] / 1e9:.2f} G")
    for part, macs in result["macs_by_part"].items():
        print(f"  {part + ':':<14}{macs / 1e9:.2f} G")
    return 0


if __name__ == "__main__":
    run_main(main)
