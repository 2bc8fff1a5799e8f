"""HTTP correctness against a live server (tiny model, the real middleware stack): one
value per scalar field, HEAD wherever GET is served, JSON for every static-file error, no
redirect built from the Host header, Accept q-values, X-Request-ID on every answer."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from PIL import Image

from clipseg_serve.service import request_id
from clipseg_serve.service.errors import ApiError
from tests.conftest import encode, random_image
from tests.service.conftest import GatedPredictor, make_settings
from tests.service.live import LiveServer
from tests.service.test_door import failing_app

IMAGE = encode(random_image(40, 30, seed=1))
MASK = encode(Image.fromarray(np.pad(np.full((10, 20), 255, np.uint8), ((10, 10), (10, 10)))))
KEY = "k-secret"


def post(url: str, path: str, fields: dict, files=None, **kw) -> httpx.Response:
    """A multipart POST; a list value sends its field once per item, in order."""
    files = files or [("image", ("i.png", IMAGE, "image/png"))]
    return httpx.post(url + path, data=fields, files=files, timeout=60, **kw)


def visual_files(supports: int = 1) -> list:
    pairs = [
        ("support_image", ("s.png", IMAGE, "image/png")),
        ("support_mask", ("m.png", MASK, "image/png")),
    ] * supports
    return [("image", ("i.png", IMAGE, "image/png")), *pairs]


# 1. One value per scalar field ------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/segment/text", "/segment/text"])
def test_a_repeated_scalar_field_of_segment_text_is_a_422_naming_it(serve, path):
    repeats = {
        "refine": ["bogus", "guided"],
        "erode": ["-1", "3"],
        "format": ["bogus", "png"],
        "png_bits": ["3", "8"],
        "combine": ["union", "none"],
    }
    with serve() as server:
        for field, values in repeats.items():
            response = post(server.url, path, {"prompt": "a cat", field: values})
            assert response.status_code == 422, (field, response.text)
            error = response.json()["error"]
            assert error["code"] == "invalid_field" and error["message"].startswith(field + ":")
            assert error["request_id"] == response.headers["x-request-id"]
        # The image is a scalar field as well.
        files = [("image", ("i.png", IMAGE, "image/png"))] * 2
        response = post(server.url, path, {"prompt": "a cat"}, files)
        assert response.status_code == 422 and "image:" in response.json()["error"]["message"]
        # List fields stay repeatable: two prompts, a threshold for each.
        fields = {"prompt": ["a", "b"], "threshold": ["0.3", "0.6"], "format": "rle"}
        response = post(server.url, path, fields)
        assert response.status_code == 200, response.text
        assert [m["threshold"] for m in response.json()["masks"]] == [0.3, 0.6]


#: Scalar fields of /segment/visual (``threshold`` and ``prompt`` are lists on /text).
VISUAL_REPEATS = {"threshold": ["2", "0.5"], "prompt": ["a", "b"], "feather": ["-1", "2"]}


@pytest.mark.parametrize("path", ["/v1/segment/visual", "/segment/visual"])
def test_a_repeated_scalar_field_of_segment_visual_is_a_422_naming_it(serve, path):
    with serve() as server:
        for field, values in VISUAL_REPEATS.items():
            response = post(server.url, path, {field: values}, visual_files())
            assert response.status_code == 422, (field, response.text)
            assert response.json()["error"]["message"].startswith(field + ":")
        # Supports are repeatable by design (k-shot).
        response = post(server.url, path, {"format": "rle"}, visual_files(supports=2))
        assert response.status_code == 200, response.text


# 2. HEAD wherever GET is served -----------------------------------------------------

#: Paths whose GET answer is the same byte for byte on every call.
STABLE = [
    "/",
    "/docs",
    "/redoc",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/demo-assets/demo.css",
    "/docs-assets/favicon.png",
    "/nope",
    "/v1/segment/text",
]
#: Headers that may differ between two calls (/metrics and /info change as they count).
_VOLATILE = {"date", "x-request-id", "content-length"}


def test_head_answers_like_get_without_a_body(serve):
    with serve() as server:
        for path in [*STABLE, "/metrics", "/info"]:
            got, head = httpx.get(server.url + path), httpx.head(server.url + path)
            assert head.status_code == got.status_code, path
            assert head.content == b"", path
            same = {k: v for k, v in got.headers.items() if k not in _VOLATILE}
            assert {k: v for k, v in head.headers.items() if k not in _VOLATILE} == same, path
            assert "x-request-id" in head.headers
            if path in STABLE:
                assert head.headers["content-length"] == str(len(got.content)), path
    with serve(api_keys=[KEY]) as server:  # behind the key exactly as GET is
        assert httpx.head(server.url + "/metrics").status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert httpx.head(server.url + "/metrics", headers=auth).status_code == 200
        assert httpx.head(server.url + "/readyz").status_code == 200  # a probe: open


# 3. Static files: every error is JSON -----------------------------------------------


@pytest.mark.parametrize("asset", ["/demo-assets/demo.css", "/docs-assets/favicon.png"])
def test_static_file_errors_are_json(serve, asset):
    with serve() as server:
        url = server.url + asset
        size = len(httpx.get(url).content)
        cases = {
            "past the end": ({"Range": f"bytes={size + 10}-"}, 416, "range_not_satisfiable"),
            "malformed": ({"Range": "bytes=zz"}, 400, "invalid_range"),
            "not bytes": ({"Range": "lines=1-2"}, 400, "invalid_range"),
        }
        for case, (headers, status, code) in cases.items():
            response = httpx.get(url, headers=headers)
            assert response.status_code == status, case
            assert response.headers["content-type"] == "application/json", case
            error = response.json()["error"]
            assert error["code"] == code and error["request_id"], case
            assert int(response.headers["content-length"]) == len(response.content)
        past = httpx.get(url, headers={"Range": f"bytes={size + 10}-"})
        assert past.headers["content-range"] == f"bytes */{size}"
        missing = httpx.get(url.rsplit("/", 1)[0] + "/missing.js")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
        posted = httpx.post(url)
        assert posted.status_code == 405 and posted.json()["error"]["code"] == "method_not_allowed"
        # What is not an error is untouched: a valid range, a revalidation.
        part = httpx.get(url, headers={"Range": "bytes=0-3"})
        assert part.status_code == 206 and len(part.content) == 4
        etag = httpx.get(url).headers["etag"]
        assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304


# 4. No redirect built from the Host header ------------------------------------------


def test_a_trailing_slash_is_served_not_redirected_to_the_host_header(serve):
    evil = {"Host": "evil.example"}
    with serve() as server:
        url = server.url
        response = post(url, "/v1/segment/text/", {"prompt": "a cat"}, headers=evil)
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        response = post(url, "/segment/visual//", {}, visual_files(), headers=evil)
        assert response.status_code == 200, response.text
        for path, status in [
            ("/v1/segment/text/", 405),
            ("/healthz/", 200),
            ("/info/", 200),
            ("/docs/", 200),
            ("/demo-assets", 404),
            ("/demo-assets/", 404),
            ("/nope/", 404),
        ]:
            response = httpx.get(url + path, headers=evil)
            assert response.status_code == status, path
            assert "location" not in response.headers, path
            if status >= 400:
                assert response.headers["content-type"] == "application/json", path


def test_a_trailing_slash_reaches_the_door_as_the_canonical_path(serve):
    with serve(api_keys=[KEY]) as server:
        assert httpx.get(server.url + "/healthz/").status_code == 200  # open, as /healthz
        response = post(server.url, "/v1/segment/text/", {"prompt": "a"})
        assert response.status_code == 401  # the key is checked, as on /v1/segment/text


# 5. Accept q-values -------------------------------------------------------------------


def test_accept_q_values_choose_between_png_and_json(serve):
    expected = {
        "image/png;q=0, application/json": "application/json",
        "image/png; q=0": "application/json",  # PNG refused: JSON, as for several masks
        "application/json;q=0.5, image/png": "image/png",
        "image/*;q=0.2, application/json;q=0.9": "application/json",
        "application/json, */*;q=0.1": "application/json",
        "image/png, application/json": "image/png",  # a tie: the mask's own type
        "*/*": "image/png",
        "text/html": "application/json",  # neither allowed: JSON, no 406
    }
    with serve() as server:
        for accept, media_type in expected.items():
            headers = {"Accept": accept}
            response = post(server.url, "/v1/segment/text", {"prompt": "a"}, headers=headers)
            assert response.status_code == 200, accept
            assert response.headers["content-type"] == media_type, accept
        response = post(server.url, "/v1/segment/text", {"prompt": "a"})  # httpx: */*
        assert response.headers["content-type"] == "image/png"


# 6. X-Request-ID on every answer ----------------------------------------------------


def test_an_unhandled_exception_answers_500_with_the_request_id_header(serve, monkeypatch):
    def broken(self):
        raise RuntimeError("injected failure")

    with serve(log_level="critical") as server:
        monkeypatch.setattr(GatedPredictor, "describe", broken)  # /info calls it (not loading)
        for sent in ({}, {request_id.HEADER: "my-id.1"}):
            response = httpx.get(server.url + "/info", headers=sent)
            assert response.status_code == 500
            error = response.json()["error"]
            assert error["code"] == "internal_error"
            assert response.headers["x-request-id"] == error["request_id"]
            if sent:
                assert error["request_id"] == "my-id.1"
        head = httpx.head(server.url + "/info")
        assert head.status_code == 500 and head.headers["x-request-id"] and head.content == b""


def test_an_unhandled_exception_answers_500_with_the_cors_headers(serve, monkeypatch):
    """Browser code sees the 500 (and its request ID) only with the CORS headers."""
    origin = "https://app.example"

    def broken(self):
        raise RuntimeError("injected failure")

    with serve(log_level="critical", cors_origins=[origin]) as server:
        monkeypatch.setattr(GatedPredictor, "describe", broken)
        response = httpx.get(server.url + "/info", headers={"Origin": origin})
    assert response.status_code == 500
    assert response.headers["access-control-allow-origin"] == origin
    assert "x-request-id" in response.headers["access-control-expose-headers"].lower()


def test_the_doors_own_answers_carry_the_request_id_header(serve):
    with serve(api_keys=[KEY], max_upload_bytes=4096) as server:
        auth = {"Authorization": f"Bearer {KEY}"}
        unauthorized = httpx.get(server.url + "/info")
        big = [("image", ("i.png", encode(random_image(100, 100)), "image/png"))]
        too_large = post(server.url, "/v1/segment/text", {"prompt": "a"}, big, headers=auth)
        state = server.server.config.app.state.service
        refusal = ApiError(429, "overloaded", "busy", {"Retry-After": "1"}, retry_after=0.5)
        state.batcher.refusal = lambda work, deadline: refusal
        small = [("image", ("i.png", b"x", "image/png"))]
        refused = post(server.url, "/v1/segment/text", {"prompt": "a"}, small, headers=auth)
    for response, status in ((unauthorized, 401), (too_large, 413), (refused, 429)):
        assert response.status_code == status
        assert response.headers["x-request-id"] == response.json()["error"]["request_id"]


def test_the_servers_own_500_carries_the_request_id_header():
    app = request_id.RequestIdMiddleware(failing_app)
    with LiveServer(app, ready=False, settings=make_settings(), log_level="critical") as server:
        response = httpx.get(server.url + "/silent", headers={request_id.HEADER: "abc"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "abc" == response.json()["error"]["request_id"]
