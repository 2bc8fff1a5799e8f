"""Retries, budget and concurrency, against a scripted stub server on loopback (the
real server cannot be made to answer 429 on cue)."""

from __future__ import annotations

import asyncio
import email.utils
import socket
import time

import numpy as np
import pytest

from clipseg_client import (
    AsyncClient,
    Client,
    ConnectionFailed,
    InvalidInput,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    RetryPolicy,
    Segmentation,
)
from tests.client.stub import Reply, Stub, error_reply

IMAGE = np.zeros((3, 4), np.uint8)
FAST = RetryPolicy(max_attempts=5, budget_s=10.0, backoff_base_s=0.01, backoff_cap_s=0.05)


def overloaded(retry_after: str) -> Reply:
    return error_reply(429, "queue_full", {"Retry-After": retry_after}, retry_after_s=0.2)


def test_429_is_retried_after_retry_after_with_the_same_request_id():
    with Stub([overloaded("1"), Reply()]) as stub, Client(stub.url, retry=FAST) as client:
        result = client.segment_text(IMAGE, "a cat")
    first, second = stub.seen
    # the header's whole second, not the body's shorter estimate: the header is the
    # server's promise of when a retry is admitted.
    assert second.at - first.at >= 1.0
    assert first.headers["X-Request-ID"] == second.headers["X-Request-ID"] != ""
    assert first.headers["Accept"] == "application/json"
    assert isinstance(result, Segmentation) and result.width == 4


def test_retry_after_as_an_http_date():
    date = email.utils.formatdate(time.time() + 2, usegmt=True)  # 1-2 s (whole seconds)
    with Stub([overloaded(date), Reply()]) as stub, Client(stub.url, retry=FAST) as client:
        client.segment_text(IMAGE, "a cat")
    assert stub.seen[1].at - stub.seen[0].at >= 0.9


def test_a_retry_after_past_the_budget_raises_at_once():
    policy = RetryPolicy(max_attempts=5, budget_s=3.0)
    with Stub([overloaded("30")]) as stub, Client(stub.url, retry=policy) as client:
        start = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            client.segment_text(IMAGE, "a cat")
        elapsed = time.monotonic() - start
    assert elapsed < 0.5 and len(stub.seen) == 1
    error = caught.value
    assert error.retry_after == 30.0 and error.status == 429 and error.code == "queue_full"
    assert error.request_id == stub.seen[0].headers["X-Request-ID"]


def test_the_budget_stops_retries_part_way():
    policy = RetryPolicy(max_attempts=10, budget_s=2.5)
    with Stub([overloaded("1")]) as stub, Client(stub.url, retry=policy) as client:
        start = time.monotonic()
        with pytest.raises(Overloaded) as caught:
            client.segment_text(IMAGE, "a cat")
        elapsed = time.monotonic() - start
    # waits of 1 s at 0 and 1 s fit; a third would end at ~3 s, past 2.5: not started.
    assert len(stub.seen) == 3 and caught.value.attempts == 3
    assert 2.0 <= elapsed < 2.5


def test_503_is_retried_with_backoff_and_max_attempts_hold():
    replies = [error_reply(503, "not_ready")]
    policy = RetryPolicy(max_attempts=3, budget_s=10.0, backoff_base_s=0.01)
    stub = Stub(replies)
    with stub, Client(stub.url, retry=policy) as client, pytest.raises(NotReady) as caught:
        client.segment_text(IMAGE, "a cat")
    assert len(stub.seen) == 3 and caught.value.attempts == 3
    assert caught.value.code == "not_ready"


