"""Malformed requests: each gets the documented 4xx with a JSON error body, never a 5xx."""

from __future__ import annotations

import warnings

import httpx
import numpy as np
import pytest
from PIL import Image

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service.app import create_app
from tests.conftest import encode, png_claiming, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

PNG = encode(random_image(24, 16))
JPEG = encode(random_image(64, 64), "JPEG")
MASK = encode(Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4)))  # 16x16, object
EMPTY_MASK = encode(Image.fromarray(np.zeros((16, 16), np.uint8)))
SUPPORT = encode(random_image(16, 16, seed=9))
# Formats PIL reads but we refuse from their first bytes (415), sent under accepted types.
ICO = encode(random_image(16, 16, seed=3), "ICO")
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
MAX_UPLOAD = 64 * 1024


def text_form(image=PNG, image_type="image/png", **fields):
    """A /segment/text form; a field given as None is left out."""
    data = {k: v for k, v in {"prompt": "a cat", **fields}.items() if v is not None}
    files = {"image": ("x.png", image, image_type)} if image is not None else {}
    return {"data": data, "files": files}


def visual_form(supports=((SUPPORT, MASK),), **fields):
    files = [("image", ("q.png", PNG, "image/png"))]
    for image, mask in supports:
        if image is not None:
            files.append(("support_image", ("s.png", image, "image/png")))
        if mask is not None:
            files.append(("support_mask", ("m.png", mask, "image/png")))
    return {"data": fields, "files": files}


TEXT_CASES = {
    "truncated JPEG": (text_form(JPEG[: len(JPEG) // 3], "image/jpeg"), 400),
    "text file named .png": (text_form(b"hello, I am text\n" * 10), 400),
    "text/plain upload": (text_form(b"hello", "text/plain"), 415),
    "pdf upload": (text_form(b"%PDF-1.4 ...", "application/pdf"), 415),
    "zero bytes": (text_form(b""), 400),
    "ICO upload": (text_form(ICO, "image/x-icon"), 415),
    "EPS upload": (text_form(EPS, "application/octet-stream"), 415),
    "no image": (text_form(None), 422),
    "no prompt": (text_form(prompt=None), 422),
    "empty prompt": (text_form(prompt=""), 422),
    "blank prompt": (text_form(prompt="   "), 422),
    "10k-character prompt": (text_form(prompt="x" * 10_000), 422),
    "17 prompts": (text_form(prompt=[f"p{i}" for i in range(17)]), 422),
    "threshold 1.5": (text_form(threshold="1.5"), 422),
    "threshold -0.1": (text_form(threshold="-0.1"), 422),
    "threshold not a number": (text_form(threshold="high"), 422),
    "unknown format": (text_form(format="gif"), 422),
    "unknown combine": (text_form(combine="xor"), 422),
    "unknown template": (text_form(template="poem"), 422),
    "soft not a bool": (text_form(soft="perhaps"), 422),
    "decompression bomb": (text_form(png_claiming(100_000, 100_000)), 413),
    "body over the upload limit": (text_form(b"\x00" * (MAX_UPLOAD + 1)), 413),
}
VISUAL_CASES = {
    "mask of the wrong size": (visual_form([(SUPPORT, encode(random_image(8, 8)))]), 422),
    "empty mask": (visual_form([(SUPPORT, EMPTY_MASK)]), 422),
    "no support mask": (visual_form([(SUPPORT, None)]), 422),
    "no support at all": (visual_form([]), 422),
    "more masks than images": (visual_form([(SUPPORT, MASK), (None, MASK)]), 422),
    "undecodable mask": (visual_form([(SUPPORT, b"not a png")]), 400),
    "undecodable support": (visual_form([(b"junk", MASK)]), 400),
    "ICO support": (visual_form([(ICO, MASK)]), 415),
    "text_weight without prompt": (visual_form(text_weight="0.3"), 422),
    "text_weight 2": (visual_form(prompt="a cat", text_weight="2"), 422),
    "9 supports": (visual_form([(SUPPORT, MASK)] * 9), 422),
}


@pytest.fixture(scope="module")
def server(tiny_model):
    def factory(settings):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Predictor(
                tiny_model, device="cpu", dtype="float32", max_pixels=settings.max_image_pixels
            )

    settings = make_settings(max_upload_bytes=MAX_UPLOAD, max_image_pixels=10_000_000)
    with LiveServer(create_app(settings, factory)) as live:
        yield live


def check(response: httpx.Response, expected: int) -> None:
    assert response.status_code == expected, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"]


@pytest.mark.parametrize(("form", "status"), TEXT_CASES.values(), ids=TEXT_CASES.keys())
def test_bad_text_requests(server, form, status):
    check(httpx.post(server.url + "/v1/segment/text", timeout=30, **form), status)


@pytest.mark.parametrize(("form", "status"), VISUAL_CASES.values(), ids=VISUAL_CASES.keys())
def test_bad_visual_requests(server, form, status):
    check(httpx.post(server.url + "/v1/segment/visual", timeout=30, **form), status)


def test_wrong_method_path_and_body_type(server):
    check(httpx.get(server.url + "/v1/segment/text"), 405)
    check(httpx.get(server.url + "/nowhere"), 404)
    check(httpx.post(server.url + "/v1/segment/text", json={"prompt": "a cat"}), 422)


def test_the_server_still_answers_after_the_abuse(server):
    response = httpx.post(server.url + "/v1/segment/text", **text_form())
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    metrics = httpx.get(server.url + "/metrics").text
    assert 'status="500"' not in metrics
