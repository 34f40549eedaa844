"""Make Jittor 1.3.11 build its CUDA part with CUDA 13 (nvcc 13), or take that back.

    python tools/jittor_cuda13.py check     # applied / original; exit 1 if it cannot be applied
    python tools/jittor_cuda13.py apply     # patch the installed jittor (idempotent)
    python tools/jittor_cuda13.py revert    # restore Jittor's original files
    python tools/jittor_cuda13.py apply --if-cuda13   # only where the nvcc found is CUDA 13+
    python tools/jittor_cuda13.py compile-check       # build Jittor's CUDA part and SegNeXt-T's
                                                      # CUDA kernels with nvcc, no GPU needed

What is changed and why: the hunks in `jseg/platform/jittor_cuda13.py` (docs/gpu.md, "CUDA 13").
Each file's SHA-256 is checked first: another Jittor version or a file changed by
someone else is refused and nothing is written. `--jittor-dir` points at another
installation's `jittor` package directory.
"""
import sys

from jseg.utils.cli import ToolParser, run_main
from jseg.platform import jittor_cuda13 as fix
from jseg.platform.env import users_nvcc_path
from jseg.platform.toolkit import nvcc_candidates


def _cuda13_nvcc():
    """The first nvcc of CUDA 13 or newer that Jittor could pick up here, or None."""
    return next(((p, v) for p, v in nvcc_candidates(users_nvcc_path()) if v and v[0] >= 13), None)


def main(argv=None):
    parser = ToolParser(__doc__, description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["check", "apply", "revert", "compile-check"])
    parser.add_argument("--jittor-dir", help="the jittor package directory (default: the "
                        "one this Python imports)")
    parser.add_argument("--if-cuda13", action="store_true",
                        help="apply only when the nvcc Jittor would find is CUDA 13 or newer")
    parser.add_argument("--arch", default="90",
                        help="compile-check: the GPU architecture to compile for (default 90)")
    parser.add_argument("--cuda-libs", action="append", metavar="DIR",
                        help="compile-check: a folder with include/ and lib/ of CUDA libraries "
                        "(repeatable; default: the nvidia-* pip wheels in site-packages)")
    parser.add_argument("--compile-threads", type=int, metavar="N",
                        help="compile-check: Jittor's threads for a graph's kernels "
                        "(use_parallel_op_compiler; default jseg's 0: the calling thread)")
    parser.add_argument("--fresh-kernels", action="store_true",
                        help="compile-check: delete the kernels of an earlier check first "
                        "(keeping Jittor's core), to time the kernels cold")
    parser.add_argument("--work-dir", help="compile-check: its folder (default "
                        "~/.cache/jseg/cuda-compile-check; Jittor's cache for the check is kept there)")
    args = parser.parse_args(argv)
    try:
        directory = args.jittor_dir or fix.jittor_dir()
        if args.action == "compile-check":
            from jseg.diagnostics.cuda_compile import compile_check
            return compile_check(directory, arch=args.arch, cuda_libs=args.cuda_libs,
                                 work_dir=args.work_dir, threads=args.compile_threads,
                                 fresh_kernels=args.fresh_kernels)
        if args.if_cuda13:
            found = _cuda13_nvcc()
            if found is None:
                print("jittor_cuda13: no CUDA 13 nvcc here; nothing to do")
                return 0
            if fix.jittor_version(directory) != fix.JITTOR_VERSION:
                print(f"jittor_cuda13: Jittor {fix.jittor_version(directory)} is not "
                      f"{fix.JITTOR_VERSION}; its CUDA part is left as it is")
                return 0
            print(f"jittor_cuda13: {found[0]} is CUDA {found[1][0]}.{found[1][1]}")
        if args.action == "check":
            current = fix.state(directory)
            print(f"jittor_cuda13: {current} ({len(fix.PATCHES)} files, Jittor at {directory})")
            return 0
        done = fix.apply(directory) if args.action == "apply" else fix.revert(directory)
        verb = "patched" if args.action == "apply" else "restored"
        print(f"jittor_cuda13: {verb} {len(done)} file(s)" + (": " + ", ".join(done) if done
              else f" (already {'applied' if args.action == 'apply' else 'original'})"))
        return 0
    except fix.PatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    run_main(main)