def test_final_errors_are_not_retried():
    stub = Stub([error_reply(422, "invalid_field"), Reply()])
    with stub, Client(stub.url, retry=FAST) as client, pytest.raises(InvalidInput):
        client.segment_text(IMAGE, "a cat")
    assert len(stub.seen) == 1


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(413, "request_too_costly", PayloadTooLarge), (422, "deadline_too_short", InvalidInput)],
)
def test_a_request_that_can_never_fit_is_not_retried(status, code, error):
    """The server's "this cannot finish inside its deadline even when idle" is final: the
    same request would be refused the same way every time."""
    stub = Stub([error_reply(status, code), Reply()])
    with stub, Client(stub.url, retry=FAST) as client, pytest.raises(error) as caught:
        client.segment_text(IMAGE, "a cat")
    assert caught.value.code == code and caught.value.attempts == 1
    assert len(stub.seen) == 1


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_connection_refused_is_retried_with_backoff_within_the_budget():
    policy = RetryPolicy(max_attempts=100, budget_s=1.5, backoff_base_s=0.05, backoff_cap_s=0.4)
    with Client(f"http://127.0.0.1:{free_port()}", retry=policy) as client:
        start = time.monotonic()
        with pytest.raises(ConnectionFailed) as caught:
            client.segment_text(IMAGE, "a cat")
        elapsed = time.monotonic() - start
    error = caught.value
    assert error.status is None and error.code == "connection_failed"
    assert len(error.request_id) == 32
    # Within the budget: no wait ends past it, and a refused attempt takes no time.
    assert elapsed < policy.budget_s + 0.2
    # Backoff, not a busy loop: with waits up to 0.05, 0.1, 0.2, 0.4, 0.4... (mean half
    # of that), 1.5 s hold about 10 attempts, never the 100 allowed.
    assert 3 <= error.attempts <= 40


def test_async_client_retries_too():
    async def run():
        async with AsyncClient(stub.url, retry=FAST) as client:
            return await client.segment_text(IMAGE, "a cat")

    with Stub([overloaded("1"), Reply()]) as stub:
        assert isinstance(asyncio.run(run()), Segmentation)
    assert stub.seen[1].at - stub.seen[0].at >= 1.0


def test_async_segment_many_stays_within_its_concurrency():
    async def run():
        async with AsyncClient(stub.url, retry=FAST) as client:
            return await client.segment_many([IMAGE] * 12, "a cat", concurrency=3)

    with Stub([Reply(delay_s=0.15)]) as stub:
        start = time.monotonic()
        results = asyncio.run(run())
        elapsed = time.monotonic() - start
    assert len(results) == 12 and all(isinstance(r, Segmentation) for r in results)
    assert stub.max_in_flight == 3  # concurrent, and never above the bound
    assert elapsed < 12 * 0.15 * 0.7  # far quicker than one at a time


def test_sync_segment_many_stays_within_its_concurrency_and_keeps_going():
    replies = [Reply(delay_s=0.1)] * 5 + [error_reply(422, "invalid_prompt")] + [
        Reply(delay_s=0.1)
    ]  # fmt: skip
    with Stub(replies) as stub, Client(stub.url, retry=FAST) as client:
        results = client.segment_many([IMAGE] * 10, "a cat", concurrency=4)
    assert stub.max_in_flight == 4
    failed = [r for r in results if isinstance(r, InvalidInput)]
    assert len(failed) == 1 and sum(isinstance(r, Segmentation) for r in results) == 9


def test_fail_fast_stops_the_run():
    async def run():
        async with AsyncClient(stub.url, retry=FAST) as client:
            return await client.segment_many([IMAGE] * 20, "a cat", concurrency=2, fail_fast=True)

    with Stub([error_reply(422, "invalid_prompt")]) as stub, pytest.raises(InvalidInput):
        asyncio.run(run())
    assert len(stub.seen) <= 3  # the rest were cancelled, never sent


def test_wait_ready_gives_up_after_its_timeout():
    with Client(f"http://127.0.0.1:{free_port()}", retry=FAST) as client:
        start = time.monotonic()
        with pytest.raises(NotReady):
            client.wait_ready(timeout=0.3, interval=0.05)
        assert time.monotonic() - start < 1.0

    async def run():
        async with AsyncClient(stub.url) as client:
            await client.wait_ready(timeout=5.0, interval=0.05)

    with Stub([error_reply(503, "not_ready"), Reply(body={"status": "ready"})]) as stub:
        asyncio.run(run())
    assert len(stub.seen) == 2  # polled until the 200


def test_progress_bar_counts_every_item(capsys):
    with Stub([Reply()]) as stub, Client(stub.url, retry=FAST) as client:
        results = client.segment_many([IMAGE] * 3, "a cat", progress=True)
    assert len(results) == 3
    assert "3/3" in capsys.readouterr().err  # tqdm's bar, on stderr
