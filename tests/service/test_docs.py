"""/docs and /redoc work offline: every asset comes from the app itself; the versioned
paths are documented and the unversioned ones are deprecated aliases."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlparse

import httpx
import pytest

CONTENT_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}
#: src/href attributes, and the spec URL Swagger UI's script is given.
_REFERENCE = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")
_ANY_URL = re.compile(r"""(?:https?:)?//[A-Za-z0-9.-]+""")


def references(html: str) -> list[str]:
    return [a or b for a, b in _REFERENCE.findall(html)]


def body_schema(spec: dict, operation: dict) -> dict:
    """The operation's form schema, resolved, without its generated title."""
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    schema = dict(spec["components"]["schemas"][ref.rsplit("/", 1)[1]])
    schema.pop("title")
    return schema


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_everything_from_the_app(serve, page):
    with serve() as server:
        response = httpx.get(server.url + page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        # No other host at all: no CDN, no fonts, no favicon from fastapi.tiangolo.com.
        assert _ANY_URL.findall(html) == [], _ANY_URL.findall(html)
        refs = references(html)
        assert any(r.endswith(".js") for r in refs) and "/openapi.json" in refs
        assets = [r for r in refs if r != "/openapi.json"]
        assert len(assets) >= 2  # script (+ stylesheet) + favicon
        for ref in assets:
            url = urljoin(server.url + page, ref)
            assert urlparse(url).netloc == urlparse(server.url).netloc, ref
            asset = httpx.get(url)
            assert asset.status_code == 200, ref
            kinds = CONTENT_TYPES[ref[ref.rindex(".") :]]
            assert asset.headers["content-type"].startswith(kinds), (ref, asset.headers)
            assert len(asset.content) > 1000, ref  # the real file, not an error page
        assert httpx.get(server.url + "/openapi.json").status_code == 200


def test_swagger_ui_fetches_nothing_from_validator_swagger_io(serve):
    with serve() as server:
        html = httpx.get(server.url + "/docs").text
    assert '"validatorUrl": null' in html


def test_docs_can_be_switched_off(serve):
    with serve(docs=False) as server:
        for path in ("/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            assert httpx.get(server.url + path).status_code == 404, path
        assert httpx.get(server.url + "/readyz").status_code == 200


def test_openapi_documents_v1_and_deprecates_the_aliases(serve):
    with serve() as server:
        spec = httpx.get(server.url + "/openapi.json").json()
    for kind in ("text", "visual"):
        current = spec["paths"][f"/v1/segment/{kind}"]["post"]
        alias = spec["paths"][f"/segment/{kind}"]["post"]
        assert not current.get("deprecated") and alias["deprecated"] is True
        assert f"alias of /v1/segment/{kind}" in alias["summary"]
        # The same operation: same form fields, same answers.
        assert body_schema(spec, alias) == body_schema(spec, current)
        assert alias["responses"] == current["responses"]
        assert alias["operationId"] != current["operationId"]
