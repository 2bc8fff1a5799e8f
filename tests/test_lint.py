"""Style gates run with the tests: ruff (lint + format) on everything, mypy on the service
and the client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args", [("check", "."), ("format", "--check", ".")])
def test_ruff(args):
    # The virtualenv's own ruff, also when pytest runs without the venv activated.
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    assert ruff is not None, "ruff is not installed (pip install -e '.[dev]')"
    result = run(ruff, *args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_on_service(tmp_path):
    """mypy reads packages from folders named as they import, and knows nothing of
    setuptools' package-dir: it checks a tree of links laid out as the wheel is
    (clipseg_serve/model -> model/, ...)."""
    pytest.importorskip("mypy")
    root = tmp_path / "clipseg_serve"
    root.mkdir()
    (root / "__init__.py").symlink_to(ROOT / "clipseg_serve" / "__init__.py")
    for folder in ("model", "service", "training"):
        (root / folder).symlink_to(ROOT / folder, target_is_directory=True)
    (tmp_path / "clipseg_client").symlink_to(ROOT / "client" / "clipseg_client")
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += ["-p", "clipseg_serve.service", "-p", "clipseg_client"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
