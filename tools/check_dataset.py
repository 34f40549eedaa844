"""Check a prepared dataset before training: counts, pairing, label values, sizes, unreadable files.

examples:
  python tools/check_dataset.py --config-file configs/segnext/segnext_mscan-t_ade20k-512x512.yaml
  python tools/check_dataset.py --config-file configs/segnext/segnext_mscan-t_cityscapes-1024x1024.yaml \\
      --split val --workers 4 data.data_root=/datasets/cityscapes
  python tools/check_dataset.py --config-file configs/demo/segnext_mscan-t_demo.yaml --no-progress \\
      > check.txt || echo "dataset has errors"

Reads every label and every image header of the config's dataset (in --workers processes,
with a progress bar on stderr) and prints a report on stdout: per split, the images and
labels found against the benchmark's standard split size, image sizes, label file modes
and the pixels of every class after reduce_zero_label (classes never seen are marked);
then the findings, each naming a few of the files and, where it can tell, the likely
cause and the fix:

  errors    unpaired files (images without a label, labels without an image, names of a
            split file with no file), unreadable or truncated files, labels of another size
            than their image, colour (RGB) label PNGs instead of single-channel class ids,
            label values that are neither a class id nor the ignore index 255 (e.g. raw
            Cityscapes labelIds, ADE20K labels without reduce_zero_label), every label
            ignored only
  warnings  a count that differs from the benchmark's (a subset can be intended), classes
            never seen, labels with ignored pixels only, a reduce_zero_label setting that
            does not fit the labels

The last line is the verdict: "verdict: OK", "verdict: WARNINGS (n)" or "verdict: ERRORS (n)"
(n findings). Exit code: 0 for OK and WARNINGS, 2 for ERRORS (so scripts can tell), 1 for a
bad command line, a config error or nothing to check (a missing data_root or image folder,
an image folder without images), printed as one `error:` line on stderr.

Images are not decoded (sizes come from the headers; the file ends are checked for
truncation); labels are decoded as the loader does. Standard split sizes: ADE20K
20,210 / 2,000, Cityscapes 2,975 / 500, Pascal VOC aug 10,582 / 1,449, COCO-Stuff 164k
118,287 / 5,000, Pascal Context 59 4,996 / 5,104; iSAID patches and custom data: counts only.
"""
import os
import sys

from jseg.config import ConfigError, load_config
from jseg.data.check import check_dataset
from jseg.data.datasets import DataError
from jseg.utils.cli import BAD_INPUT, ToolParser, positive_int, run_main

SPLITS = {"train": ("train",), "val": ("val",), "all": ("train", "val")}


def main(argv=None):
    p = ToolParser(__doc__, prog="tools/check_dataset.py")
    p.add_argument("--config-file", required=True, help="config YAML")
    p.add_argument("--split", choices=sorted(SPLITS), default="all",
                   help="which split to check (default: all)")
    p.add_argument("--workers", type=positive_int, default=min(8, os.cpu_count() or 1),
                   help="worker processes reading the files (default: min(8, CPU count))")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("opts", nargs="*", help="config overrides KEY=VALUE")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config_file, args.opts)
        report = check_dataset(cfg, SPLITS[args.split], args.workers,
                               progress=not args.no_progress, source=args.config_file)
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    print(report.text(), flush=True)
    return report.exit_code


if __name__ == "__main__":
    run_main(main)
