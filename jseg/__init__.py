"""jseg: SegNeXt (arXiv 2209.08575) semantic segmentation in Jittor.

Importing jseg prepares Jittor's start-up for this machine (CPU or GPU, oneDNN
without downloads; see `jseg.platform.env`) before anything imports jittor. The
public API is loaded lazily so that config-only tools start without Jittor.
"""
from .platform.env import configure_jittor

configure_jittor()

__version__ = "0.1.0"

__all__ = ["__version__", "load_config", "build_model", "init_model"]

_LAZY = {
    "load_config": ("jseg.config", "load_config"),
    "build_model": ("jseg.models", "build_model"),
    "init_model": ("jseg.apis", "init_model"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'jseg' has no attribute {name!r}")
