"""Plot loss, learning rate and mIoU curves from a run's metrics.jsonl.

examples:
  python tools/analyze_logs.py work_dirs/demo/metrics.jsonl --out work_dirs/demo/curves.png
  python tools/analyze_logs.py run_a/metrics.jsonl run_b/metrics.jsonl --out compare.png

Needs matplotlib (pip install -e .[plot]). Several files are drawn on the same axes.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jseg.utils.cli import ToolParser  # noqa: E402  (configures Jittor's env only)


def read_metrics(path):
    """(train records, val records) of a metrics.jsonl file; a resumed run's repeated
    iterations keep their last record."""
    train, val = {}, {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path} line {n} is not JSON: {line[:60]!r}") from None
            (train if rec.get("mode") == "train" else val)[rec.get("iter")] = rec
    return [train[k] for k in sorted(train)], [val[k] for k in sorted(val) if k is not None]


def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("files", nargs="+", metavar="METRICS_JSONL")
    p.add_argument("--out", required=True, help="output PNG")
    args = p.parse_args(argv)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("error: matplotlib is not installed; pip install -e .[plot]", file=sys.stderr)
        return 1
    runs = []
    for path in args.files:
        if not os.path.isfile(path):
            print(f"error: metrics file not found: {path}", file=sys.stderr)
            return 1
        try:
            runs.append((path, *read_metrics(path)))
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for path, train, val in runs:
        label = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        its = [r["iter"] for r in train]
        axes[0].plot(its, [r["loss"] for r in train], label=label)
        axes[1].plot(its, [r["lr"] for r in train], label=label)
        axes[2].plot([r["iter"] for r in val], [r["mIoU"] for r in val], "o-", label=label)
    for ax, title in zip(axes, ("loss", "learning rate", "mIoU (%)")):
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(f"curves of {len(runs)} run(s) written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
