"""Print how Jittor starts on this machine: version, device, oneDNN, MPI, cache dir, and
the CUDA driver and toolkit (which one and why; cuBLAS / cuDNN) where there is a GPU.

    python tools/check_env.py
    python tools/check_env.py --jsonl rows.jsonl   # also as environment rows of gpu_check

Exits 1 with a hint when Jittor cannot start. The first run on a new machine
compiles Jittor's core (a few minutes); later runs take about a second. Jittor's own
start-up log (its paths, the compilers it found) is off; JSEG_VERBOSE=1 shows it.
"""
import sys

from jseg.utils.cli import ToolParser, run_main  # sets Jittor's env first
from jseg.platform.env import environment_report

_HINTS = (  # (text in Jittor's error, fix); the first match wins
    ("Python.h", "install the Python headers (Debian: apt-get install python3-dev)"),
    ("--version", "install a C++ compiler (Debian: apt-get install g++) or set cc_path=/path/to/g++"),
    ("-DHAS_CUDA", "Jittor could not build its CUDA part with this CUDA toolkit (the compiler "
                   "errors are above); with CUDA 13 run `python tools/jittor_cuda13.py apply`, "
                   "else use a CUDA 12 toolkit (nvcc_path=/path/to/nvcc) or run on CPU with "
                   "JSEG_DEVICE=cpu"),
    ("is not loaded", "Jittor needs cuBLAS, cuDNN, cuRAND, cuFFT and cuSPARSE beside nvcc (a full "
                      "CUDA toolkit has all but cuDNN); install them, or run on CPU with "
                      "JSEG_DEVICE=cpu"),
    ("libcudart", "the CUDA runtime is missing; run on CPU with JSEG_DEVICE=cpu"),
    ("Download", "Jittor tried to download; install the offline assets: pip install jittor-offline==0.0.7"),
)


def main(argv=None):
    parser = ToolParser(__doc__)
    parser.add_argument("--jsonl", metavar="FILE", help="append the report to this JSON-lines "
                        "file as tools/gpu_check.py's environment rows")
    args = parser.parse_args(argv)
    try:
        report = environment_report()
    except Exception as e:  # Jittor raises plain Exceptions when it cannot start
        text = f"{type(e).__name__}: {e}".strip().splitlines()
        hint = next((h for key, h in _HINTS if key in str(e)),
                    "reinstall with `make setup`; if it persists, delete Jittor's cache "
                    "(~/.cache/jittor) and retry, or run on CPU with JSEG_DEVICE=cpu")
        print(f"error: Jittor cannot start ({text[-1] if text else 'unknown error'}); fix: {hint}",
              file=sys.stderr)
        return 1
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key + ':':<{width + 1}}  {value}")
    if args.jsonl:
        from jseg.diagnostics.gpu_check import Row, Runner, Task
        runner = Runner(args.jsonl, out=lambda *a, **k: None)
        task = Task("environment", "environment", "environment", None)
        for key, value in report.items():
            runner.emit(task, Row("environment", key, value))
    return 0


if __name__ == "__main__":
    run_main(main)
