"""Reading configs: YAML files with `_base_` inheritance, validation against the schema,
command-line overrides, defaults, the read-only `Config`, and writing it back."""
import copy
import difflib
import os
import re

import yaml

from jseg.utils.atomic import atomic_write

from .checks import check_resolved
from .schema import SCHEMA
from .types import (ConfigError, Field, MapOf, Section, _finite, _holds_list, _ListOf,
                    _numbers)

__all__ = ["Config", "FrozenList", "load_config", "dump_config", "config_to_yaml",
           "describe_schema"]


# ---------------------------------------------------------------------------
# YAML reading: `6e-5` is a float here (plain YAML 1.1 reads it as a string).

class _Loader(yaml.SafeLoader):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"""),
    list("-+0123456789"))


def _read_yaml(path, origin):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}{origin}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}{origin} is not UTF-8 text: byte 0x{raw[e.start]:02x} at "
                          f"position {e.start} (line {line}); save the file as UTF-8") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"cannot parse {path}{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys, found {type(data).__name__}")
    return data


def _suggest(key, options):
    close = difflib.get_close_matches(key, list(options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(sorted(options))})"


def _bad_entry(type_, value):
    """' (entry 1 'mFoo' is not 'mIoU' | 'mDice')': the first wrong entry of a list, if any."""
    if isinstance(type_, _ListOf) and isinstance(value, list):
        for i, v in enumerate(value):
            if not type_.item.check(v):
                return f" (entry {i} {v!r} is not {type_.item.name})"
    return ""


def _validate(node, value, dotted, source):
    """Check `value` against schema `node`; raise ConfigError naming `dotted` and `source`."""
    if isinstance(node, Field):
        if not node.type.check(value):
            raise ConfigError(f"wrong type for '{dotted}' in {source}: expected {node.type.name}, "
                              f"got {type(value).__name__} {value!r}"
                              f"{_bad_entry(node.type, value)}")
        numbers = _numbers(value) if node.rule else []
        if not all(node.rule.check(v) for v in numbers):
            finite = "" if all(map(_finite, numbers)) else "finite and "
            each = "have each entry " if isinstance(value, list) else "be "
            raise ConfigError(f"'{dotted}' in {source} must {each}{finite}{node.rule.text}, "
                              f"got {value!r}")
        return
    if not isinstance(value, dict):
        raise ConfigError(f"'{dotted}' in {source} must be a mapping, got {type(value).__name__} {value!r}")
    if isinstance(node, MapOf):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"keys of '{dotted}' in {source} must be strings, got {k!r}")
            _validate(node.item, v, f"{dotted}.{k}", source)
        return
    for k, v in value.items():
        path = f"{dotted}.{k}" if dotted else str(k)
        if k not in node.children:
            raise ConfigError(f"unknown key '{path}' in {source}{_suggest(str(k), node.children)}")
        _validate(node.children[k], v, path, source)


def _merge(base, top):
    """Deep-merge `top` onto `base` (both plain dicts); dicts merge, the rest replaces."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_tree(path, stack, origin=""):
    """Read `path` and its bases recursively; returns the merged plain dict."""
    path = os.path.normpath(path)
    real = os.path.realpath(path)
    if real in stack:
        chain = " -> ".join(stack[stack.index(real):] + [real])
        raise ConfigError(f"circular _base_ in {path}: {chain}")
    data = _read_yaml(path, origin)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"_base_ in {path} must be a path or a list of paths, got {bases!r}")
    _validate(SCHEMA, data, "", path)
    merged = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = _merge(merged, _load_tree(base_path, stack + [real],
                                           origin=f" (the _base_ '{base}' of {path})"))
    return _merge(merged, data)


def _parse_override(text):
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. train.max_iters=1000")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # not YAML: take it as a plain string; the schema decides
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    tree = value
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return tree


def _read_only(*_args, **_kwargs):
    raise TypeError("a loaded config is read-only: give overrides to load_config "
                    "(KEY=VALUE), or edit a copy (copy.deepcopy(cfg))")


class FrozenList(list):
    """A list of a loaded config: equal to a plain list, but read-only."""
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _read_only
    append = extend = insert = pop = remove = clear = sort = reverse = _read_only

    def __reduce__(self):
        return FrozenList, (list(self),)

    def __deepcopy__(self, memo):  # an editable copy, as for Config
        return copy.deepcopy(list(self), memo)


