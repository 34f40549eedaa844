"""The package's floors: every module imports only its own package and the floors below.

    utils < config < ops < models, data < checkpoint, deploy < engine < apis, export
          < diagnostics < tools

(tools/ and weights_convert/ are the command lines: nothing in jseg imports them.) Every
import counts, also one inside a function. Packages on the same floor (models and data;
apis and export) do not import each other, so there is no cycle between packages.
diagnostics (benchmark, parity, ...) are programs over the whole stack, the export included.
"""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FLOORS = {"utils": 0, "config": 1, "platform": 1, "ops": 2, "models": 3, "data": 3,
          "checkpoint": 4, "deploy": 4,
          "engine": 5, "apis": 6, "export": 6,
          "diagnostics": 7}


def _package(module):
    """'jseg.models.mscan' -> 'models'; 'jseg.config' -> 'config'; 'jseg' -> None (the root,
    which only configures Jittor and holds the version)."""
    parts = module.split(".")
    return parts[1] if parts[0] == "jseg" and len(parts) > 1 else None


def _imports(path, module):
    """Absolute names of every jseg / weights_convert / tools module `path` imports."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from jseg import ops` imports the module jseg.ops
            names += [target] + [f"{target}.{a.name}" for a in node.names]
    return [n for n in names if n and n.split(".")[0] in ("jseg", "weights_convert", "tools")]


def _modules():
    for path in sorted((ROOT / "jseg").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts[:-1]) if rel.name == "__init__" else list(rel.parts)
        yield path, ".".join(parts)


def _violations():
    found = []
    for path, module in _modules():
        own = _package(module)
        for name in _imports(path, module):
            if name.split(".")[0] != "jseg":
                found.append(f"{module} imports the command line {name}")
                continue
            target = _package(name)
            if target is None or target == own or own is None:
                continue  # the root package, or within one package
            if target not in FLOORS:  # `from jseg import __version__` and the like
                continue
            if FLOORS[target] >= FLOORS[own]:
                found.append(f"{module} (floor {FLOORS[own]}) imports {name} "
                             f"(floor {FLOORS[target]})")
    return found


def test_every_package_has_a_floor():
    packages = {p.name for p in (ROOT / "jseg").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    packages |= {p.stem for p in (ROOT / "jseg").glob("*.py") if p.stem != "__init__"}
    assert packages == set(FLOORS), sorted(packages ^ set(FLOORS))


def test_no_module_imports_a_higher_or_equal_floor():
    found = _violations()
    assert not found, "\n".join(found)


@pytest.mark.parametrize("bad", ["from jseg.engine import trainer", "import jseg.apis"])
def test_the_check_finds_an_upward_import(bad, tmp_path, monkeypatch):
    """The check itself: an upward import planted into a copy of jseg/models is reported."""
    import shutil
    copy = tmp_path / "jseg"
    shutil.copytree(ROOT / "jseg", copy, ignore=shutil.ignore_patterns("__pycache__"))
    layers = copy / "models" / "layers.py"
    layers.write_text(layers.read_text(encoding="utf-8") + f"\n\ndef _planted():\n    {bad}\n",
                      encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _violations()
    assert any(f.startswith("jseg.models.layers (floor 3) imports") for f in found), found
