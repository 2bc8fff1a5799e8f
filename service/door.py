"""The door: what every HTTP request passes before the app reads a byte of its body.

Pure ASGI middlewares, outermost first as ``create_app`` stacks them (inside the request-ID
middleware, service/request_id.py, so every answer below carries ``X-Request-ID``):

1. ``JsonCORSMiddleware`` (only when origins are configured): Starlette's CORS, whose
   rejected preflights answer in our JSON error shape.
2. ``ApiKeyMiddleware``: ``Authorization: Bearer <key>`` checked from the request head
   alone. A request without a valid key is answered 401 without ever calling ``receive``,
   so its body is never read (uvicorn then sends no ``100 Continue`` either) and the
   connection is closed.
3. ``BodyLimitMiddleware``: 413 for a declared ``Content-Length`` over the limit (before
   reading), or as soon as a streamed / chunked body passes it; 408 when the whole body has
   not arrived within ``body_timeout_s`` of the request's start.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``: that one wraps ``receive`` in a
way that hides client disconnects from the endpoints, and they need them to drop
abandoned jobs.

Why the operational endpoints (``/metrics``, ``/info`` with the weights path and sha256)
are *behind the key* rather than on a separate operations port: one port is what load
balancers, Kubernetes probes and the compose healthcheck already know, and Prometheus
scrapes with bearer auth (``authorization: {credentials: ...}`` in a scrape config).
Open without a key: the probes ``/healthz`` and ``/readyz`` (an orchestrator must reach
them without secrets, and they reveal nothing but "alive" / "ready"), and the API's
documentation — ``/docs``, ``/redoc``, their assets and ``/openapi.json`` — because a
browser loads the page, its scripts and the spec before anyone can press "Authorize", and
they describe only what the published code does. The calls made from the page send the
key typed into "Authorize". ``CLIPSEG_DOCS=false`` removes the documentation instead.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Iterable, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clipseg_serve.service.errors import error_body, error_response

#: Paths that never need a key: the orchestrator's liveness and readiness probes (the
#: app adds the documentation's, service/docs.py).
OPEN_PATHS: tuple[str, ...] = ("/healthz", "/readyz")

#: The name of the bearer scheme in the OpenAPI document.
SECURITY_SCHEME = "bearerAuth"


def encode_error(code: str, message: str) -> bytes:
    """The JSON error body, ``{"error": {"code", "message"}}``, as bytes."""
    return json.dumps(error_body(code, message), separators=(",", ":")).encode()


def error_headers(
    body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> list[tuple[bytes, bytes]]:
    """Headers for a JSON error ``body`` after which the connection is closed."""
    return [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *extra,
    ]


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    extra_headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer ``status`` with the JSON error shape and ``Connection: close``.

    Writes the ASGI messages directly and never touches ``receive``: the callers answer
    before (or instead of) reading the body.
    """
    body = encode_error(code, message)
    headers = error_headers(body, extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower case) in the request head, if any."""
    for key, value in scope.get("headers") or ():
        if key == name:
            return value
    return None


class ApiKeyMiddleware:
    """When ``keys`` are configured, every HTTP request needs ``Authorization: Bearer <key>``.

    Exempt: ``open_paths`` (exact paths), paths under ``open_prefixes``, and CORS preflights
    (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``; browsers send those
    without credentials). Any
    other request without a valid key gets 401 ``unauthorized`` with
    ``WWW-Authenticate: Bearer`` and ``Connection: close``, and its body is never read.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: Sequence[str],
        open_paths: Sequence[str] = OPEN_PATHS,
        open_prefixes: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.keys = tuple(key.encode() for key in keys)
        self.open_paths = frozenset(open_paths)
        # Safe as prefixes: everything under one is routed to a static mount, which
        # refuses ".." escapes, so no other endpoint is reachable through them.
        self.open_prefixes = tuple(open_prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.keys and not self._lets_in(scope):
            # Answered from the head alone: receive is never called, so the body is never
            # read and uvicorn sends no "100 Continue".
            await send_error(
                send,
                401,
                "unauthorized",
                "missing or invalid API key: send 'Authorization: Bearer <key>'",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)

    def _lets_in(self, scope: Scope) -> bool:
        return self._exempt(scope) or self._authorized(scope)

    def _exempt(self, scope: Scope) -> bool:
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if path in self.open_paths or path.startswith(self.open_prefixes):
            return True
        return (
            scope["method"] == "OPTIONS"
            and _header(scope, b"origin") is not None
            and _header(scope, b"access-control-request-method") is not None
        )

    def _authorized(self, scope: Scope) -> bool:
        scheme, _, token = (_header(scope, b"authorization") or b"").partition(b" ")
        token = token.strip()
        # compare_digest against every key, with no early exit: the time taken says
        # nothing about which key (or which prefix of one) came close.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(token, key)
        return matched and scheme.lower() == b"bearer"


class BodyLimitMiddleware:
    """413 past ``limit`` body bytes, 408 when the body is not in after ``body_timeout_s``.

    A declared ``Content-Length`` over the limit is answered before anything is read (and
    without calling the app). Otherwise the app's ``receive`` is watched: the running total
    of body bytes, and the time since the request started. The timeout is on the *total*
    time the body takes, not per chunk: an idle timeout per chunk is defeated by a client
    that sends one byte a second.

    When a limit trips, the middleware answers itself (``Connection: close``), then hands
    the app ``http.disconnect`` from every further ``receive`` and swallows whatever the app
    still sends (it will try to answer 400 for the broken form), so the client gets exactly
    one answer and the app's coroutine runs to its end.

    Once the whole body has arrived, ``receive`` passes straight through with no timeout:
    the endpoints keep waiting on it to learn that their client hung up.
    """

    def __init__(self, app: ASGIApp, limit: int, body_timeout_s: float) -> None:
        self.app, self.limit, self.body_timeout_s = app, limit, body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(send)
            return
        guard = _BodyGuard(self, receive, send)
        await self.app(scope, guard.receive, guard.send)

    async def _too_large(self, send: Send) -> None:
        message = f"request body exceeds {self.limit} bytes (CLIPSEG_MAX_UPLOAD_BYTES)"
        await send_error(send, 413, "upload_too_large", message)


class _BodyGuard:
    """The per-request state of ``BodyLimitMiddleware``: bytes seen, deadline, cut-off."""

    def __init__(self, door: BodyLimitMiddleware, receive: Receive, send: Send) -> None:
        self.door, self._receive, self._send = door, receive, send
        self.loop = asyncio.get_running_loop()
        self.deadline = self.loop.time() + door.body_timeout_s
        self.seen = 0
        self.complete = False  # the whole body is in: receive passes through untimed
        self.cut = False  # we answered: the app gets disconnects, its sends are dropped
        self.started = False  # a response has started (by the app or by us)

    async def receive(self) -> Message:
        if self.cut:
            return {"type": "http.disconnect"}
        if self.complete:
            return await self._receive()
        remaining = max(self.deadline - self.loop.time(), 0.0)
        try:
            message = await asyncio.wait_for(self._receive(), timeout=remaining)
        except asyncio.TimeoutError:
            timeout = self.door.body_timeout_s
            text = f"the request body did not arrive within {timeout:g} s (CLIPSEG_BODY_TIMEOUT_S)"
            return await self._cut_off(408, "body_timeout", text)
        if message["type"] != "http.request":
            self.complete = True  # http.disconnect: nothing more will arrive
            return message
        self.seen += len(message.get("body", b""))
        if self.seen > self.door.limit:
            return await self._cut_off(413, "upload_too_large", self._too_large_text())
        if not message.get("more_body", False):
            self.complete = True
        return message

    async def send(self, message: Message) -> None:
        if self.cut:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)

    def _too_large_text(self) -> str:
        return f"request body exceeds {self.door.limit} bytes (CLIPSEG_MAX_UPLOAD_BYTES)"

    async def _cut_off(self, status: int, code: str, text: str) -> Message:
        self.cut = True
        # If the app had already started its own response there is no way to answer:
        # dropping the rest of it leaves the response incomplete and uvicorn closes the
        # connection, which is the best a client can be told at that point.
        if not self.started:
            self.started = True
            await send_error(self._send, status, code, text)
        return {"type": "http.disconnect"}


class JsonCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware whose rejected preflights are JSON ``cors_rejected``.

    Same status (400), same message ("Disallowed CORS origin, ..."), same CORS headers;
    only the body changes shape. Successful preflights are unchanged.
    """

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-type", "content-length")
        }
        message = bytes(response.body).decode()
        return error_response(response.status_code, "cors_rejected", message, headers)


def document_bearer_auth(app: FastAPI, open_paths: Sequence[str] = OPEN_PATHS) -> None:
    """Declare the bearer scheme in ``app``'s OpenAPI document (the Authorize button in
    ``/docs``) and require it on every operation except those of ``open_paths``.

    Documentation only; ``ApiKeyMiddleware`` enforces the key.
    """
    build = app.openapi
    open_set = frozenset(open_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()  # FastAPI caches it in app.openapi_schema: edited in place
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SECURITY_SCHEME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "one of the keys in CLIPSEG_API_KEYS, sent as "
            "'Authorization: Bearer <key>'",
        }
        for path, operations in schema.get("paths", {}).items():
            if path not in open_set:
                for operation in operations.values():
                    operation["security"] = [{SECURITY_SCHEME: []}]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
