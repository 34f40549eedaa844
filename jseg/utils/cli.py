"""The command-line rule shared by every tool: bad input is one `error:` line and exit 1,
Ctrl-C is one `interrupted` line and exit 130.

argparse itself prints its usage and exits 2 on a bad option; `ToolParser` turns that into
the same one line and exit code as every other bad input (a missing file, a wrong config key).
`run_main(main)` in place of `sys.exit(main())` turns a KeyboardInterrupt into its one line
(Jittor's own SIGINT handler, which would end the process at once, is taken back when jseg
imports Jittor, see `jseg.platform.env`).
"""
import argparse
import sys

__all__ = ["ToolParser", "run_main", "positive_int", "BAD_INPUT", "INTERRUPTED"]

BAD_INPUT = 1  # exit code for any bad input
INTERRUPTED = 130  # exit code after Ctrl-C: 128 + SIGINT, as a shell reports a process it ended


class ToolParser(argparse.ArgumentParser):
    """ArgumentParser whose description and epilog come from a tool's module docstring.

    The first docstring line is the description; from the line starting "examples" on, the
    epilog (shown verbatim by --help).
    """

    def __init__(self, doc: str, **kwargs):
        kwargs.setdefault("description", doc.strip().split("\n")[0])
        if "examples" in doc:
            kwargs.setdefault("epilog", doc[doc.index("examples"):])
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(**kwargs)

    def error(self, message):
        self.exit(BAD_INPUT, f"error: {message} (see --help)\n")


def positive_int(text):
    """argparse type: a whole number >= 1 (counts such as -n or --workers)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return n


def run_main(main):
    """Run a tool's `main()` and exit with the code it returns; Ctrl-C (KeyboardInterrupt)
    ends it with one line, "interrupted", and exit code 130 instead of a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = INTERRUPTED
    sys.exit(code)
