"""Static file mounts (the docs' and the demo page's assets) whose every error is JSON.

Starlette's ``StaticFiles`` raises ``HTTPException`` for 404 / 405 (answered in our shape
by service/errors.py), but its ``FileResponse`` answers a bad ``Range`` header itself, in
plain text: 400 for a malformed range, 416 (empty body, ``Content-Range: bytes */size``)
for one past the end of the file. ``JsonErrorsStatic`` rewrites any such non-JSON error
answer into ``{"error": {"code", "message"}}``, keeping its status and other headers.
"""

from __future__ import annotations

import http

from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipseg_serve.service.door import encode_error

__all__ = ["STATUS_CODES", "JsonErrorsStatic", "static_files"]

#: Error codes for the statuses a static mount answers itself (see the module docstring).
STATUS_CODES = {400: "invalid_range", 416: "range_not_satisfiable"}

#: Headers of the original answer that describe its (replaced) body.
_BODY_HEADERS = frozenset({b"content-type", b"content-length", b"content-encoding"})


class JsonErrorsStatic:
    """Pure ASGI around a static app: error answers (>= 400) that are not JSON become JSON.

    Only an error answer is held back (until its body is complete, to read its message);
    every other answer streams through untouched.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of an error answer being rewritten
        text = b""

        async def send_json_errors(message: Message) -> None:
            nonlocal held, text
            if message["type"] == "http.response.start" and _needs_rewrite(message):
                held = message
                return
            if held is None:
                await send(message)
                return
            text += message.get("body", b"")
            if not message.get("more_body", False):
                await _send_json(send, held, text.decode("utf-8", "replace"))

        await self.app(scope, receive, send_json_errors)


def _needs_rewrite(start: Message) -> bool:
    if start["status"] < 400:
        return False
    for name, value in start.get("headers", ()):
        if name.lower() == b"content-type":
            return not value.lower().startswith(b"application/json")
    return True


async def _send_json(send: Send, start: Message, text: str) -> None:
    """Answer ``start``'s status in the JSON shape; its message is the original body's
    text, or the status's reason phrase when that was empty."""
    status = start["status"]
    body = encode_error(STATUS_CODES.get(status, "http_error"), text.strip() or _phrase(status))
    kept = [(k, v) for k, v in start.get("headers", ()) if k.lower() not in _BODY_HEADERS]
    headers = [
        *kept,
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "error"


def static_files(directory: str) -> ASGIApp:
    """A static mount of ``directory`` whose errors are all JSON."""
    return JsonErrorsStatic(StaticFiles(directory=directory))
