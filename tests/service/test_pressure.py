"""The service under pressure (live server, tiny model): admission, client deadlines,
budgets, and health that reflects a dead, stuck or never-loaded worker."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from clipseg_serve.service.app import create_app
from clipseg_serve.service.cost import TERMS, CostModel
from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer


def per_image(seconds: float) -> CostModel:
    """``seconds`` per image, nothing else: admission arithmetic a test can follow."""
    return CostModel((0.0, seconds) + (0.0,) * (len(TERMS) - 2))


ROOT = Path(__file__).resolve().parents[2]


def post(url: str, image: bytes, prompts=("a cat",), headers=None, **fields) -> httpx.Response:
    files = {"image": ("x.png", image, "image/png")}
    return httpx.post(
        url + "/segment/text",
        data={"prompt": list(prompts), **fields},
        files=files,
        headers=headers,
        timeout=60,
    )


def service_state(app):
    return app.state.service


def on_loop(app, fn) -> None:
    """Run ``fn`` on the server's event loop (the scheduler is not thread-safe)."""
    task = service_state(app).batcher._task
    task.get_loop().call_soon_threadsafe(fn)
    time.sleep(0.1)


@pytest.fixture
def live(factory):
    """``with live(**settings) as (server, app)``: the tiny-model app on loopback."""
    servers = []

    class Live:
        def __init__(self, ready: bool = True, **overrides) -> None:
            self.app = create_app(make_settings(**overrides), factory)
            self.server = LiveServer(self.app, ready=ready)
            servers.append(self.server)

        def __enter__(self):
            self.server.__enter__()
            return self.server, self.app

        def __exit__(self, *exc):
            factory.gate.set()
            self.server.__exit__(*exc)

    yield Live
    factory.gate.set()


def test_overload_is_refused_at_once_with_an_honest_retry_after(live, factory):
    image = encode(random_image(16, 16))
    settings = {"max_queue_wait_s": 20.0, "request_timeout_s": 100.0, "max_batch_images": 1}
    with live(max_wait_ms=0.0, **settings) as (server, app):
        # 10 s per image: the arithmetic is coarse enough that milliseconds of jitter in
        # when the requests arrive cannot change a decision.
        on_loop(app, lambda: service_state(app).batcher.use_cost_model(per_image(10.0)))
        factory.gate.clear()  # the first request blocks in the model
        with ThreadPoolExecutor(8) as pool:
            first = pool.submit(post, server.url, image, ["first"])
            time.sleep(0.3)
            waiting, refused = [], []
            for i in range(6):
                future = pool.submit(post, server.url, encode(random_image(16, 16, seed=i)))
                try:
                    refused.append(future.result(timeout=1.0))
                except TimeoutError:
                    waiting.append(future)  # admitted: it waits for the gated model
            factory.gate.set()
            assert first.result().status_code == 200
            assert [f.result().status_code for f in waiting] == [200, 200]
    # The running job has < 10 s left, so the next two queue up (< 20 s of waiting); the
    # third would wait ~28 s (two admitted requests each took a 1 s look above), past the
    # burst bound: the queue is standing, and a job is admitted again once the work ahead
    # is down to the target, 1.5 typical requests (15 s): ~13 s from then.
    assert len(refused) == 4
    for response in refused:
        assert response.status_code == 429
        error = response.json()["error"]
        assert error["code"] == "overloaded"
        assert 10.0 < error["retry_after_s"] < 15.0
        assert int(response.headers["retry-after"]) == math.ceil(error["retry_after_s"])
        assert response.elapsed.total_seconds() < 0.5  # refused at once, not after waiting


def test_refusal_happens_before_the_upload_is_decoded(live, factory):
    image = encode(random_image(16, 16))
    with live(queue_size=1, max_batch_images=1, max_wait_ms=0.0) as (server, _):
        predictor = factory.instances[-1]
        decoded: list[int] = []
        original = predictor.prepare_image

        def counting(source):
            decoded.append(1)
            return original(source)

        predictor.prepare_image = counting
        factory.gate.clear()
        with ThreadPoolExecutor(3) as pool:
            running = pool.submit(post, server.url, image, ["running"])
            time.sleep(0.3)
            queued = pool.submit(post, server.url, image, ["queued"])
            time.sleep(0.3)
            refused = post(server.url, image, ["refused"])
            factory.gate.set()
            assert running.result().status_code == queued.result().status_code == 200
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert len(decoded) == 2  # the refused upload never reached the decoder


def test_client_deadline_header(live, factory):
    image = encode(random_image(16, 16))
    with live() as (server, app):
        for bad in ("soon", "0", "-1", "nan", "inf"):
            response = post(server.url, image, headers={"X-Request-Timeout": bad})
            assert response.status_code == 422, bad
            assert response.json()["error"]["code"] == "invalid_header"
        factory.gate.clear()
        start = time.monotonic()
        response = post(server.url, image, headers={"X-Request-Timeout": "0.4"})
        waited = time.monotonic() - start
        factory.gate.set()
        assert response.status_code == 504 and 0.35 < waited < 3.0
        # Longer than the server's own timeout is capped, not refused.
        assert post(server.url, image, headers={"X-Request-Timeout": "9999"}).status_code == 200
        on_loop(app, lambda: service_state(app).batcher.use_cost_model(per_image(1.0)))
        start = time.monotonic()
        hopeless = post(server.url, image, headers={"X-Request-Timeout": "0.5"})
        # 1 s of work cannot fit 0.5 s even on an idle server: the client's own deadline
        # is the cause, a 4xx (clients and load balancers do not retry it), at once.
        assert hopeless.status_code == 422
        error = hopeless.json()["error"]
        assert error["code"] == "deadline_too_short"
        assert "X-Request-Timeout of 0.5 s" in error["message"]
        assert "1.00 s of model time" in error["message"] and "margin" in error["message"]
        assert time.monotonic() - start < 0.5  # no waiting for a deadline that cannot be met


