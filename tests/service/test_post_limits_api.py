"""The refinement fields at the edges of their domains over HTTP (tiny model, CPU): each
was a 500 once (NaN scores the JSON encoder refused, a PyTorch assert on a 1x1 working
size). Now an eps float32 cannot resolve is a 422 naming ``refine_eps``, a radius beyond
the image is the whole image, and every score is a finite number in [0, 1]."""

from __future__ import annotations

import io
import math

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, random_image
from tests.service.test_api import post_text

JSON = {"Accept": "application/json"}
#: A flat image (one colour) and one with two flat halves: the guided filter's worst case.
FLAT = encode(Image.new("RGB", (64, 48), (120, 120, 120)))
HALVES = np.zeros((48, 64, 3), np.uint8)
HALVES[:, 32:] = 1
TWO_TONE = encode(Image.fromarray(HALVES))


def patient(serve):
    """The tiny-model server with an hour's deadline: its online cost model, fitted on a
    few tiny requests, can extrapolate a PAMR request to minutes and answer 504
    (deadline_unreachable) on a loaded machine; these tests are about the fields."""
    return serve(request_timeout_s=3600.0)


def post_visual(url: str, image: bytes, headers: dict | None = None, **fields) -> httpx.Response:
    """A one-shot request: ``image`` is its own support, with a square mask."""
    size = Image.open(io.BytesIO(image)).size
    mask = np.zeros(size[::-1], np.uint8)
    mask[: max(1, size[1] // 2), : max(1, size[0] // 2)] = 255
    files = [
        ("image", ("q.png", image, "image/png")),
        ("support_image", ("s.png", image, "image/png")),
        ("support_mask", ("m.png", encode(Image.fromarray(mask)), "image/png")),
    ]
    return httpx.post(
        url + "/v1/segment/visual", data=fields, files=files, headers=headers, timeout=60
    )


def _score(response: httpx.Response) -> float:
    """The single mask's score, from the raw PNG's header or the JSON."""
    if response.headers["content-type"] == "image/png":
        return float(response.headers["X-Mask-Score"])
    return response.json()["masks"][0]["score"]


@pytest.mark.parametrize("eps", ["1e-20", "1e-300", "5e-7", "0", "nan", "inf", "-1e-3"])
def test_an_eps_float32_cannot_resolve_is_422_naming_it(serve, eps):
    with patient(serve) as server:
        for response in (
            post_text(server.url, FLAT, ["a cat"], refine="guided", refine_eps=eps),
            post_visual(server.url, FLAT, refine="pamr", refine_eps=eps),
        ):
            assert response.status_code == 422, response.text
            error = response.json()["error"]
            assert error["code"] == "invalid_field" and "refine_eps" in error["message"]


@pytest.mark.parametrize("refine", ["guided", "pamr"])
def test_the_smallest_eps_gives_finite_scores_in_the_header_and_the_json(serve, refine):
    fields = {"refine": refine, "refine_eps": "1e-6", "threshold": "0.5"}
    with patient(serve) as server:
        for image in (FLAT, TWO_TONE):
            answers = (
                post_text(server.url, image, ["a cat"], **fields),  # raw PNG, X-Mask-Score
                post_text(server.url, image, ["a cat", "sky"], headers=JSON, **fields),
                post_visual(server.url, image, headers=JSON, **fields),
            )
            for response in answers:
                assert response.status_code == 200, response.text
                assert 0.0 <= _score(response) <= 1.0  # NaN fails both comparisons
    raw = answers[0].headers["X-Mask-Score"]
    assert math.isfinite(float(raw)) and "nan" not in raw.lower()


@pytest.mark.parametrize(("width", "height", "radius"), [(64, 48, 256), (100, 100, 512)])
def test_a_radius_past_the_image_is_served_on_both_endpoints(serve, width, height, radius):
    image = encode(random_image(width, height, seed=5))
    with patient(serve) as server:
        for refine in ("guided", "pamr"):
            fields = {"refine": refine, "refine_radius": str(radius), "threshold": "0.5"}
            for response in (
                post_text(server.url, image, ["a cat"], **fields),
                post_visual(server.url, image, **fields),
            ):
                assert response.status_code == 200, response.text
                mask = Image.open(io.BytesIO(response.content))
                assert mask.size == (width, height)
                assert 0.0 <= float(response.headers["X-Mask-Score"]) <= 1.0
