"""One prepared check of jseg on an NVIDIA GPU; prints one table (details in
jseg/diagnostics/gpu_check.py).

    python tools/gpu_check.py                 # on a GPU machine: about 5-8 minutes
    python tools/gpu_check.py --quick         # small smoke run (CPU without a GPU)
    python tools/gpu_check.py --json out.json # the rows as JSON too

Checks: environment (toolkit, driver, cuBLAS/cuDNN); GPU vs CPU logits of SegNeXt-T/S at
512x512 with pinned NMF bases (parity tolerances); 20 training steps fp32 and AMP on the demo
data (finite, falling, loss scale); resume exactness; inference ms/img and training s/step
of T/S/B/L at 512x512, fp32 and AMP, GPU memory; mmseg's numbers on the same GPU where
PyTorch and mmsegmentation import. Exit 0 when every check passed, 1 otherwise.
"""
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if glob.glob("/dev/nvidia[0-9]*"):  # before jseg sets Jittor's environment
    # Most of a first GPU run is nvcc compiling kernels: let Jittor compile a graph's
    # kernels in parallel here (jseg's default compiles on the calling thread, see
    # jseg.utils.env); a value in the environment wins.
    os.environ.setdefault("use_parallel_op_compiler", str(min(16, os.cpu_count() or 1)))

from jseg.utils.cli import ToolParser  # noqa: E402


def main(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="64x64, SegNeXt-T only, 4 training steps")
    parser.add_argument("--variants", default=None,
                        help="speed section: letters of the variants (default tsbl; quick: t)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size (default 512 512; quick: 64 64)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per precision (default 20; quick: 4)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    parser.add_argument("--no-mmseg", action="store_true",
                        help="skip mmseg's numbers even where it can be imported")
    parser.add_argument("--data-root", default=None,
                        help="demo data (default data/demo, made there if missing)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    variants = args.variants
    if variants is not None and (not variants or set(variants) - set("tsbl")):
        parser.error(f"--variants takes letters from 'tsbl', got {variants!r}")
    if args.steps is not None and args.steps < 2:
        parser.error(f"--steps must be at least 2, got {args.steps}")

    from jseg.diagnostics.gpu_check import format_table, run_gpu_check

    rows = run_gpu_check(quick=args.quick, variants=tuple(variants) if variants else None,
                         size=args.size, steps=args.steps, iters=args.iters,
                         with_mmseg=False if args.no_mmseg else None, data_root=args.data_root,
                         out=lambda *a, **k: print(*a, file=sys.stderr, **k))
    print(format_table(rows))
    if args.json:
        from jseg.utils.atomic import atomic_write
        with atomic_write(args.json, "w") as f:
            json.dump([list(r) for r in rows], f, indent=1)
    failed = [r for r in rows if r[3] == "FAIL"]
    print(f"{len(failed)} check(s) failed" if failed else "every check passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
