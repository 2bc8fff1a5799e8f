"""Property tests over HTTP: every post-processing and answer field over its domain (and one
field at a time just outside it), on images from 1x1 to 300x300 (flat ones included),
against the tiny-model app on loopback.

Whatever the form: never a 5xx; every 4xx is the JSON error shape, and a value outside
its field's domain is a 422 naming that field; every 200 has masks of the image's size
and scores that are finite numbers in [0, 1], in the JSON and in ``X-Mask-Score``.
"""

from __future__ import annotations

import base64
import io
import math

import httpx
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from clipseg_serve.model.masks.postprocess import (
    MAX_EPS,
    MAX_MIN_AREA,
    MAX_MORPHOLOGY_PX,
    MAX_PAMR_ITERATIONS,
    MAX_RADIUS,
    MIN_EPS,
)
from tests.conftest import encode
from tests.model.test_post_domain import eps_values, images, small_or_any
from tests.properties import examples
from tests.service.test_api import visual_files
from tests.service.test_post_limits_api import patient


def ints(low: int, high: int, small: int) -> st.SearchStrategy[str]:
    return small_or_any(low, high, small).map(str)


def floats(low: float, high: float) -> st.SearchStrategy[str]:
    return (st.sampled_from([low, high]) | st.floats(low, high)).map(repr)


#: Values inside each field's domain, as the form's text.
VALID: dict[str, st.SearchStrategy[str]] = {
    "refine": st.sampled_from(["none", "guided", "pamr"]),
    "refine_radius": ints(1, MAX_RADIUS, 8),
    "refine_eps": eps_values().map(repr),
    "pamr_iterations": ints(1, MAX_PAMR_ITERATIONS, 3),
    "min_area": ints(0, MAX_MIN_AREA, 20),
    "fill_holes": st.sampled_from(["true", "false"]),
    "erode": ints(0, MAX_MORPHOLOGY_PX, 4),
    "dilate": ints(0, MAX_MORPHOLOGY_PX, 4),
    "feather": ints(0, MAX_MORPHOLOGY_PX, 6),
    "instances": st.sampled_from(["true", "false"]),
    "polygon_tolerance": floats(0.0, 100.0),
    "format": st.sampled_from(["png", "rle", "polygon"]),
    "png_bits": st.sampled_from(["1", "8"]),
    "soft": st.sampled_from(["true", "false"]),
    "threshold": floats(0.0, 1.0),
}
TEXT_ONLY: dict[str, st.SearchStrategy[str]] = {
    "combine": st.sampled_from(["none", "union", "intersection", "argmax"]),
    "background_factor": floats(1e-3, 100.0),
}
NOT_A_NUMBER = ["nan", "inf", "-inf", "abc", "1e999"]
#: Values just outside each field's domain (or not numbers at all): always a 422.
HOSTILE: dict[str, list[str]] = {
    "refine": ["crf", "1"],
    "refine_radius": ["0", "-1", str(MAX_RADIUS + 1), "1.5", "9" * 40, *NOT_A_NUMBER],
    "refine_eps": [
        "0",
        "1e-20",
        "1e-300",
        repr(MIN_EPS / 2),
        repr(MAX_EPS * 2),
        "-1e-3",
        *NOT_A_NUMBER,
    ],
    "pamr_iterations": ["0", str(MAX_PAMR_ITERATIONS + 1), "2.5", *NOT_A_NUMBER],
    "min_area": ["-1", str(MAX_MIN_AREA + 1), "9" * 40, *NOT_A_NUMBER],
    "erode": ["-1", str(MAX_MORPHOLOGY_PX + 1), *NOT_A_NUMBER],
    "dilate": ["-2", str(MAX_MORPHOLOGY_PX + 1), *NOT_A_NUMBER],
    "feather": ["-1", str(MAX_MORPHOLOGY_PX + 1), *NOT_A_NUMBER],
    "polygon_tolerance": ["-0.5", "100.5", *NOT_A_NUMBER],
    "png_bits": ["2", "0", *NOT_A_NUMBER],
    "threshold": ["-0.1", "1.1", *NOT_A_NUMBER],
    "background_factor": ["0", "-1", "100.5", *NOT_A_NUMBER],
    "text_weight": ["-0.1", "1.5", *NOT_A_NUMBER],
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, np.ndarray, dict[str, str], str | None]:
    """(endpoint, image, form fields, the one field given a value outside its domain)."""
    endpoint = draw(st.sampled_from(["text", "text", "visual"]))
    pixels = draw(images())
    pool = {**VALID, **(TEXT_ONLY if endpoint == "text" else {})}
    names = draw(st.lists(st.sampled_from(sorted(pool)), unique=True, max_size=len(pool)))
    fields = {name: draw(pool[name]) for name in names}
    hostile = draw(st.none() | st.sampled_from(sorted(HOSTILE)))
    if hostile in ("background_factor",) and endpoint == "visual":
        hostile = "text_weight"
    if hostile == "text_weight" and endpoint == "text":
        hostile = "background_factor"
    if hostile is not None:
        fields[hostile] = draw(st.sampled_from(HOSTILE[hostile]))
        if hostile == "text_weight":
            fields["prompt"] = "a cat"  # text_weight needs a prompt (else another 422)
    return endpoint, pixels, fields, hostile


