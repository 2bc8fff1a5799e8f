"""The demo page at ``/``: static HTML, CSS and ES modules from the package, no build step.

Everything the page needs is served here, same-origin: ``/`` (the HTML, with a strict
Content-Security-Policy) and its assets under ``ASSETS_PATH``. The page then calls the API
from the browser with ``fetch`` like any other client, so it needs nothing the API does not
already offer.

The page learns what it needs *before* its first call from a ``<meta>`` tag filled in
here (whether an API key is required, the input limits): a probe call answered 401 would
log a console error in every browser, and a public JSON endpoint for it would be one more
thing to keep open at the door. The values are not secrets: the API's own error messages
state the limits.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import json

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from starlette.types import Message, Receive, Scope, Send

from clipseg_serve.service.config import Settings
from clipseg_serve.service.static_files import static_files

PAGE_PATH = "/"
ASSETS_PATH = "/demo-assets"

#: What the page needs without an API key (door.py): the page and its assets. The API
#: calls it makes carry the key typed into it.
PUBLIC_PATHS: tuple[str, ...] = (PAGE_PATH,)
PUBLIC_PREFIXES: tuple[str, ...] = (ASSETS_PATH + "/",)

#: Where the page's config goes in index.html (the content of a <meta> tag).
CONFIG_PLACEHOLDER = "{{CONFIG}}"

#: No inline script, style or event-handler attribute can run; only this origin's files
#: load; the page cannot be framed (clickjacking) or post forms anywhere.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ]
)

#: Headers on the page and on every asset.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # The assets change with the package: revalidate rather than run a stale module.
    "Cache-Control": "no-cache",
}


def assets_dir() -> str:
    """The folder of the page's packaged files (service/static/demo)."""
    return str(importlib.resources.files("clipseg_serve.service") / "static" / "demo")


@functools.cache
def _template() -> str:
    return (
        importlib.resources.files("clipseg_serve.service") / "static" / "demo" / "index.html"
    ).read_text(encoding="utf-8")


def page_config(settings: Settings) -> dict:
    """What the page must know before its first call."""
    return {
        "auth": bool(settings.api_keys),
        "maxPrompts": settings.max_prompts,
        "maxPromptChars": settings.max_prompt_chars,
        "maxSupports": settings.max_supports,
        "maxUploadBytes": settings.max_upload_bytes,
        "docs": settings.docs,
    }


def render_page(settings: Settings) -> str:
    """index.html with the config JSON in its ``<meta>`` tag (attribute-escaped)."""
    config = html.escape(json.dumps(page_config(settings), separators=(",", ":")), quote=True)
    return _template().replace(CONFIG_PLACEHOLDER, config)


class _SecureStatic:
    """The static mount (JSON errors, service/static_files.py) with ``SECURITY_HEADERS``
    added to each answer (pure ASGI)."""

    def __init__(self, directory: str) -> None:
        self.files = static_files(directory)
        self.extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secure(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *self.extra]}
            await send(message)

        await self.files(scope, receive, send_secure)


def add_demo(app: FastAPI, settings: Settings) -> None:
    """Serve the page at ``/`` and its assets under ``ASSETS_PATH`` (not in the OpenAPI
    document: the page is not part of the API)."""
    app.mount(ASSETS_PATH, _SecureStatic(assets_dir()), name="demo-assets")
    body = render_page(settings)

    @app.get(PAGE_PATH, include_in_schema=False)
    async def demo_page() -> HTMLResponse:
        return HTMLResponse(body, headers=SECURITY_HEADERS)
