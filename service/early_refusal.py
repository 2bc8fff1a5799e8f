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

import math
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from .cost import Work
from .errors import ApiError, error_response
from .state import ServiceState

#: The smallest job a request can be: the scheduler's estimate grows with every term.
CHEAPEST = Work(images=1.0, rows=1.0)


class EarlyRefusalMiddleware:
    """429 from the request head for the segmentation endpoints (``paths``) while the
    scheduler would refuse any job; see the module docstring."""

    def __init__(
        self,
        app: ASGIApp,
        state: Callable[[], ServiceState],
        paths: frozenset[str],
        deadline_header: str,
    ) -> None:
        self.app, self.state, self.paths = app, state, paths
        self.deadline_header = deadline_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            refusal = self._refusal(scope)
            if refusal is not None:
                response = error_response(
                    refusal.status,
                    refusal.code,
                    refusal.message,
                    refusal.headers,
                    refusal.retry_after,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> ApiError | None:
        """The 429 every request would get now, or None (let the endpoint decide)."""
        state = self.state()
        batcher = state.batcher
        if not state.ready or batcher is None:
            return None
        deadline = self._deadline(scope, state.settings.request_timeout_s)
        if deadline is None:
            return None
        return batcher.refusal(CHEAPEST, deadline)

    def _deadline(self, scope: Scope, timeout: float) -> float | None:
        """As the endpoint computes it (``routes.request_deadline``); None when the header
        is malformed (the endpoint answers that 422)."""
        raw = Headers(scope=scope).get(self.deadline_header)
        if raw is not None:
            try:
                asked = float(raw)
            except ValueError:
                return None
            if not math.isfinite(asked) or asked <= 0:
                return None
            timeout = min(timeout, asked)
        return time.monotonic() + timeout
