"""Dependencies point one way: service -> model <- training; model never loads the web stack;
the client (client/, its own distribution) depends on nothing of ours and never on torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import importlib, pkgutil, sys
import {package}
for info in pkgutil.walk_packages({package}.__path__, "{package}."):
    importlib.import_module(info.name)
web = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
print(",".join(web))
"""


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("model", {"fastapi", "starlette", "uvicorn", "service", "training", "multipart"}),
        ("training", {"fastapi", "starlette", "uvicorn", "service", "multipart"}),
        (
            "clipseg_client",
            {"torch", "open_clip", "model", "service", "training", "fastapi", "starlette"},
        ),
    ],
)
def test_package_does_not_import(package, forbidden):
    code = PROBE.format(package=package, forbidden=forbidden)
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"{package} imported: {result.stdout.strip()}"
