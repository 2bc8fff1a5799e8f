"""When to retry and how long to wait: pure decisions shared by both clients.

Retried: 429 and 503 answers (after the server's ``Retry-After`` when it sent one, else
after a backoff) and transport failures (refused, reset, timed out) after exponential
backoff with full jitter (a uniform wait in ``[0, min(cap, base * 2**n)]``, which spreads
clients that failed together instead of having them return in lockstep). Everything
stays inside one time budget per call: a wait that would end past the budget is never
started, the last error is raised at once instead.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried.

    Attributes:
        max_attempts: attempts in all, the first included (1 = never retry).
        budget_s: total seconds one call may take, every attempt and wait included.
        backoff_base_s: the first backoff's upper bound; it doubles per retry...
        backoff_cap_s: ...up to this.
        retry_statuses: HTTP statuses that are retried.
        retry_transport_errors: retry connection failures and client-side timeouts.
    """

    max_attempts: int = 5
    budget_s: float = 60.0
    backoff_base_s: float = 0.25
    backoff_cap_s: float = 8.0
    retry_statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 503}))
    retry_transport_errors: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.budget_s <= 0 or self.backoff_base_s < 0 or self.backoff_cap_s < 0:
            raise ValueError("budget_s must be > 0 and the backoff bounds >= 0")

    def backoff(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Full-jitter wait before retry number ``retry`` (0-based)."""
        return rand() * min(self.backoff_cap_s, self.backoff_base_s * 2.0**retry)


#: A policy that never retries.
NO_RETRY = RetryPolicy(max_attempts=1)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP-date; None when
    absent or unreadable. ``now`` is the wall-clock time (``time.time()``) for dates."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_retryable_transport_error(exc: Exception) -> bool:
    """Failures where the server may well answer a second try: no connection, a reset,
    a timeout. Not: an invalid URL or an unsupported scheme (they never get better)."""
    return isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError))


class Attempts:
    """The retry bookkeeping of one call: attempts made and the budget left."""

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy, self.clock, self.rand = policy, clock, rand
        self.started = clock()
        self.made = 0

    def remaining(self) -> float:
        """Seconds left in the budget (may be negative)."""
        return self.policy.budget_s - (self.clock() - self.started)

    def timeout(self, per_request: float | None) -> float:
        """The next attempt's timeout: the per-request one, cut to the budget left."""
        left = max(self.remaining(), 0.001)
        return left if per_request is None else min(per_request, left)

    def next_delay(self, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or None to give up now: attempts are
        used up, or the wait (``retry_after`` if the server gave one, else a backoff)
        would end at or past the budget."""
        if self.made >= self.policy.max_attempts:
            return None
        delay = (
            retry_after
            if retry_after is not None
            else self.policy.backoff(self.made - 1, self.rand)
        )
        return delay if delay < self.remaining() else None