def post(client: httpx.Client, endpoint: str, pixels: np.ndarray, fields: dict, accept: str):
    image = encode(Image.fromarray(pixels))
    files = [("image", ("image.png", image, "image/png"))]
    data: dict = dict(fields)
    if endpoint == "text":
        data["prompt"] = ["a cat", "sky"][: 1 + len(pixels) % 2]
    else:
        # One fixed support: the query's shape is what is drawn (a 1x300 support would be
        # refused for its aspect ratio, rightly, and say nothing about the fields).
        files += visual_files()[3][1:]
    return client.post(
        f"/v1/segment/{endpoint}", data=data, files=files, headers={"Accept": accept}
    )


def check_score(score: object) -> None:
    assert isinstance(score, float | int) and math.isfinite(score) and 0 <= score <= 1, score


def check_answer(response: httpx.Response, size: tuple[int, int]) -> None:
    """A 200's masks have the image's size; its scores are finite and in [0, 1]."""
    height, width = size
    if response.headers["content-type"] == "image/png":
        assert Image.open(io.BytesIO(response.content)).size == (width, height)
        check_score(float(response.headers["X-Mask-Score"]))
        return
    body = response.json()
    assert (body["height"], body["width"]) == size
    for entry in body["masks"]:
        check_score(entry["score"])
        if entry.get("max_score") is not None:
            check_score(entry["max_score"])
        for key in ("png", "soft_png"):
            if entry.get(key):
                png = Image.open(io.BytesIO(base64.b64decode(entry[key])))
                assert png.size == (width, height)
        if entry.get("rle"):
            assert entry["rle"]["size"] == [height, width]


def check_refusal(response: httpx.Response, fields: dict, hostile: str | None) -> None:
    """Every 4xx is the JSON error shape; a value outside a field's domain is a 422 naming
    the field; a refused combination of valid values names one of the fields sent."""
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if hostile is not None:
        assert response.status_code == 422 and hostile in error["message"], error
    else:
        assert response.status_code == 422, error
        named = [name for name in (*fields, "argmax", "prompt") if name in error["message"]]
        assert named, error


def test_every_field_over_its_domain_never_5xx(serve):
    with patient(serve) as server, httpx.Client(base_url=server.url, timeout=120) as client:

        @examples(80)
        @given(request=requests(), accept=st.sampled_from(["*/*", "application/json"]))
        def answer(request: tuple, accept: str) -> None:
            endpoint, pixels, fields, hostile = request
            response = post(client, endpoint, pixels, fields, accept)
            assert response.status_code < 500, response.text
            if response.status_code == 200:
                assert hostile is None, (hostile, fields)
                check_answer(response, pixels.shape[:2])
            else:
                check_refusal(response, fields, hostile)

        answer()
