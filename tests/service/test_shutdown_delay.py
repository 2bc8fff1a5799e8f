"""CLIPSEG_SHUTDOWN_DELAY_S: after SIGTERM the server keeps serving, with /readyz 503,
for the delay; then it drains and exits (a real ``clipseg-serve`` process)."""

from __future__ import annotations

import signal
import time

import httpx

from bench.replicas import query_image, spawn


def test_stop_signal_turns_readiness_off_but_keeps_serving():
    replica = spawn(CLIPSEG_SHUTDOWN_DELAY_S="2")
    try:
        replica.wait("/readyz", 200)
        replica.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        ready = httpx.get(replica.url + "/readyz", timeout=5)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "shutting_down"
        assert httpx.get(replica.url + "/healthz", timeout=5).status_code == 200
        metrics = httpx.get(replica.url + "/metrics", timeout=5).text
        assert "clipseg_ready 0.0" in metrics
        answer = httpx.post(
            replica.url + "/v1/segment/text",
            files={"image": ("q.jpg", query_image(256), "image/jpeg")},
            data={"prompt": "a cat", "format": "rle"},
            timeout=30,
        )
        assert answer.status_code == 200, "new requests are still served during the delay"
        status = replica.process.wait(timeout=30)
        assert time.monotonic() - signalled >= 2.0
        assert status in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    finally:
        replica.stop()


def test_without_a_delay_the_stop_is_immediate():
    replica = spawn()
    try:
        replica.wait("/readyz", 200)
        replica.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        replica.process.wait(timeout=30)
        assert time.monotonic() - signalled < 2.0
    finally:
        replica.stop()
