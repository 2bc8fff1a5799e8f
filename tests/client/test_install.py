"""``pip install ./client`` into a fresh virtualenv brings httpx, numpy and pillow (and
what they need), never torch nor anything of the server's repository, and works there.

The whole install runs (about 10 s here: the wheels come from the package index's cache),
so a dependency added to client/pyproject.toml, or pulled in by one, is caught.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Never in the client's install: the model stack and this repository's distribution.
FORBIDDEN = {"torch", "torchvision", "triton", "open-clip-torch", "clipseg-serve", "fastapi"}


def run(*command: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def normalised(name: str) -> str:
    return name.lower().replace("_", "-")


def test_pip_install_client_pulls_no_torch(tmp_path):
    # A copy, so the build's egg-info and build/ land in tmp, not in the checkout.
    source = tmp_path / "client"
    shutil.copytree(
        ROOT / "client", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv), cwd=tmp_path)  # no system site-packages
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", str(source), cwd=tmp_path)

    listed = run(python, "-m", "pip", "list", "--format=json", cwd=tmp_path).stdout
    installed = {normalised(p["name"]) for p in json.loads(listed)}
    assert {"clipseg-client", "httpx", "numpy", "pillow"} <= installed
    assert not installed & FORBIDDEN
    assert not any(name.startswith("nvidia-") for name in installed)

    # Imported from outside the repository: nothing of it on the path, no torch loaded.
    probe = (
        "import importlib.metadata as md, importlib.util as u, sys, clipseg_client;"
        "assert 'torch' not in sys.modules;"
        "assert all(u.find_spec(m) is None for m in ('torch', 'model', 'service'));"
        "print(sorted(r.split(';')[0].split('>')[0].strip() "
        "for r in md.requires('clipseg-client')))"
    )
    declared = run(python, "-c", probe, cwd=tmp_path).stdout.strip()
    assert declared == "['httpx', 'numpy', 'pillow', 'tqdm']"  # tqdm: the progress extra
    helped = run(str(venv / "bin" / "clipseg-client"), "--help", cwd=tmp_path).stdout
    assert helped.startswith("usage: clipseg-client")
