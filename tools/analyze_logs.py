"""Plot loss, learning rate and mIoU curves from a run's metrics.jsonl.

examples:
  python tools/analyze_logs.py work_dirs/demo/metrics.jsonl --out work_dirs/demo/curves.png
  python tools/analyze_logs.py run_a/metrics.jsonl run_b/metrics.jsonl --out compare.png

Needs matplotlib (pip install -e .[plot]). Several files are drawn on the same axes. The
suffix of --out picks the format (.png, .pdf, .svg, ...); the file is written atomically.
Lines that cannot be plotted (not JSON, not a JSON object, a train record without iter,
loss and lr, a val record without iter and mIoU) are skipped with one warning per file.
"""
import contextlib
import json
import os
import sys

from jseg.utils.cli import ToolParser, run_main  # configures Jittor's env only
from jseg.utils.atomic import atomic_write, check_writable


def _number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plottable(rec):
    """'train' or 'val' for a record the curves can use, else None."""
    if not isinstance(rec, dict) or not _number(rec.get("iter")):
        return None
    if rec.get("mode") == "train":
        return "train" if _number(rec.get("loss")) and _number(rec.get("lr")) else None
    # an mIoU of nan (no class present) is written as null
    return "val" if _number(rec.get("mIoU")) or ("mIoU" in rec and rec["mIoU"] is None) else None


def read_metrics(path):
    """(train records, val records, lines skipped) of a metrics.jsonl file; a resumed run's
    repeated iterations keep their last record. Skipped: lines that are not JSON, not an
    object, or lack what the curves need (see the module docstring)."""
    records = {"train": {}, "val": {}}
    skipped = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            mode = _plottable(rec)
            if mode is None:
                skipped += 1
                continue
            records[mode][rec["iter"]] = rec
    train, val = records["train"], records["val"]
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val)], skipped


def _nan(value):
    return float("nan") if value is None else value


def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("files", nargs="+", metavar="METRICS_JSONL")
    p.add_argument("--out", required=True, help="output image (.png, .pdf, .svg, ...)")
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is not installed; pip install -e .[plot]", file=sys.stderr)
        return 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    formats = fig.canvas.get_supported_filetypes()
    suffix = os.path.splitext(args.out)[1][1:].lower()
    if suffix not in formats:
        why = f"matplotlib cannot write .{suffix} files" if suffix else "no suffix to pick a format"
        print(f"error: --out {args.out}: {why}; end it in one of "
              f"{', '.join('.' + s for s in sorted(formats))}", file=sys.stderr)
        return 1
    runs = []
    for path in args.files:
        if not os.path.isfile(path):
            print(f"error: metrics file not found: {path}", file=sys.stderr)
            return 1
        try:
            train, val, skipped = read_metrics(path)
        except OSError as e:
            print(f"error: cannot read {path}: {e.strerror or e}", file=sys.stderr)
            return 1
        if skipped:
            print(f"warning: {path}: {skipped} line(s) skipped that cannot be plotted (not a "
                  f"JSON object, or without iter and loss / lr / mIoU)", file=sys.stderr)
        if not train and not val:
            print(f"error: nothing to plot in {path}: no train record with iter, loss and lr, "
                  f"no val record with iter and mIoU", file=sys.stderr)
            return 1
        runs.append((path, train, val))
    for path, train, val in runs:
        label = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        its = [r["iter"] for r in train]
        axes[0].plot(its, [r["loss"] for r in train], label=label)
        axes[1].plot(its, [r["lr"] for r in train], label=label)
        axes[2].plot([r["iter"] for r in val], [_nan(r["mIoU"]) for r in val], "o-", label=label)
    for ax, title in zip(axes, ("loss", "learning rate", "mIoU (%)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    try:
        with contextlib.suppress(OSError):  # if it fails, check_writable says why
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        check_writable(args.out)
        with atomic_write(args.out) as f:
            fig.savefig(f, format=suffix, dpi=100)
    except OSError as e:  # a read-only or missing folder, a full disk
        why = f"cannot write --out {args.out}: {e.strerror}" if e.strerror else str(e)
        print(f"error: {why}; choose a writable folder", file=sys.stderr)
        return 1
    print(f"curves of {len(runs)} run(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    run_main(main)
