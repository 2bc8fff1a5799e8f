"""The one import root: pyproject.toml maps model/, service/ and training/ into
clipseg_serve, and lists every package those folders hold."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"clipseg_serve": "clipseg_serve", "model": "clipseg_serve.model",
           "service": "clipseg_serve.service", "training": "clipseg_serve.training",
           "label": "clipseg_serve.label"}  # fmt: skip


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_in_the_folders_is_listed():
    found = set()
    for folder, root in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((root, *parts)))
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    assert found == listed


def test_package_dir_maps_the_folders_into_the_root():
    mapping = pyproject()["tool"]["setuptools"]["package-dir"]
    assert mapping == {root: folder for folder, root in FOLDERS.items()}


def test_console_scripts_live_under_the_root():
    scripts = pyproject()["project"]["scripts"]
    assert scripts and all(target.startswith("clipseg_serve.") for target in scripts.values())


def test_the_public_api_is_at_the_root_and_lazy():
    import subprocess

    code = (
        "import sys, clipseg_serve\n"
        "assert 'torch' not in sys.modules, 'import clipseg_serve loaded torch'\n"
        "from clipseg_serve import Predictor, PostProcess, Segmentation, load_model, "
        "load_predictor\n"
        "print(Predictor.__module__, load_predictor.__module__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "clipseg_serve.model.inference.predictor",
        "clipseg_serve.model.backends",
    ]