class Config(dict):
    """A dict whose keys are also attributes (`cfg.model.backbone.depths`).

    What load_config returns is read-only (so the config.yaml and checkpoints a run writes
    hold what it ran with); copy.deepcopy gives an editable copy.
    """
    _frozen = False

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def _check(self):
        if self._frozen:
            _read_only()

    def __setattr__(self, name, value):
        self._check()
        self[name] = value

    def __setitem__(self, key, value):
        self._check()
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self._check()
        super().__delitem__(key)

    def update(self, *args, **kwargs):
        self._check()
        super().update(*args, **kwargs)

    def setdefault(self, key, default=None):
        self._check()
        return super().setdefault(key, default)

    def pop(self, *args):
        self._check()
        return super().pop(*args)

    def popitem(self):
        self._check()
        return super().popitem()

    def clear(self):
        self._check()
        super().clear()

    def __deepcopy__(self, memo):
        return Config.wrap(copy.deepcopy(Config.unwrap(self), memo))

    def __reduce__(self):  # pickles (e.g. to data workers) as plain data, wrapped back
        return Config.wrap, (Config.unwrap(self), self._frozen)

    @staticmethod
    def wrap(value, frozen=False):
        """Nested dicts -> Config (lists too, read-only ones when `frozen`)."""
        if isinstance(value, dict):
            out = Config({k: Config.wrap(v, frozen) for k, v in value.items()})
            object.__setattr__(out, "_frozen", frozen)
            return out
        if isinstance(value, list):
            items = [Config.wrap(v, frozen) for v in value]
            return FrozenList(items) if frozen else items
        return value

    @staticmethod
    def unwrap(value):
        if isinstance(value, dict):
            return {k: Config.unwrap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [Config.unwrap(v) for v in value]
        return value


def _fill_defaults(node, value):
    if isinstance(node, Section):
        out = {}
        for k, child in node.children.items():
            if isinstance(child, Field):
                out[k] = copy.deepcopy(value[k]) if k in value else copy.deepcopy(child.default)
            else:
                out[k] = _fill_defaults(child, value.get(k, {}) if k in value else child.defaults())
        return out
    if isinstance(node, MapOf):
        return {k: _fill_defaults(node.item, v) for k, v in value.items()}
    return value


def load_config(path, overrides=()):
    """Load, merge, validate and complete a config; returns a `Config`.

    `overrides` are strings `KEY=VALUE` (dotted key, YAML value), applied last.
    A null model.decode_head.num_classes becomes the dataset's class count.
    Raises ConfigError with the file, the dotted key and a hint on any mistake.
    """
    tree = _load_tree(str(path), [])
    for text in overrides:
        patch = _parse_override(text)
        _validate(SCHEMA, patch, "", f"the command-line override {text!r}")
        tree = _merge(tree, patch)
    cfg = _fill_defaults(SCHEMA, tree)
    _validate(SCHEMA, cfg, "", str(path))
    check_resolved(cfg, f"{path} with its command-line overrides" if overrides else str(path))
    if cfg["name"] is None:
        cfg["name"] = os.path.splitext(os.path.basename(str(path)))[0]
    if cfg["work_dir"] is None:
        cfg["work_dir"] = os.path.join("work_dirs", cfg["name"])
    return Config.wrap(cfg, frozen=True)


def config_to_yaml(cfg):
    """The resolved config as YAML text (every key, no _base_)."""
    return yaml.safe_dump(Config.unwrap(cfg), sort_keys=False, default_flow_style=None)


def dump_config(cfg, path):
    """Write the resolved config to `path` atomically; `load_config(path)` gives it back."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        f.write(config_to_yaml(cfg))


def describe_schema(node=SCHEMA, prefix=""):
    """Lines `dotted.key: type (rule) = default  # comment` for every field (for docs and
    --help); `(rule)` only where the field has a range rule, e.g. `(each >= 1)`."""
    lines = []
    for k, child in node.children.items():
        path = f"{prefix}{k}"
        if isinstance(child, Field):
            rule = ""
            if child.rule:
                rule = f" ({'each ' if _holds_list(child.type) else ''}{child.rule.text})"
            lines.append(f"{path}: {child.type.name}{rule} = {child.default!r}  # {child.doc}")
        elif isinstance(child, MapOf):
            lines.append(f"{path}: {{name: {{...}}}} = {child.default!r}  # {child.doc}")
            lines += describe_schema(child.item, f"{path}.<name>.")
        else:
            lines += describe_schema(child, f"{path}.")
    return lines
