"""Console logging for the command-line tools (rank 0 only under MPI)."""
import logging
import sys

__all__ = ["setup_logging"]


def setup_logging(rank=0, level=logging.INFO):
    """Log jseg's messages to stderr on rank 0; other ranks only log warnings and errors."""
    logger = logging.getLogger("jseg")
    logger.setLevel(level)
    if not any(getattr(h, "_jseg_console", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        handler._jseg_console = True
        handler.setLevel(level if rank == 0 else logging.WARNING)
        logger.addHandler(handler)
    logger.propagate = False
    return logger
