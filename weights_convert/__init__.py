"""The checkpoint converter's command line: weights_convert/convert.py (see its docstring).

The conversion itself is jseg.checkpoint.convert; the layouts are jseg.checkpoint.mapping.
"""
