"""The client README's examples run as written (the URL pointed at a live
tiny-model server, from the repository root where their sample paths are)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def client_section() -> str:
    """The client's README (the documentation site includes it as its client page)."""
    return (ROOT / "client" / "README.md").read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", client_section(), flags=re.S)


def test_the_section_shows_sync_async_and_the_cli():
    text = client_section()
    assert "pip install ./client" in text and "clipseg-client docs/samples/query.jpg" in text
    assert len(python_blocks()) == 3 and "AsyncClient" in python_blocks()[2]


@pytest.mark.parametrize("index", range(3))
def test_python_examples_run(server, monkeypatch, index):
    monkeypatch.chdir(ROOT)
    code = python_blocks()[index].replace("http://localhost:8000", server.url)
    namespace: dict = {}
    exec(compile(code, f"README python block {index}", "exec"), namespace)
    width, height = Image.open(ROOT / "docs/samples/query.jpg").size
    if index == 0:
        assert namespace["mug"].shape == (height, width)
        assert namespace["result"].masks[0].prompt == "visual"
    if index == 2:
        sizes = [(r.width, r.height) for r in namespace["results"]]
        assert sizes == [(width, height), Image.open(ROOT / "docs/samples/support.jpg").size]
