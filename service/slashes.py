"""A trailing slash names the same resource: ``/v1/segment/text/`` is ``/v1/segment/text``.

Starlette's default (``redirect_slashes``) answers such a path with a 307 whose
``Location`` is an absolute URL built from the request's ``Host`` header, so any client
could make the server redirect to ``http://evil.example/...`` (an open redirect through a
cache or a careless proxy); and a 307 to a POST endpoint makes the client upload its
image twice. The app turns that redirect off (``FastAPI(redirect_slashes=False)``) and
``StripTrailingSlashMiddleware`` serves both forms instead: it removes trailing slashes
before anything else sees the path, so the door (open paths, early refusal), the router
and the metrics all see the one canonical path. No answer is ever built from ``Host``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["StripTrailingSlashMiddleware", "canonical_path"]


def canonical_path(path: str) -> str:
    """``path`` without trailing slashes; the root stays ``/``."""
    return path.rstrip("/") or "/"


class StripTrailingSlashMiddleware:
    """Pure ASGI: ``scope["path"]`` (and ``raw_path``) without trailing slashes.

    The app gets a copy of the scope; the server's own keeps the path as sent (access log).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or not path.endswith("/") or path == "/":
            await self.app(scope, receive, send)
            return
        changed = {**scope, "path": canonical_path(path)}
        raw = scope.get("raw_path")
        if raw:
            changed["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(changed, receive, send)
