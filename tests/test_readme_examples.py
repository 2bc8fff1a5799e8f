"""The documentation's curl examples, run (as their httpx equivalents) against a live server."""

from __future__ import annotations

import base64
import io
import re
import shlex
import warnings
from pathlib import Path

import httpx
import pytest
from PIL import Image

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service.app import create_app
from tests.docs_pages import documentation
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

ROOT = Path(__file__).resolve().parents[1]


def curl_commands() -> list[list[str]]:
    """Every ``curl ... -F`` command in the documentation's code blocks, continuation lines
    joined."""
    blocks = re.findall(r"```bash\n(.*?)```", documentation(), flags=re.S)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("curl") and " -F " in line:
                commands.append(shlex.split(line))
    return commands


def as_request(tokens: list[str], files_dir: Path) -> tuple[str, list, dict, str | None]:
    """(url, multipart files, form data, output file) of a curl command line."""
    url, files, data, output = "", [], {}, None
    args = iter(tokens[1:])
    for token in args:
        if token == "-F":
            name, _, value = next(args).partition("=")
            if value.startswith("@"):
                path = files_dir / value[1:]
                mime = "image/png" if path.suffix == ".png" else "image/jpeg"
                files.append((name, (path.name, path.read_bytes(), mime)))
            else:
                data.setdefault(name, []).append(value)
        elif token == "-o":
            output = next(args)
        elif token.startswith("http"):
            url = token
    return url, files, data, output


@pytest.fixture(scope="module")
def server(tiny_model):
    def factory(settings):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Predictor(tiny_model, device="cpu", dtype="float32")

    with LiveServer(create_app(make_settings(), factory)) as live:
        yield live


def test_readme_has_the_curl_examples():
    urls = [next(t for t in c if t.startswith("http")) for c in curl_commands()]
    assert any(u.endswith("/v1/segment/text") for u in urls)
    assert any(u.endswith("/v1/segment/visual") for u in urls)
    assert any("format=rle" in c for c in map(" ".join, curl_commands()))


def test_readme_curl_examples_work(server):
    """As pasted from the repository root: the sample files under docs/samples/."""
    root = ROOT
    width, height = Image.open(root / "docs" / "samples" / "query.jpg").size
    for tokens in curl_commands():
        url, files, data, output = as_request(tokens, root)
        url = url.replace("http://localhost:8000", server.url)
        response = httpx.post(url, files=files, data=data, timeout=60)
        assert response.status_code == 200, (tokens, response.text)
        if output:  # -o file.png: the PNG itself at the photo's size
            assert Image.open(io.BytesIO(response.content)).size == (width, height)
        else:
            body = response.json()
            assert (body["width"], body["height"]) == (width, height)
            for entry in body["masks"]:
                assert entry["rle"]["size"] == [height, width]
                soft = Image.open(io.BytesIO(base64.b64decode(entry["soft_png"])))
                assert soft.size == (width, height)
