"""The schema's building blocks: field types, range rules, Field / Section / MapOf, and
ConfigError."""
import copy
import math

__all__ = ["ConfigError", "Field", "Section", "MapOf", "ListOf", "Choice", "Optional", "AnyOf",
           "at_least", "above", "between"]


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and how to fix it."""


# ---------------------------------------------------------------------------
# Types a field may have. Each has `check(value) -> bool` and a readable name.

class _Type:
    name = "?"

    def check(self, value):
        raise NotImplementedError


class _Scalar(_Type):
    def __init__(self, py_type):
        self.py_type = py_type
        self.name = py_type.__name__

    def check(self, value):
        if self.py_type is float:  # an int is a fine float; a bool is not
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.py_type is int:
            return isinstance(value, int) and not isinstance(value, bool)
        return isinstance(value, self.py_type)


class _Choice(_Type):
    def __init__(self, *choices):
        self.choices = choices
        self.name = " | ".join(repr(c) for c in choices)

    def check(self, value):
        return value in self.choices


class _ListOf(_Type):
    def __init__(self, item, length=None):
        self.item = _as_type(item)
        self.length = length
        n = f", length {length}" if length else ""
        self.name = f"list of {self.item.name}{n}"

    def check(self, value):
        return (isinstance(value, list)
                and (self.length is None or len(value) == self.length)
                and all(self.item.check(v) for v in value))


class _AnyOf(_Type):
    def __init__(self, *types):
        self.types = [_as_type(t) for t in types]
        self.name = " or ".join(t.name for t in self.types)

    def check(self, value):
        return any(t.check(value) for t in self.types)


class _NoneType(_Type):
    name = "null"

    def check(self, value):
        return value is None


def _holds_list(t):
    return isinstance(t, _ListOf) or (isinstance(t, _AnyOf) and any(map(_holds_list, t.types)))


def _as_type(t):
    return t if isinstance(t, _Type) else _Scalar(t)


def ListOf(item, length=None):
    return _ListOf(item, length)


def Choice(*choices):
    return _Choice(*choices)


def Optional(t):
    return _AnyOf(t, _NoneType())


def AnyOf(*types):
    return _AnyOf(*types)


# ---------------------------------------------------------------------------
# Range rules a number must follow (a scalar, or every entry of a list). Each has
# `check(x) -> bool` and a text for messages and docs (">= 1", "in [0, 1)").

class _Rule:
    def __init__(self, text, test):
        self.text = text
        self.test = test

    def check(self, x):
        return _finite(x) and self.test(x)


def _finite(x):
    return isinstance(x, int) or math.isfinite(x)  # an int may be too large for a float


def at_least(lo):
    return _Rule(f">= {lo}", lambda x: x >= lo)


def above(lo):
    return _Rule(f"> {lo}", lambda x: x > lo)


def between(lo, hi, ends="[]"):
    """`ends` says which bounds are included: "[]", "[)", "(]" or "()"."""
    low_ok = (lambda x: x >= lo) if ends[0] == "[" else (lambda x: x > lo)
    high_ok = (lambda x: x <= hi) if ends[1] == "]" else (lambda x: x < hi)
    return _Rule(f"in {ends[0]}{lo}, {hi}{ends[1]}", lambda x: low_ok(x) and high_ok(x))


def _numbers(value):
    """The numbers a rule applies to: the value itself or the entries of a list (None: none)."""
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


# ---------------------------------------------------------------------------
# Schema nodes.

class Field:
    """A leaf: its type, default value, a one-line comment and an optional range rule."""

    def __init__(self, type_, default, doc, rule=None):
        self.type = _as_type(type_)
        self.default = default
        self.doc = doc
        self.rule = rule
        if default is not None or not self.type.check(None):
            assert self.type.check(default), f"schema default {default!r} is not {self.type.name}"
        assert rule is None or all(rule.check(v) for v in _numbers(default)), \
            f"schema default {default!r} is not {rule.text}"


class Section:
    """A dict with a fixed set of keys, each a Field, Section or MapOf."""

    def __init__(self, doc="", **children):
        self.doc = doc
        self.children = children

    def defaults(self):
        return {k: c.defaults() if not isinstance(c, Field) else copy.deepcopy(c.default)
                for k, c in self.children.items()}


class MapOf:
    """A dict with free keys whose values all follow one Section (e.g. param groups)."""

    def __init__(self, item, default, doc):
        self.item = item
        self.default = default
        self.doc = doc

    def defaults(self):
        return copy.deepcopy(self.default)
