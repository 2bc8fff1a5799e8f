"""Dependencies point one way: service -> model <- training; model never loads the web stack;
inside model, each subpackage imports only from the floors below it; the client (client/,
its own distribution) depends on nothing of ours and never on torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib, pkgutil, sys
import {package}
for info in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in {forbidden!r}))
print(",".join(bad))
"""

WEB = {"fastapi", "starlette", "uvicorn", "multipart"}


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "clipseg_serve.model",
            WEB | {"clipseg_serve.service", "clipseg_serve.training", "model", "service"},
        ),
        ("clipseg_serve.training", WEB | {"clipseg_serve.service", "model", "training"}),
        (
            "clipseg_serve.label",
            WEB | {"clipseg_serve.service", "clipseg_serve.training", "ray", "model"},
        ),
        (
            "clipseg_client",
            {"torch", "open_clip", "clipseg_serve", "fastapi", "starlette"},
        ),
    ],
)
def test_package_does_not_import(package, forbidden):
    code = PROBE.format(package=package, forbidden=sorted(forbidden))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"{package} imported: {result.stdout.strip()}"


#: model's floors, lowest first: a module may import from its own unit and lower floors.
#: Units are subpackages, or top-level modules.
FLOORS = [
    {"errors", "config", "device"},
    {"network", "imaging", "masks", "codecs"},
    {"weights"},
    {"inference"},
    {"onnx"},
    {"backends"},
    {"cli"},
]
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}


def model_imports() -> list[tuple[str, str]]:
    """(importing unit, imported unit) for every import of clipseg_serve.model.X in model/,
    lazy imports inside functions included."""
    pairs = []
    for path in (ROOT / "model").rglob("*.py"):
        parts = path.relative_to(ROOT / "model").with_suffix("").parts
        if parts == ("__init__",):
            continue
        unit = parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("clipseg_serve.model."):
                    pairs.append((unit, name.split(".")[2]))
    return pairs


def test_every_model_unit_has_a_floor():
    units = {p.stem if p.is_file() else p.name for p in (ROOT / "model").iterdir()}
    units -= {"__init__", "__pycache__"}
    assert units == set(FLOOR), "give new parts of model/ a floor in FLOORS"


def test_model_imports_point_down():
    pairs = model_imports()
    assert pairs, "no imports found: the test is not reading model/"
    upward = sorted({(a, b) for a, b in pairs if a != b and FLOOR[b] >= FLOOR[a]})
    assert upward == [], f"imports that do not point to a lower floor: {upward}"


def test_relative_imports_are_not_used():
    """Absolute imports name the one root: a module moved between subpackages cannot
    silently resolve against its old neighbours."""
    relative = [
        str(path.relative_to(ROOT))
        for folder in ("model", "service", "training", "label")
        for path in (ROOT / folder).rglob("*.py")
        if any(
            isinstance(node, ast.ImportFrom) and node.level > 0
            for node in ast.walk(ast.parse(path.read_text()))
        )
    ]
    assert relative == []
