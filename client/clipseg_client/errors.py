"""Typed errors: one exception class per kind of failure, each carrying what the server
said (its ``{"error": {"code", "message", "request_id", "retry_after_s"}}`` body) and
the HTTP status, so callers can branch on the class or on ``code``."""

from __future__ import annotations

import httpx


class ClipSegError(Exception):
    """Base of every error this client raises.

    Attributes:
        status: the HTTP status, or None when no answer came (connection failures).
        code: the server's machine-readable code (``invalid_field``, ``queue_full``...).
        message: the server's human-readable message.
        request_id: the request's ``X-Request-ID`` (quote it when reporting a problem).
        retry_after: seconds the server asked to wait (429/503), else None.
        attempts: how many attempts were made before giving up.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        request_id: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message, self.status, self.code = message, status, code
        self.request_id, self.retry_after, self.attempts = request_id, retry_after, attempts

    def __str__(self) -> str:
        where = f"HTTP {self.status}" if self.status is not None else "no answer"
        rid = f", request {self.request_id}" if self.request_id else ""
        return f"{self.code}: {self.message} ({where}{rid})"


class BadRequest(ClipSegError):
    """400: the image could not be decoded, or the HTTP request was malformed."""


class Unauthorized(ClipSegError):
    """401: missing or wrong API key."""


class RequestTimeout(ClipSegError):
    """408: the request's head or body did not reach the server in time."""


class PayloadTooLarge(ClipSegError):
    """413: the upload, an image or the work the request causes is over a limit."""


class UnsupportedMedia(ClipSegError):
    """415: an upload is not an image type the server decodes."""


class InvalidInput(ClipSegError):
    """422: a field is invalid (threshold out of range, empty prompt, bad mask...)."""


class Overloaded(ClipSegError):
    """429: the server would not finish in time now; ``retry_after`` says when to retry."""


class ServerError(ClipSegError):
    """500 and other unexpected 5xx answers."""


class NotReady(ClipSegError):
    """503: the model is loading, unhealthy, shutting down, or over connection capacity."""


class DeadlineExceeded(ClipSegError):
    """504: the request did not finish before its deadline."""


class ConnectionFailed(ClipSegError):
    """No HTTP answer: connection refused/reset, DNS failure or a client-side timeout."""


_BY_STATUS: dict[int, type[ClipSegError]] = {
    400: BadRequest,
    401: Unauthorized,
    408: RequestTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMedia,
    422: InvalidInput,
    429: Overloaded,
    503: NotReady,
    504: DeadlineExceeded,
}


def error_class(status: int) -> type[ClipSegError]:
    """The exception class for an HTTP error status."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else ClipSegError


def from_response(
    response: httpx.Response,
    request_id: str | None,
    retry_after: float | None,
    attempts: int = 1,
) -> ClipSegError:
    """The typed error for a non-2xx answer; ``retry_after`` as the caller read it.

    The body is the server's JSON error when it is one; anything else (a proxy's HTML
    page) becomes the message, cut to 200 characters."""
    code, message, rid = f"http_{response.status_code}", response.text[:200].strip(), None
    try:
        detail = response.json()["error"]
        code, message = str(detail["code"]), str(detail["message"])
        rid = detail.get("request_id")
    except (ValueError, KeyError, TypeError):  # JSONDecodeError is a ValueError
        pass
    return error_class(response.status_code)(
        message or response.reason_phrase,
        status=response.status_code,
        code=code,
        request_id=rid or response.headers.get("x-request-id") or request_id,
        retry_after=retry_after,
        attempts=attempts,
    )


def connection_failed(exc: Exception, request_id: str, attempts: int) -> ConnectionFailed:
    """A ``ConnectionFailed`` for a transport error (refused, reset, timed out)."""
    kind = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_failed"
    return ConnectionFailed(
        f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
        code=kind,
        request_id=request_id,
        attempts=attempts,
    )
