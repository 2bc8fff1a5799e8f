"""What the sync and async clients share: settings, headers, and reading an answer."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from .calls import Call
from .errors import ClipSegError, connection_failed, from_response
from .results import Segmentation, parse_segmentation
from .retry import Attempts, RetryPolicy, is_retryable_transport_error, parse_retry_after
from .version import __version__

#: Environment variable read when no ``api_key`` is given.
API_KEY_ENV = "CLIPSEG_API_KEY"
DEFAULT_URL = "http://127.0.0.1:8000"
REQUEST_ID_HEADER = "X-Request-ID"
DEADLINE_HEADER = "X-Request-Timeout"


def new_request_id() -> str:
    """A fresh request ID (32 hex digits, the server's own format)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Settings:
    """A client's settings (see ``Client``)."""

    url: str
    api_key: str | None
    timeout: float | None
    retry: RetryPolicy
    deadline_s: float | None

    @classmethod
    def make(
        cls,
        url: str,
        api_key: str | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        deadline_s: float | None,
    ) -> Settings:
        """Settings with the defaults filled in (the key from ``CLIPSEG_API_KEY``)."""
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        return cls(url.rstrip("/"), key, timeout, retry or RetryPolicy(), deadline_s)

    def base_headers(self) -> dict[str, str]:
        """Headers of every request: the key and who we are."""
        headers = {"User-Agent": f"clipseg-client/{__version__}"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers


def call_headers(request_id: str, deadline_s: float | None) -> dict[str, str]:
    """Headers of one call: JSON always (else one PNG mask comes back as a bare PNG),
    the request ID shared by all its attempts, and the deadline asked of the server."""
    headers = {"Accept": "application/json", REQUEST_ID_HEADER: request_id}
    if deadline_s is not None:
        headers[DEADLINE_HEADER] = f"{float(deadline_s):g}"
    return headers


def retry_after_of(response: httpx.Response) -> float | None:
    """The seconds the server asked to wait: its ``Retry-After`` header, else the
    ``retry_after_s`` of its error body, else None."""
    header = parse_retry_after(response.headers.get("retry-after"))
    if header is not None:
        return header
    try:
        value = response.json()["error"]["retry_after_s"]
        return None if value is None else max(0.0, float(value))
    except (ValueError, KeyError, TypeError):
        return None


def segmentation_of(response: httpx.Response, request_id: str) -> Segmentation:
    """A 2xx segment answer decoded.

    Raises:
        ClipSegError: the body is not the JSON answer (a proxy in the way, or a server
            that does not speak this API).
    """
    rid = response.headers.get(REQUEST_ID_HEADER) or request_id
    try:
        return parse_segmentation(response.json(), rid)
    except (ValueError, KeyError, TypeError) as exc:
        raise ClipSegError(
            f"unexpected answer ({response.headers.get('content-type')}): {exc}",
            status=response.status_code,
            code="invalid_response",
            request_id=rid,
        ) from exc


def error_of(response: httpx.Response, request_id: str, attempts: int) -> ClipSegError:
    """The typed error of a non-2xx answer."""
    return from_response(response, request_id, retry_after_of(response), attempts)


def request_args(
    method: str, path: str, call: Call | None, headers: dict[str, str], timeout: float
) -> dict[str, Any]:
    """The keyword arguments of one attempt's ``httpx`` request (the same every attempt:
    the uploads are bytes, so a retry re-sends them as they were)."""
    args: dict[str, Any] = {"method": method, "url": path, "headers": headers, "timeout": timeout}
    if call is not None:
        args |= {"data": call.data, "files": call.file_parts()}
    return args


class CallPlan:
    """The attempts of one call, without the I/O: the sync and async clients run the
    same loop around it and differ only in how they send and sleep::

        plan = CallPlan(...)
        while True:
            outcome = send(plan.request())       # a Response, or the TransportError
            delay = plan.after(outcome)           # raises when the failure is final
            if delay is None:
                return outcome                    # a 2xx
            sleep(delay)
    """

    def __init__(
        self,
        settings: Settings,
        method: str,
        path: str,
        call: Call | None = None,
        *,
        timeout: float | None = None,
        deadline_s: float | None = None,
        request_id: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.request_id = request_id or new_request_id()
        self.attempts = Attempts(retry or settings.retry)
        deadline = deadline_s if deadline_s is not None else settings.deadline_s
        self.headers = call_headers(self.request_id, deadline)
        self.per_attempt = timeout if timeout is not None else settings.timeout
        self.method, self.path, self.call = method, path, call

    def request(self) -> dict[str, Any]:
        """The next attempt's ``httpx`` request arguments (counts the attempt)."""
        self.attempts.made += 1
        timeout = self.attempts.timeout(self.per_attempt)
        return request_args(self.method, self.path, self.call, self.headers, timeout)

    def after(self, outcome: httpx.Response | httpx.TransportError) -> float | None:
        """None when ``outcome`` is a 2xx answer, else the seconds to wait before the
        next attempt; raises the typed error when there is none."""
        if isinstance(outcome, httpx.Response) and outcome.is_success:
            return None
        return wait_or_raise(self.attempts, self.request_id, outcome)


def wait_or_raise(
    attempts: Attempts, request_id: str, outcome: httpx.Response | httpx.TransportError
) -> float:
    """After a failed attempt (a non-2xx answer or a transport error): the seconds to
    wait before the next one, or raises the typed error when it is final, the attempts
    are used up, or the wait would end past the budget."""
    policy = attempts.policy
    cause: BaseException | None = None
    if isinstance(outcome, httpx.Response):
        error = error_of(outcome, request_id, attempts.made)
        retryable = outcome.status_code in policy.retry_statuses
    else:
        error, cause = connection_failed(outcome, request_id, attempts.made), outcome
        retryable = policy.retry_transport_errors and is_retryable_transport_error(outcome)
    delay = attempts.next_delay(error.retry_after) if retryable else None
    if delay is None:
        raise error from cause
    return delay
