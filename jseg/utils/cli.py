"""The command-line rule shared by every tool: bad input is one `error:` line and exit 1.

argparse itself prints its usage and exits 2 on a bad option; `ToolParser` turns that into
the same one line and exit code as every other bad input (a missing file, a wrong config key).
"""
import argparse

__all__ = ["ToolParser", "BAD_INPUT"]

BAD_INPUT = 1  # exit code for any bad input


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
