"""The layering guard: lower layers never import higher ones; Keras stays up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dsprep"

# Lower number = lower layer. A module may import only modules of its own layer or below.
LAYERS = {
    "errors": 0,
    "fileio": 0,
    "system": 0,
    "images": 1,
    "sources": 2,
    "split": 2,
    "sample": 2,
    "stats": 3,
    "store": 3,
    "build": 4,
    "augment": 5,
    "preprocess": 6,
    "generators": 7,
    "evaluate": 8,
    "prefetch": 8,
    "adapters": 9,
    "demo": 10,
    "train": 10,
    "cli": 11,
    "__main__": 12,  # the dsprep command: imports cli inside a Ctrl-C guard
}
FRAMEWORKS = {"keras", "tensorflow", "torch", "jax"}
MAY_IMPORT_FRAMEWORKS = {"adapters", "train", "cli"}


def _top_module(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> list[tuple[str, int]]:
    """Imported names as (dotted name inside or outside dsprep, line)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    rel_parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Level 1 is the file's own package (for a package's __init__.py too, whose
                # parts end in "__init__"), level 2 the one above, and so on.
                base = list(rel_parts[: len(rel_parts) - node.level])
                module = ".".join(["dsprep", *base] + ([node.module] if node.module else []))
                if node.module is None:
                    found += [(f"{module}.{a.name}".replace("..", "."), node.lineno)
                              for a in node.names]
                    continue
            else:
                module = node.module or ""
            found.append((module, node.lineno))
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize(("where", "line", "imported"), [
    ("preprocess/__init__.py", "from ..augment import x", "dsprep.augment"),
    ("preprocess/__init__.py", "from .morphology import x", "dsprep.preprocess.morphology"),
    ("preprocess/__init__.py", "from .. import cli", "dsprep.cli"),
    ("preprocess/morphology.py", "from ..images import x", "dsprep.images"),
    ("preprocess/morphology.py", "from . import x", "dsprep.preprocess.x"),
    ("train/fit.py", "from .. import build", "dsprep.build"),
    ("__init__.py", "from .errors import x", "dsprep.errors"),
    ("split.py", "from . import images", "dsprep.images"),
])
def test_relative_imports_are_resolved_as_python_does(tmp_path, monkeypatch, where, line,
                                                      imported):
    path = tmp_path / where
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(line + "\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    assert _imports(path) == [(imported, 1)]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_only_import_downwards(path):
    me = _top_module(path)
    if me == "__init__":
        return
    assert me in LAYERS, f"{me} has no layer in the guard; add it to LAYERS"
    for name, line in _imports(path):
        parts = name.split(".")
        if parts[0] == "dsprep" and len(parts) > 1 and parts[1] in LAYERS:
            other = parts[1]
            assert LAYERS[other] <= LAYERS[me], (
                f"{path.name}:{line} imports dsprep.{other} (layer {LAYERS[other]}) "
                f"from {me} (layer {LAYERS[me]})"
            )
        if parts[0] in FRAMEWORKS:
            assert me in MAY_IMPORT_FRAMEWORKS, f"{path.name}:{line} imports {parts[0]}"


def test_import_dsprep_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, dsprep, dsprep.cli, dsprep.errors;"
        "heavy = sorted(m for m in ('keras', 'tensorflow', 'torch', 'jax') if m in sys.modules);"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
