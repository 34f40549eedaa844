"""Convert a SegNeXt checkpoint (PyTorch or Jittor/JSeg) into jseg's checkpoint format.

    python weights_convert/convert.py SRC DST [--format auto|mmseg|official|imagenet|jseg]
                                              [--config-file CONFIG]

SRC may also be zoo:NAME (python tools/list_models.py lists them) or an http(s) URL: the
file is downloaded into the cache (jseg.checkpoint.zoo: resumable, SHA-256 checked) first.

A command line over `jseg.checkpoint.convert.convert_checkpoint` (see there): SRC is
read without torch and without running code from the file, renamed into our layout,
checked to form a complete SegNeXt and, with --config-file, against the model that
config builds; DST is written atomically. Errors are one line on stderr and exit code 1.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a checkout: make `import jseg` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jseg.utils.cli import ToolParser, run_main  # noqa: E402  (jseg configures Jittor first)
from jseg.checkpoint import CheckpointError  # noqa: E402
from jseg.checkpoint.convert import convert_checkpoint  # noqa: E402
from jseg.checkpoint.mapping import FORMATS, ConversionError  # noqa: E402
from jseg.checkpoint.zoo import fetch_source, is_remote  # noqa: E402

__all__ = ["main"]


def main(argv=None):
    parser = ToolParser(
        "Convert a SegNeXt checkpoint (mmseg 1.x, official PyTorch, ImageNet MSCAN or Jittor/JSeg) "
        "into jseg's checkpoint format, safely (no code from the file runs).",
        prog="weights_convert/convert.py")
    parser.add_argument("src", metavar="SRC",
                        help="checkpoint to read (.pth, .pt, .pkl), zoo:NAME or an http(s) URL")
    parser.add_argument("dst", metavar="DST", help="jseg checkpoint to write")
    parser.add_argument("--format", default="auto", choices=["auto", *FORMATS],
                        help="layout of SRC (default: detect it from the keys)")
    parser.add_argument("--config-file", default=None, metavar="CONFIG",
                        help="also check every key and shape against the model this config "
                             "builds (needs Jittor)")
    args = parser.parse_args(argv)
    try:
        src, fmt = args.src, args.format
        if is_remote(src):
            src, zoo_format = fetch_source(src)
            fmt = zoo_format if fmt == "auto" else fmt
        convert_checkpoint(src, args.dst, fmt, args.config_file)
    except (CheckpointError, ConversionError, OSError, ValueError) as e:
        # ValueError: the config's own errors (ConfigError) and bad values in them
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_main(main)
