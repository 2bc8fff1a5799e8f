"""A request's deadline: the server's timeout, or the shorter one its client asks for with
``X-Request-Timeout``. Read by the early refusal (from the request head) and by the
endpoints, so both agree."""

from __future__ import annotations

import math

from starlette.requests import Request

from clipseg_serve.service.errors import ApiError

#: Request header asking for a shorter deadline than the server's, in seconds.
DEADLINE_HEADER = "X-Request-Timeout"


def request_deadline(request: Request, timeout: float, start: float) -> float:
    """The request's deadline (monotonic): ``start`` plus the server's ``timeout``, or the
    client's shorter ``X-Request-Timeout``; 422 when that header is malformed."""
    asked = asked_timeout(request)
    return start + (timeout if asked is None else min(timeout, asked))


def asked_timeout(request: Request) -> float | None:
    """The client's ``X-Request-Timeout`` in seconds (None when not sent); 422 when it is
    not a positive number."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        asked = float(raw)
    except ValueError:
        asked = math.nan
    if not math.isfinite(asked) or asked <= 0:
        raise ApiError(
            422,
            "invalid_header",
            f"{DEADLINE_HEADER} must be a positive number of seconds, got {raw[:40]!r}",
        )
    return asked
