"""Named failure points for fault-injection tests: the process kills itself at one moment.

With the environment variable `JSEG_FAILPOINT=<point>:<file name>` set, the process
sends itself SIGKILL (no clean-up, as an OOM kill or a power cut) when it reaches
`<point>` while writing a file of that name, e.g.

    JSEG_FAILPOINT=before-rename:iter_00000004.pkl

The points are in `jseg.utils.atomic`: `mid-write` (part of the data is in the
temporary file), `before-rename` (the temporary file is complete and synced) and
`after-rename` (the new file is in place; nothing after it has run). Unset, a point
costs one dictionary lookup.
"""
import os
import signal

__all__ = ["failpoint", "ENV"]

ENV = "JSEG_FAILPOINT"


def failpoint(point, path):
    """Kill this process now if JSEG_FAILPOINT names `point` and the base name of `path`."""
    spec = os.environ.get(ENV)
    if spec and spec == f"{point}:{os.path.basename(path)}":
        os.kill(os.getpid(), signal.SIGKILL)
