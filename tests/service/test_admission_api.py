"""Admission as a client sees it (live server, tiny model): every legitimate kind of
request is served by an idle server, bursts are queued whole, the estimates are reported
beside the real times, and their accuracy is in /metrics."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import encode, random_image
from tests.service.test_pressure import live, on_loop, per_image, post, service_state

__all__ = ["live"]  # the fixture, shared with test_pressure

#: A tight server deadline: each kind below really takes well under a second on the tiny
#: model, so an estimate off by an order of magnitude (the old fixed 50 MP charged to PAMR
#: made a 64x48 image "need" 23 s) would refuse it.
TIMEOUT_S = 5.0

KINDS = {
    "plain 64x48": ((64, 48), {}),
    "pamr 64x48": ((64, 48), {"refine": "pamr"}),
    "pamr 640x480, 50 iterations": ((640, 480), {"refine": "pamr", "pamr_iterations": "50"}),
    "guided 1 MP, radius 2": ((1000, 1000), {"refine": "guided", "radius": "2"}),
    "soft 1 MP": ((1000, 1000), {"soft": "true"}),
    "instances + polygons, 1 MP": ((1000, 1000), {"instances": "true", "format": "polygon"}),
    "shape steps 1 MP": (
        (1000, 1000),
        {"min_area": "16", "fill_holes": "true", "erode": "2", "dilate": "2"},
    ),
    "16 prompts, ensemble": (
        (640, 480),
        {"prompt": [f"p{i}" for i in range(16)], "template": "ensemble"},
    ),
    "negatives, argmax, background prompt": (
        (320, 240),
        {
            "prompt": ["a", "b"],
            "negative_prompt": ["c"],
            "combine": "argmax",
            "background": "prompt",
            "format": "rle",
        },
    ),
}  # fmt: skip


def timings(response: httpx.Response) -> dict[str, float]:
    """Server-Timing as {name: milliseconds}."""
    header = response.headers["server-timing"]
    return {m[1]: float(m[2]) for m in re.finditer(r"(\w+);dur=([\d.]+)", header)}


@pytest.mark.parametrize("kind", KINDS)
def test_an_idle_server_serves_each_legitimate_kind_and_reports_its_estimate(serve, kind):
    (width, height), fields = KINDS[kind]
    image = encode(random_image(width, height))
    with serve(request_timeout_s=TIMEOUT_S) as server:
        response = post(server.url, image, **{"prompt": ["a cat"], **fields})
        assert response.status_code == 200, response.text
        spent = timings(response)
        # The estimate of this request alone, beside the model's real time (ms).
        assert 0.0 < spent["estimate"] < 1000 * TIMEOUT_S
        assert spent["model"] > 0.0 and "estimate_host" in spent


def test_the_visual_endpoint_with_supports_is_served_and_estimated(serve):
    image = encode(random_image(320, 240))
    mask = encode(random_image(160, 120, seed=3).convert("L"))
    files = [("image", ("q.png", image, "image/png"))]
    for i in range(4):
        files.append(
            ("support_image", (f"s{i}.png", encode(random_image(160, 120, i)), "image/png"))
        )
        files.append(("support_mask", (f"m{i}.png", mask, "image/png")))
    with serve(request_timeout_s=TIMEOUT_S) as server:
        response = httpx.post(server.url + "/v1/segment/visual", files=files, timeout=60)
        assert response.status_code == 200, response.text
        assert timings(response)["estimate"] > 0.0  # fmt: skip


def test_a_burst_of_prompts_for_one_image_is_queued_as_one_backbone_pass(live, factory):
    """Twelve requests for one image at once, on a device that takes 1 s an image and
    a 3 s burst bound: counted as twelve images they would be refused; they share one."""
    image = encode(random_image(64, 48))
    with live(max_queue_wait_s=3.0, max_wait_ms=0.0) as (server, app):
        on_loop(app, lambda: service_state(app).batcher.use_cost_model(per_image(1.0)))
        factory.gate.clear()  # hold the model: the burst queues up behind the first batch
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(post, server.url, image, [f"thing {i}"]) for i in range(12)]
            time.sleep(1.0)
            factory.gate.set()
            statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 12


def test_a_burst_of_distinct_images_that_fits_the_deadline_is_queued_whole(live, factory):
    """Eight distinct images at once, 1 s each: 8 s of queue, far more than one request,
    well inside the 30 s deadline: all served."""
    with live(max_wait_ms=0.0, max_batch_images=2) as (server, app):
        on_loop(app, lambda: service_state(app).batcher.use_cost_model(per_image(1.0)))
        factory.gate.clear()
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(post, server.url, encode(random_image(64, 48, seed=i)))
                for i in range(8)
            ]
            time.sleep(1.0)
            factory.gate.set()
            statuses = [f.result().status_code for f in futures]
    assert statuses == [200] * 8


def test_metrics_show_the_estimates_against_reality(serve):
    image = encode(random_image(64, 48))
    with serve() as server:
        for i in range(3):
            assert post(server.url, image, [f"thing {i}"]).status_code == 200
        text = httpx.get(server.url + "/metrics").text
    for kind in ("batch", "host"):
        count = re.search(rf'clipseg_cost_estimate_ratio_count{{kind="{kind}"}} (\S+)', text)
        assert count is not None and float(count[1]) >= 1.0, kind
    for term in ("per_pamr_setup_mp", "per_text", "per_instances_mp"):
        assert re.search(rf'clipseg_batch_cost_seconds{{term="{term}"}} \S+', text), term
    assert re.search(r'clipseg_host_cost_seconds{term="per_polygon_mp"} \S+', text)
