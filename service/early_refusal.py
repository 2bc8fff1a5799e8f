"""Refusing at the door: a 429 before the body is read, when even the cheapest request
would be refused.

The endpoints check a request's cost against the scheduler only after parsing its
multipart body and form and reading the image headers (the cost depends on them): a few
milliseconds of CPU per refusal. Under a heavy overload on a small CPU box that work takes
the cores from the model. But when the scheduler would refuse the cheapest possible
request — one image, one prompt, no pixels — it refuses every request, so this middleware
answers the same 429 (same code, message and ``Retry-After``, counted in the same metric)
from the request head alone. The unread body is discarded by the HTTP server, and the
connection stays open.

It sits innermost in the door (``service.door``): authentication and the body limits
come first. Anything else — a server not ready, a bad ``X-Request-Timeout``, a deadline
the cheapest request would miss (a 504, not a 429) — goes on to the endpoint, which
answers as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from clipseg_serve.service.cost import Work
from clipseg_serve.service.deadline import request_deadline
from clipseg_serve.service.errors import ApiError, api_error_response
from clipseg_serve.service.paths import SEGMENT_PATHS
from clipseg_serve.service.state import ServiceState

#: The smallest job a request can be: the scheduler's estimate grows with every term.
CHEAPEST = Work(images=1.0, rows=1.0)


class EarlyRefusalMiddleware:
    """429 from the request head for the segmentation endpoints (``paths.SEGMENT_PATHS``)
    while the scheduler would refuse any job; see the module docstring."""

    def __init__(self, app: ASGIApp, state: Callable[[], ServiceState]) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in SEGMENT_PATHS:
            refusal = self._refusal(scope)
            if refusal is not None:
                await api_error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ApiError | None:
        """The 429 every request would get now, or None (let the endpoint decide)."""
        state = self.state()
        batcher = state.batcher
        if not state.ready or batcher is None:
            return None
        try:
            # The endpoint's own deadline: the server's timeout or the client's shorter one.
            deadline = request_deadline(
                Request(scope), state.settings.request_timeout_s, time.monotonic()
            )
        except ApiError:
            return None  # a malformed X-Request-Timeout: the endpoint answers its 422
        return batcher.refusal(CHEAPEST, deadline)
