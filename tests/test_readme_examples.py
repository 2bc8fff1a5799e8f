"""The README's curl examples, run (as their httpx equivalents) against a live server."""

from __future__ import annotations

import base64
import io
import re
import shlex
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.predictor import Predictor
from service.app import create_app
from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

README = Path(__file__).resolve().parents[1] / "README.md"


def curl_commands() -> list[list[str]]:
    """Every ``curl ... -F`` command in the README's code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
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
                files.append((name, (path.name, path.read_bytes(), "image/png")))
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
            return Predictor(tiny_model, device="cpu")

    with LiveServer(create_app(make_settings(), factory)) as live:
        yield live


def test_readme_has_the_curl_examples():
    urls = [next(t for t in c if t.startswith("http")) for c in curl_commands()]
    assert any(u.endswith("/segment/text") for u in urls)
    assert any(u.endswith("/segment/visual") for u in urls)
    assert any("format=rle" in c for c in map(" ".join, curl_commands()))


def test_readme_curl_examples_work(server, tmp_path):
    (tmp_path / "photo.jpg").write_bytes(encode(random_image(64, 48), "JPEG"))
    (tmp_path / "example.jpg").write_bytes(encode(random_image(40, 40, seed=2), "JPEG"))
    mask = np.zeros((40, 40), np.uint8)
    mask[8:30, 10:32] = 255
    (tmp_path / "example_mask.png").write_bytes(encode(Image.fromarray(mask)))
    for tokens in curl_commands():
        url, files, data, output = as_request(tokens, tmp_path)
        url = url.replace("http://localhost:8000", server.url)
        response = httpx.post(url, files=files, data=data, timeout=60)
        assert response.status_code == 200, (tokens, response.text)
        if output:  # -o file.png: the PNG itself at the photo's size
            assert Image.open(io.BytesIO(response.content)).size == (64, 48)
        else:
            body = response.json()
            assert (body["width"], body["height"]) == (64, 48)
            for entry in body["masks"]:
                assert entry["rle"]["size"] == [48, 64]
                assert Image.open(io.BytesIO(base64.b64decode(entry["soft_png"]))).size == (64, 48)
