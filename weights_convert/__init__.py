"""PyTorch / JSeg -> jseg checkpoint conversion for SegNeXt.

`mapping` holds the layouts (rename table and drop list per source format, the
key patterns and shapes of a SegNeXt); `convert` is the command-line tool:

    python weights_convert/convert.py SRC DST [--format auto] [--config-file CONFIG]
"""
from .mapping import (FORMATS, ConversionError, check_against_model, convert_state_dict,
                      describe_architecture, detect_format, infer_state_shapes,
                      segnext_state_shapes)

__all__ = ["FORMATS", "ConversionError", "check_against_model", "convert_state_dict",
           "describe_architecture", "detect_format", "infer_state_shapes",
           "segnext_state_shapes"]