def test_a_request_no_deadline_can_fit_is_413_at_once(live):
    image = encode(random_image(16, 16))
    with live(request_timeout_s=5.0) as (server, app):
        on_loop(app, lambda: service_state(app).batcher.use_cost_model(per_image(10.0)))
        start = time.monotonic()
        response = post(server.url, image)
        assert time.monotonic() - start < 0.5
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_costly"
    # The estimate with its margin, the deadline, and what to change.
    assert "an estimated 10.00 s of model time" in error["message"]
    assert "margin" in error["message"]
    assert "deadline of 5 s" in error["message"]
    assert "CLIPSEG_REQUEST_TIMEOUT_S" in error["message"]


@pytest.mark.parametrize(
    ("settings", "fields", "setting"),
    [
        ({"max_output_pixels": 1000}, {}, "CLIPSEG_MAX_OUTPUT_PIXELS"),
        ({"max_soft_pixels": 1000}, {"soft": "true"}, "CLIPSEG_MAX_SOFT_PIXELS"),
        ({"memory_budget_mb": 1}, {"prompt": [f"p{i}" for i in range(16)]},
         "CLIPSEG_MEMORY_BUDGET_MB"),
    ],
)  # fmt: skip
def test_per_request_budgets_refuse_with_the_setting_named(live, settings, fields, setting):
    size = 1024 if "memory_budget_mb" in settings else 40
    image = encode(random_image(size, size))
    with live(**settings) as (server, _):
        response = post(server.url, image, **{"prompt": ["a cat"], **fields})
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_costly" and setting in error["message"]
        if "soft" in fields:  # the same request without soft maps is fine
            assert post(server.url, image).status_code == 200


def test_support_pixels_budget(live):
    query = encode(random_image(16, 16))
    support = encode(random_image(40, 40, seed=2))
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 5:25] = 255
    files = [
        ("image", ("q.png", query, "image/png")),
        ("support_image", ("s.png", support, "image/png")),
        ("support_mask", ("m.png", encode(Image.fromarray(mask)), "image/png")),
    ]
    with live(max_support_pixels=1000) as (server, _):
        response = httpx.post(server.url + "/segment/visual", files=files, timeout=30)
    assert response.status_code == 413
    assert "CLIPSEG_MAX_SUPPORT_PIXELS" in response.json()["error"]["message"]


def test_memory_budget_is_shared_by_requests_in_flight(live, factory):
    big = encode(random_image(300, 300))  # ~0.9 MB reserved with 8 masks: one fits in 1 MB
    with live(memory_budget_mb=1, max_batch_images=1, max_wait_ms=0.0) as (server, app):
        factory.gate.clear()
        with ThreadPoolExecutor(2) as pool:
            holding = pool.submit(post, server.url, big, [f"p{i}" for i in range(8)])
            time.sleep(0.5)
            assert service_state(app).memory.reserved > 0
            second = post(server.url, big, [f"q{i}" for i in range(8)])
            factory.gate.set()
            assert holding.result().status_code == 200
        assert second.status_code == 429 and second.json()["error"]["code"] == "memory_budget"
        assert second.headers["retry-after"] == "1"
        assert service_state(app).memory.reserved == 0  # everything given back
        assert post(server.url, big, [f"q{i}" for i in range(8)]).status_code == 200


def test_a_dead_batcher_turns_health_and_readiness_503(live):
    image = encode(random_image(16, 16))
    with live() as (server, app):
        assert httpx.get(server.url + "/healthz").status_code == 200
        on_loop(app, service_state(app).batcher._task.cancel)
        for path in ("/healthz", "/readyz"):
            response = httpx.get(server.url + path)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "unhealthy"
            assert "batcher stopped" in response.json()["error"]["message"]
        assert post(server.url, image).status_code == 503


def test_a_stuck_batch_turns_health_503_until_it_finishes(live, factory):
    image = encode(random_image(16, 16))
    with live(stuck_batch_s=0.5) as (server, _):
        factory.gate.clear()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(post, server.url, image)
            time.sleep(1.0)
            stuck = httpx.get(server.url + "/healthz")
            factory.gate.set()
            assert pending.result().status_code == 200
        assert stuck.status_code == 503 and "running for more than" in stuck.text
        assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_failed_load_fails_health_calls_on_fatal_and_hides_paths():
    reasons: list[str] = []

    def broken(settings):
        raise FileNotFoundError("no weights at /srv/secret/models/clipseg.bin")

    app = create_app(make_settings(), broken, on_fatal=reasons.append)
    with LiveServer(app, ready=False) as server:
        deadline = time.monotonic() + 10
        while not reasons and time.monotonic() < deadline:
            time.sleep(0.02)
        health = httpx.get(server.url + "/healthz")
        ready = httpx.get(server.url + "/readyz")
        segment = post(server.url, encode(random_image(8, 8)))
    assert len(reasons) == 1 and "FileNotFoundError" in reasons[0]
    for response in (health, ready, segment):
        assert response.status_code == 503
        assert "FileNotFoundError" in response.text and "/srv/secret" not in response.text


def test_clipseg_serve_exits_non_zero_when_the_weights_cannot_load(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLIPSEG_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "clipseg_serve.service.main",
               "--weights", "random:no-such-variant",
               "--port", "0", "--log-level", "warning"]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=180)
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert b"no-such-variant" in done.stderr
