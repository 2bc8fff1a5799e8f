"""The pipelined worker: same answers as the plain one, and batches really overlap."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service.app import create_app
from clipseg_serve.service.config import Settings
from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer
from tests.service.test_api import post_text

PROMPTS = ["a cat", "a dog", "the sky", "grass", "a red car", "something round"]


#: The tiny random model's probabilities sit in about [0.43, 0.47]: a threshold inside that
#: range gives masks with real edges (not all on or all off).
THRESHOLD = "0.452"


def _answers(serve, pipeline: bool) -> list[tuple[int, dict]]:
    """Status and body (timings removed) of 12 concurrent requests, in request order."""
    images = [encode(random_image(40 + 7 * i, 31 + 5 * i, seed=i)) for i in range(4)]
    jobs = [(images[i % 4], [PROMPTS[i % 6], PROMPTS[(i + 2) % 6]], i % 3) for i in range(12)]

    def send(job):
        image, prompts, variant = job
        fields = [{"format": "rle"}, {"format": "png"}, {"format": "rle", "soft": "true"}]
        response = post_text(server.url, image, prompts, threshold=THRESHOLD, **fields[variant])
        body = json.loads(response.text)
        body.pop("timings_ms", None)
        return response.status_code, body

    with serve(pipeline="on" if pipeline else "off", max_wait_ms=30.0) as server:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(send, jobs))
        info = httpx.get(server.url + "/info").json()
    assert info["batching"]["pipeline"] is pipeline
    return answers


def test_pipelined_and_plain_workers_give_identical_answers(serve):
    plain = _answers(serve, pipeline=False)
    pipelined = _answers(serve, pipeline=True)
    assert all(status == 200 for status, _ in plain)
    areas = [m["area"] for _, body in plain for m in body["masks"]]
    full = [body["width"] * body["height"] for _, body in plain for _ in body["masks"]]
    assert any(0 < a < f for a, f in zip(areas, full, strict=True))  # real edges to compare
    assert pipelined == plain  # every mask, score, box and soft map byte for byte


class _Recorder(Predictor):
    """Records when each batch's launch and collect start and end (monotonic seconds)."""

    events: list[tuple[str, int, float]]
    collect_seconds = 0.3

    def launch(self, plan, keep=None):
        n = len([e for e in self.events if e[0] == "launch-start"])
        self.events.append(("launch-start", n, time.monotonic()))
        pending = super().launch(plan, keep)
        pending.batch_number = n  # type: ignore[attr-defined]
        self.events.append(("launch-end", n, time.monotonic()))
        return pending

    def collect(self, pending):
        n = pending.batch_number
        self.events.append(("collect-start", n, time.monotonic()))
        time.sleep(self.collect_seconds)  # a slow copy back: the next batch must not wait
        results = super().collect(pending)
        self.events.append(("collect-end", n, time.monotonic()))
        return results


@pytest.mark.parametrize("pipeline", [True, False])
def test_the_next_batch_launches_while_the_previous_is_collected(tiny_model, pipeline):

    events: list[tuple[str, int, float]] = []

    def factory(settings):
        predictor = _Recorder(tiny_model, device="cpu")
        predictor.events = events
        return predictor

    settings = make_settings(pipeline="on" if pipeline else "off", max_wait_ms=0.0, warmup=False)
    app = create_app(settings, factory)
    with LiveServer(app, ready=True, log_level="warning") as server:
        image = encode(random_image(32, 32))
        first = threading.Thread(target=post_text, args=(server.url, image, ["a"]))
        first.start()
        deadline = time.monotonic() + 10
        while not any(e[0] == "collect-start" for e in events) and time.monotonic() < deadline:
            time.sleep(0.005)
        second = post_text(server.url, encode(random_image(32, 32, seed=1)), ["b"])
        first.join(timeout=30)
    assert second.status_code == 200
    at = {(kind, n): t for kind, n, t in events}
    overlapped = at["launch-start", 1] < at["collect-end", 0]
    # Pipelined, batch 1 is launched while batch 0 is still being collected; plain, the
    # worker finishes batch 0 (collect included) before it takes batch 1.
    assert overlapped is pipeline


def test_the_service_is_not_ready_until_compilation_has_finished(tiny_model):
    """``Predictor.warm_up`` (torch.compile of every bucket) runs before /readyz is 200."""

    compiled = threading.Event()

    class SlowToCompile(Predictor):
        def warm_up(self) -> None:
            compiled.wait(timeout=30)

    app = create_app(make_settings(warmup=False), lambda s: SlowToCompile(tiny_model, device="cpu"))
    with LiveServer(app, ready=False) as server:
        time.sleep(0.3)
        assert httpx.get(server.url + "/readyz").status_code == 503
        compiled.set()
        server.until_ready(time.monotonic() + 30)
        assert httpx.get(server.url + "/readyz").status_code == 200


def test_pipelining_is_automatic_on_cuda_only(serve):

    assert Settings(_env_file=None).pipeline == "auto"
    assert Settings(_env_file=None, pipeline="TRUE").pipeline == "on"
    assert Settings(_env_file=None, pipeline="0").pipeline == "off"
    with serve() as server:  # auto, on the CPU: a launch computes, nothing to overlap
        assert httpx.get(server.url + "/info").json()["batching"]["pipeline"] is False


class _SlowLaunch(Predictor):
    """Launch takes 50 ms more (a GPU launch waits on host syncs in rendering): under load
    the previous batch's collect always ends while the next launch runs."""

    def launch(self, plan, keep=None):
        time.sleep(0.05)
        return super().launch(plan, keep)


def test_sustained_pipelined_load_is_not_mistaken_for_a_stuck_batch(tiny_model):
    """The watchdog measures the oldest batch in flight, not the start of a busy streak:
    back-to-back batches for longer than ``stuck_batch_s`` keep /healthz at 200."""

    settings = make_settings(pipeline="on", max_wait_ms=0.0, stuck_batch_s=0.5, warmup=False)
    app = create_app(settings, lambda s: _SlowLaunch(tiny_model, device="cpu"))
    image = encode(random_image(48, 48, seed=7))
    health: list[int] = []
    with LiveServer(app, log_level="error") as server:
        stop = time.monotonic() + 2.5

        def client() -> int:
            sent = 0
            while time.monotonic() < stop:
                assert post_text(server.url, image, ["a"]).status_code == 200
                sent += 1
            return sent

        with ThreadPoolExecutor(6) as pool:
            sent = [pool.submit(client) for _ in range(6)]
            while time.monotonic() < stop:
                health.append(httpx.get(server.url + "/healthz").status_code)
                time.sleep(0.05)
            total = sum(f.result() for f in sent)
    assert total > 20 and len(health) > 10
    assert set(health) == {200}
