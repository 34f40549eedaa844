"""One prepared check of jseg on an NVIDIA GPU, made for a short slot (details in
jseg/diagnostics/gpu_check.py). Each row is printed and appended to a JSON-lines file as
soon as it is measured, most wanted first; the table comes at the end.

    python tools/gpu_check.py --deadline 420            # on a GPU machine
    python tools/gpu_check.py --skip-done work_dirs/gpu_check.jsonl   # the rows not yet measured
    python tools/gpu_check.py --quick                   # small smoke run (the CPU without a GPU)

Order: environment and the GPU gate; SegNeXt-T GPU vs CPU logits; T inference (jseg fp32,
AMP; mmseg); fp32 training on the demo data; T training step (jseg, mmseg); AMP training;
resume; then S, B, L. mmseg's rows run in a child process (`--mmseg-path` is its Python
path, e.g. where its packages live beside the host's numpy 2 and torch).

Exit codes: 0 every check measured and passed; 1 a check failed; 2 no GPU here (said in one
line, within seconds; nothing else runs); 3 a GPU is here but Jittor cannot use it as
needed (not on CUDA, or without cuBLAS / cuDNN: one line names the cause); 4 the deadline
came first (the rows measured are in the table and the JSON lines; run again with
--skip-done for the rest).
"""
import glob
import os
import sys


if glob.glob("/dev/nvidia[0-9]*"):  # before jseg sets Jittor's environment
    # Most of a first GPU run is nvcc compiling kernels: let Jittor compile a graph's
    # kernels on many threads here (jseg's default compiles on the calling thread, see
    # jseg.platform.env); a value in the environment wins.
    os.environ.setdefault("use_parallel_op_compiler", str(min(16, os.cpu_count() or 1)))

from jseg.utils.cli import ToolParser

DEFAULT_JSONL = "work_dirs/gpu_check.jsonl"


def main(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="64x64, SegNeXt-T only, 4 training steps; runs without a GPU")
    parser.add_argument("--variants", default=None,
                        help="letters of the variants (default tsbl; quick: t); the first "
                        "one gets the early rows")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="input size (default 512 512; quick: 64 64)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per precision (default 20; quick: 4)")
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (default 5)")
    parser.add_argument("--no-mmseg", action="store_true", help="skip mmseg's rows")
    parser.add_argument("--mmseg-path", default=os.environ.get("JSEG_MMSEG_PATH"),
                        help="PYTHONPATH of mmseg's child process (default $JSEG_MMSEG_PATH, "
                        "else this process's path)")
    parser.add_argument("--data-root", default=None,
                        help="demo data (default data/demo, made there if missing)")
    parser.add_argument("--jsonl", default=None,
                        help=f"append every row to this JSON-lines file (default: the "
                        f"--skip-done file, else {DEFAULT_JSONL})")
    parser.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                        help="start no task after this many seconds; a task still running "
                        "then is interrupted (stacks dumped) and the table printed")
    parser.add_argument("--skip-done", default=None, metavar="FILE",
                        help="a JSON-lines file of an earlier run: its measured tasks are not "
                        "run again, its rows head the table")
    args = parser.parse_args(argv)
    variants = args.variants
    if variants is not None and (not variants or set(variants) - set("tsbl")):
        parser.error(f"--variants takes letters from 'tsbl', got {variants!r}")
    if args.steps is not None and args.steps < 2:
        parser.error(f"--steps must be at least 2, got {args.steps}")
    if args.deadline is not None and args.deadline <= 0:
        parser.error(f"--deadline must be a positive number of seconds, got {args.deadline:g}")
    if args.skip_done and not os.path.isfile(args.skip_done):
        parser.error(f"--skip-done {args.skip_done}: no such file (the JSON lines of an "
                     "earlier run)")

    from jseg.diagnostics import gpu_check as check
    from jseg.platform.env import no_gpu_reason
    if not args.quick:
        reason = no_gpu_reason()
        if reason:
            print(f"gpu_check: no GPU: {reason}; this check measures a GPU (--quick runs its "
                  "small CPU smoke run instead)", file=sys.stderr)
            return check.EXIT_NO_GPU

    done, earlier = check.read_done(args.skip_done)
    jsonl = args.jsonl or args.skip_done or DEFAULT_JSONL
    runner = check.Runner(jsonl, args.deadline, done, out=print)
    runner.earlier = earlier
    if earlier:
        print(f"gpu_check: {len(done)} task(s) measured earlier ({args.skip_done}) are not run "
              "again", flush=True)
    try:
        check.run_gpu_check(quick=args.quick, variants=tuple(variants) if variants else None,
                            size=args.size, steps=args.steps, iters=args.iters,
                            with_mmseg=not args.no_mmseg, mmseg_path=args.mmseg_path,
                            data_root=args.data_root, runner=runner)
    except check.GateError as e:
        print(check.format_table(earlier + runner.rows))
        print(f"gpu_check: stopped: {e}", file=sys.stderr)
        return check.EXIT_GATE
    rows = earlier + runner.rows
    print(check.format_table(rows))
    print(f"rows also in {jsonl}")
    failed = [r for r in rows if r[3] == "FAIL"]
    skipped = [r for r in rows if r[3] == "skip" and not r[2].startswith("not run:")]
    if failed:
        print(f"{len(failed)} check(s) failed")
        return check.EXIT_FAILED
    if skipped:
        print(f"{len(skipped)} row(s) skipped at the deadline; for them run again with "
              f"--skip-done {jsonl}")
        return check.EXIT_DEADLINE
    print("every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
