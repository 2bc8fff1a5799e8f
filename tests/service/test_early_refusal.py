"""Refusing at the door (service.early_refusal): while the scheduler would refuse even the
cheapest request, a segmentation request gets its 429 from its head alone — its body is
never read — and the connection stays usable; otherwise the endpoint decides as before."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx

from clipseg_serve.service.early_refusal import CHEAPEST, EarlyRefusalMiddleware
from clipseg_serve.service.errors import ApiError
from tests.conftest import encode, random_image
from tests.service import test_pressure
from tests.service.test_pressure import post

live = test_pressure.live  # the live-server fixture, shared


class _Batcher:
    def __init__(self, refusal: ApiError | None) -> None:
        self.refusal_to_give, self.asked = refusal, []

    def refusal(self, work, deadline):
        self.asked.append((work, deadline - time.monotonic()))
        return self.refusal_to_give


def _run(middleware, path: str = "/v1/segment/text", method: str = "POST", headers=()):
    """(what the app saw, the messages sent, whether ``receive`` was called)."""
    seen, sent, received = [], [], []

    async def app(scope, receive, send):
        seen.append(scope["path"])

    async def receive():
        received.append(1)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    middleware.app = app
    asyncio.run(middleware(scope, receive, send))
    return seen, sent, bool(received)


def _middleware(batcher, ready=True, timeout=30.0):
    state = SimpleNamespace(ready=ready, batcher=batcher,
                            settings=SimpleNamespace(request_timeout_s=timeout))  # fmt: skip
    return EarlyRefusalMiddleware(None, lambda: state)


def test_a_full_scheduler_is_answered_from_the_head():
    refusal = ApiError(429, "overloaded", "busy", {"Retry-After": "2"}, retry_after=1.5)
    batcher = _Batcher(refusal)
    seen, sent, received = _run(_middleware(batcher), headers=[(b"x-request-timeout", b"5")])
    assert seen == [] and not received  # the app never ran, the body was never read
    start = sent[0]
    assert start["status"] == 429 and (b"retry-after", b"2") in start["headers"]
    assert b'"retry_after_s":1.5' in sent[1]["body"] and b'"overloaded"' in sent[1]["body"]
    (work, left), = batcher.asked  # fmt: skip
    assert work == CHEAPEST and 4.9 < left <= 5.0  # the client's shorter deadline


def test_everything_else_goes_to_the_endpoint():
    refusal = ApiError(429, "overloaded", "busy", {"Retry-After": "1"}, retry_after=0.5)
    for case in (
        {"path": "/info", "method": "GET"},
        {"path": "/v1/segment/text", "method": "GET"},
        {"headers": [(b"x-request-timeout", b"soon")]},  # the endpoint's 422
    ):
        seen, sent, _ = _run(_middleware(_Batcher(refusal)), **case)
        assert seen and not sent, case
    seen, sent, _ = _run(_middleware(_Batcher(refusal), ready=False))  # the endpoint's 503
    assert seen and not sent
    seen, sent, _ = _run(_middleware(_Batcher(None)))  # a cheap request would be admitted
    assert seen == ["/v1/segment/text"] and not sent


def test_live_refusal_skips_the_body_and_keeps_the_connection(live, factory):
    """The queue full (one job running, one queued): a request with a body that is not
    even a valid form gets the queue's 429 — the endpoint would have said 422 — on a
    connection that then serves the next request."""
    image = encode(random_image(16, 16))
    with live(queue_size=1, max_batch_images=1, max_wait_ms=0.0) as (server, _):
        factory.gate.clear()
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post, server.url, image, ["running"])
            time.sleep(0.3)
            queued = pool.submit(post, server.url, image, ["queued"])
            time.sleep(0.3)
            with httpx.Client(base_url=server.url, timeout=30) as client:
                refused = client.post(
                    "/v1/segment/text",
                    content=b"not a multipart body" * 500,
                    headers={"Content-Type": "multipart/form-data; boundary=x"},
                )
                health = client.get("/healthz")
            factory.gate.set()
            assert running.result().status_code == queued.result().status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["retry-after"]) >= 1
    assert health.status_code == 200  # same client, connection reused after the refusal
    assert 'clipseg_rejected_total{reason="queue_full"} 1.0' in metrics
