"""Encoding inside the deadline and the vertex cap (live server, tiny model): a noisy mask
as polygons is a 413 naming CLIPSEG_MAX_POLYGON_VERTICES, a deadline that passes while
the masks are encoded is a 504 and stops the encoding."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from clipseg_serve.model.codecs.polygons import mask_to_polygons
from clipseg_serve.model.masks.postprocess import Combine, PostProcess, Refine
from clipseg_serve.service import codec
from clipseg_serve.service.budget import ImageHeader, check_limits, polygon_bytes, shape_of
from clipseg_serve.service.encode_limits import EncodeLimits
from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.test_api import direct, post_text

#: Noise photographed: refined at radius 1, the mask follows every grain.
NOISY = encode(random_image(300, 300, seed=5), "JPEG", quality=90)
GRAINY = {"refine": "guided", "refine_radius": "1"}
JSON = {"Accept": "application/json"}


def vertices(polygons: list[list[float]]) -> int:
    return sum(len(p) for p in polygons) // 2


def noisy_masks(factory, prompts: list[str]) -> tuple[float, list[np.ndarray]]:
    """A threshold at the median of the first prompt's refined map (the random model's
    maps are nearly flat: any fixed threshold makes them all or nothing), and the masks."""
    post = PostProcess(refine=Refine.GUIDED, radius=1)
    soft = direct(factory, NOISY, prompts[:1], soft=True, post=post).soft[0]
    threshold = round(float(np.median(soft)) / 255, 4)
    result = direct(factory, NOISY, prompts, threshold=threshold, post=post)
    return threshold, [result.mask(i) for i in range(len(prompts))]


def test_noisy_polygons_are_413_naming_the_limit_and_rle_still_answers(serve, factory):
    threshold, (mask,) = noisy_masks(factory, ["a cat"])
    exact = vertices(mask_to_polygons(mask, 0.0, max_vertices=None))
    assert exact > 20_000  # thousands of specks and holes
    fields = {**GRAINY, "threshold": str(threshold), "polygon_tolerance": "0"}
    with serve(max_polygon_vertices=5000) as server:
        refused = post_text(server.url, NOISY, ["a cat"], format="polygon", **fields)
        rle = post_text(server.url, NOISY, ["a cat"], format="rle", **fields)
    assert refused.status_code == 413, refused.text
    error = refused.json()["error"]
    assert error["code"] == "request_too_costly"
    assert "CLIPSEG_MAX_POLYGON_VERTICES=5000" in error["message"]
    for fix in ("polygon_tolerance", "min_area", "format=rle"):
        assert fix in error["message"]
    assert rle.status_code == 200  # the suggested fix works


def test_the_vertex_cap_is_for_the_whole_answer(serve, factory):
    prompts = ["a cat", "a dog"]
    threshold, masks = noisy_masks(factory, prompts)
    counts = [vertices(mask_to_polygons(m, 1.0, max_vertices=None)) for m in masks]
    fields = {**GRAINY, "threshold": str(threshold), "format": "polygon"}
    with serve(max_polygon_vertices=sum(counts) - 1) as server:
        alone = [post_text(server.url, NOISY, [p], **fields) for p in prompts]
        both = post_text(server.url, NOISY, prompts, **fields)
    for response, count in zip(alone, counts, strict=True):
        assert response.status_code == 200, response.text
        assert vertices(response.json()["masks"][0]["segmentation"]) == count
    assert both.status_code == 413
    assert f"CLIPSEG_MAX_POLYGON_VERTICES={sum(counts) - 1}" in both.json()["error"]["message"]


@pytest.fixture
def late(monkeypatch):
    """Makes the deadline pass at the ``n``-th deadline check of an answer's encoding
    (by sleeping past it there); counts the checks and the PNG encoder's calls."""
    seen = {"checks": 0, "pngs": 0, "at": None}
    check, encode_png = EncodeLimits.check, codec.encode_png_packed

    def slow_check(self: EncodeLimits) -> None:
        seen["checks"] += 1
        if seen["checks"] == seen["at"]:
            time.sleep(max(0.0, self.deadline - time.monotonic()) + 0.01)
        check(self)

    def counted_png(*args, **kwargs):
        seen["pngs"] += 1
        return encode_png(*args, **kwargs)

    monkeypatch.setattr(EncodeLimits, "check", slow_check)
    monkeypatch.setattr(codec, "encode_png_packed", counted_png)
    return seen


def test_a_deadline_passing_between_masks_is_504_and_stops_encoding(serve, late):
    prompts = [f"thing {i}" for i in range(8)]
    image = encode(random_image(96, 64, seed=3))
    with serve() as server:
        late["at"] = 3  # the check before the third mask
        response = post_text(
            server.url, image, prompts, headers={"X-Request-Timeout": "2"}, threshold="0.5"
        )
        metrics = httpx.get(server.url + "/metrics").text
    assert response.status_code == 504, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert "encoded" in response.json()["error"]["message"]
    assert late["pngs"] == 2  # two masks encoded, then nothing: not the other six
    assert 'clipseg_rejected_total{reason="deadline"} 1.0' in metrics


def test_a_deadline_passing_while_tracing_polygons_stops_between_contours(serve, factory, late):
    threshold, (mask,) = noisy_masks(factory, ["a cat"])
    fields = {**GRAINY, "threshold": str(threshold), "format": "polygon"}
    with serve() as server:
        late["at"] = 50  # the 50th contour of the first mask
        response = post_text(
            server.url, NOISY, ["a cat"], headers={"X-Request-Timeout": "2"}, **fields
        )
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "deadline_exceeded"
    assert late["checks"] == 50  # stopped at the check that saw the deadline pass
    traced = []
    mask_to_polygons(mask, 1.0, max_vertices=None, checkpoint=lambda: traced.append(1))
    assert len(traced) > 1000  # of the thousands a whole answer passes


def test_a_single_png_past_its_deadline_is_504_not_the_png(serve, late):
    image = encode(random_image(96, 64, seed=3))
    with serve() as server:
        late["at"] = 2  # the check after encoding
        response = post_text(server.url, image, ["a cat"], headers={"X-Request-Timeout": "2"})
    assert response.status_code == 504 and late["pngs"] == 1
    assert response.json()["error"]["code"] == "deadline_exceeded"


def test_json_answers_render_as_before(serve, factory):
    image = encode(random_image(96, 64, seed=3))
    with serve() as server:
        response = post_text(server.url, image, ["a cat", "a dog"], format="rle", headers=JSON)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["width", "height", "masks", "timings_ms"]
    assert (body["width"], body["height"], len(body["masks"])) == (96, 64, 2)
    assert b'"masks":[{' in response.content and b", " not in response.content  # compact


def test_polygon_answers_reserve_their_tracing_and_their_capped_vertices():
    settings = make_settings(max_polygon_vertices=1000)
    shape = shape_of(ImageHeader("PNG", 200, 100, "RGB"), prompts=2, negatives=0,
                     visual=False, combine=Combine.NONE, soft=False)  # fmt: skip
    png = check_limits(settings, shape, 352)
    polygon = check_limits(settings, shape, 352, "polygon")
    assert polygon - png == polygon_bytes(shape.query, 1000) == 8 * 20_000 + 150 * 1000
    assert check_limits(settings, shape, 352, "rle") == png
