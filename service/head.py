"""``HEAD`` wherever ``GET`` is served (RFC 9110 §9.3.2): same status and headers, no body.

FastAPI registers an ``@app.get`` route for ``GET`` alone, so ``HEAD /healthz`` — what
load balancers and uptime checks send — was a 405. Rather than a second method on every
route (and every future one), ``HeadAsGetMiddleware`` serves a ``HEAD`` request as the
``GET`` it stands for and drops the body on the way out, so the headers, the
``Content-Length`` included, are exactly the ``GET``'s. Where ``GET`` is not served the
answer is ``GET``'s too: 405 on the POST-only endpoints, 404 on unknown paths.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["HeadAsGetMiddleware"]


class HeadAsGetMiddleware:
    """Pure ASGI: a ``HEAD`` request reaches ``app`` as ``GET``; only the head of its
    answer is sent.

    The app gets a *copy* of the scope: the server's own keeps ``HEAD`` (uvicorn's access
    log, and its h11 protocol, which writes no body bytes for a ``HEAD`` either way).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_head(message: Message) -> None:
            if message["type"] == "http.response.start":
                await send(message)
            elif not message.get("more_body", False):
                # The last part of the body (or a "pathsend" of a whole file): the response
                # ends here, with no bytes. Earlier parts are dropped.
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, send_head)
