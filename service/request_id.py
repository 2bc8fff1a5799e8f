"""One ID per HTTP request: taken from ``X-Request-ID`` when it is sane, else generated;
echoed in the response header, put into every log line of the request and into JSON
error bodies.

The ID lives in a ``ContextVar``. Each request runs in its own asyncio task (uvicorn
creates one per request), and tasks and ``asyncio.to_thread`` / Starlette's threadpool
copy the context, so the value reaches everything the request does and leaks into no
other request. The model thread serves several requests per batch: the batcher binds the
batch's IDs there, comma-separated (see ``bound``).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from contextvars import ContextVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
_HEADER_KEY = HEADER.lower().encode()

#: What a client may send: short, and nothing that could break a log line or a header
#: (no spaces, quotes, commas — the batcher joins IDs with commas — or control bytes).
_VALID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current() -> str | None:
    """The ID of the request being served here, if any."""
    return _current.get()


def accept(raw: bytes | None) -> str:
    """The client's ID if it is valid, else a fresh one (32 hex digits)."""
    if raw is not None:
        text = raw.decode("latin-1")
        if _VALID.fullmatch(text):
            return text
    return uuid.uuid4().hex


@contextlib.contextmanager
def bound(value: str | None) -> Iterator[None]:
    """``current()`` is ``value`` inside the block (the batcher's model thread)."""
    token = _current.set(value)
    try:
        yield
    finally:
        _current.reset(token)


class RequestIdMiddleware:
    """Pure ASGI, outermost: sets the ID before anything else runs (so the door's own
    401/413/408 answers carry it too) and adds ``X-Request-ID`` to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope.get("headers") or () if k == _HEADER_KEY), None)
        value = accept(raw)
        # Not reset afterwards: the context is this request's task's own, and uvicorn's
        # "Exception in ASGI application" line, logged after the app returns, keeps the ID.
        _current.set(value)
        header = (_HEADER_KEY, value.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, send_with_id)
