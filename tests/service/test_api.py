"""The HTTP API against a live server on loopback (tiny random model, CPU)."""

from __future__ import annotations

import base64
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

import clipseg_serve.service.calibrate
import clipseg_serve.service.state
from tests.conftest import encode, random_image
from tests.service.conftest import BACKENDS, make_settings


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """Every test here runs on the torch and on the onnx backend."""
    return request.param


def png_array(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    assert image.mode == "L"
    return np.asarray(image)


def post_text(
    url: str, image: bytes, prompts: list[str], headers: dict | None = None, **fields
) -> httpx.Response:
    data = {"prompt": prompts, **fields}
    files = {"image": ("image.png", image, "image/png")}
    return httpx.post(url + "/v1/segment/text", data=data, files=files, headers=headers, timeout=60)


def direct(factory, image: bytes, prompts: list[str], **kwargs):
    """What the library computes for the same input (the ground truth for the API)."""
    return factory(make_settings()).segment(image, prompts, **kwargs)


def test_single_prompt_returns_the_png_itself(serve, factory):
    image = encode(random_image(83, 41, seed=3))
    with serve() as server:
        response = post_text(server.url, image, ["a cat"], threshold="0.5")
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    mask = png_array(response.content)
    assert mask.shape == (41, 83) and set(np.unique(mask)) <= {0, 255}
    expected = direct(factory, image, ["a cat"], threshold=0.5).masks[0]
    assert np.array_equal(mask > 0, expected)
    assert "total;dur=" in response.headers["server-timing"]


def test_json_with_rle_matches_the_png_path(serve):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as coco

    image = encode(random_image(64, 48, seed=4))
    prompts = ["a cat", "the red mug", "sky"]
    with serve() as server:
        rle = post_text(server.url, image, prompts, format="rle", threshold="0.5").json()
        png = post_text(server.url, image, prompts, format="png", threshold="0.5").json()
    assert (rle["width"], rle["height"]) == (64, 48)
    assert [m["prompt"] for m in rle["masks"]] == prompts
    for r, p in zip(rle["masks"], png["masks"], strict=True):
        coco_rle = {"size": r["rle"]["size"], "counts": r["rle"]["counts"].encode()}
        decoded = coco.decode(coco_rle).astype(bool)
        from_png = png_array(base64.b64decode(p["png"])) > 0
        assert np.array_equal(decoded, from_png)
        assert r["area"] == int(from_png.sum()) == int(coco.area(coco_rle))
        assert r["bbox"] == [int(v) for v in coco.toBbox(coco_rle)]
    assert set(rle["timings_ms"]) >= {"decode", "model", "encode", "total"}


def test_accept_json_and_soft_maps(serve, factory):
    image = encode(random_image(30, 20, seed=5))
    with serve() as server:
        response = post_text(
            server.url, image, ["a cat"], soft="true", headers={"Accept": "application/json"}
        )
    body = response.json()
    soft = png_array(base64.b64decode(body["masks"][0]["soft_png"]))
    expected = direct(factory, image, ["a cat"], soft=True).soft[0]
    assert soft.shape == (20, 30)
    assert np.array_equal(soft, expected)


def test_combine_negative_and_template_fields(serve, factory):
    image = encode(random_image(40, 40, seed=6))
    with serve() as server:
        union = post_text(server.url, image, ["a", "b"], combine="union", threshold="0.5")
        negative = post_text(
            server.url, image, ["a"], negative_prompt="b", threshold="0.5", template="photo"
        )
    expected = direct(factory, image, ["a", "b"], combine="union", threshold=0.5).masks[0]
    assert np.array_equal(png_array(union.content) > 0, expected)
    expected = direct(
        factory, image, ["a"], negative_prompts=["b"], template="photo", threshold=0.5
    ).masks[0]
    assert np.array_equal(png_array(negative.content) > 0, expected)


def test_concurrent_requests_are_batched_and_not_mixed_up(serve, factory):
    """16 concurrent requests with different images and prompts: fewer model calls than
    requests, and each answer equals the library's answer for its own input."""
    words = ["a cat", "a dog", "the sky", "a red mug"]
    cases = [(encode(random_image(20 + i, 30, seed=10 + i)), [words[i % 4]]) for i in range(16)]
    with serve(max_wait_ms=300.0, max_batch_images=16) as server:
        with ThreadPoolExecutor(16) as pool:
            responses = list(
                pool.map(
                    lambda case: post_text(server.url, case[0], case[1], soft="true", format="rle"),
                    cases,
                )
            )
        metrics = httpx.get(server.url + "/metrics").text
    batches = _sample(metrics, "clipseg_batches_total")
    assert 1 <= batches < 16 + 1  # warm-up batch included
    assert _sample(metrics, "clipseg_batch_images_count") == batches
    assert _sample(metrics, 'clipseg_batch_images_bucket{le="1.0"}') < batches
    for (image, prompts), response in zip(cases, responses, strict=True):
        assert response.status_code == 200
        body = response.json()
        expected = direct(factory, image, prompts, soft=True).soft[0].astype(int)
        soft = png_array(base64.b64decode(body["masks"][0]["soft_png"])).astype(int)
        assert (body["width"], body["height"]) == (expected.shape[1], expected.shape[0])
        assert np.abs(soft - expected).max() <= 1  # batched vs alone: float noise only


def _sample(metrics: str, name: str) -> float:
    """The value of the sample line ``name`` (metric name with its labels, if any)."""
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] != "#")
    return float(samples[name])


def test_readyz_is_503_until_the_warm_up_batch_ran(serve, factory, monkeypatch):
    # The real calibration (the suite otherwise reuses one per model: tests/conftest.py).
    monkeypatch.setattr(
        clipseg_serve.service.state, "calibrate", clipseg_serve.service.calibrate.calibrate
    )
    factory.gate.clear()  # the warm-up batch blocks on the model
    with serve(ready=False) as server:
        assert httpx.get(server.url + "/healthz").status_code == 200
        not_ready = httpx.get(server.url + "/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["error"]["code"] == "not_ready"
        early = post_text(server.url, encode(random_image(8, 8)), ["a"])
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        factory.gate.set()
        server.until_ready(time.monotonic() + 30)
        assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}


def test_queue_full_gives_429_with_retry_after_then_recovers(serve, factory):
    image = encode(random_image(16, 16))
    with serve(queue_size=2, max_batch_images=1, max_wait_ms=0.0) as server:
        factory.gate.clear()
        with ThreadPoolExecutor(8) as pool:
            pending = [pool.submit(post_text, server.url, image, [f"p{i}"]) for i in range(8)]
            time.sleep(1.0)
            factory.gate.set()
            statuses = [f.result().status_code for f in pending]
            rejected = [f.result() for f in pending if f.result().status_code == 429]
        assert statuses.count(200) >= 2 and rejected
        assert int(rejected[0].headers["retry-after"]) >= 1
        assert rejected[0].json()["error"]["code"] == "queue_full"
        assert post_text(server.url, image, ["after"]).status_code == 200


def test_deadline_gives_504_and_the_server_keeps_answering(serve, factory):
    image = encode(random_image(16, 16))
    with serve(request_timeout_s=0.5) as server:
        factory.gate.clear()
        response = post_text(server.url, image, ["slow"])
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        factory.gate.set()
        assert post_text(server.url, image, ["fast"]).status_code == 200
        metrics = httpx.get(server.url + "/metrics").text
    assert 'clipseg_rejected_total{reason="deadline"}' in metrics


def test_a_failing_job_fails_alone(serve):
    image = encode(random_image(16, 16))
    with serve(max_wait_ms=300.0) as server:
        with ThreadPoolExecutor(4) as pool:
            prompts = ["a cat", "poison", "a dog", "a bird"]
            responses = list(pool.map(lambda p: post_text(server.url, image, [p]), prompts))
        assert [r.status_code for r in responses] == [200, 500, 200, 200]
        assert responses[1].json()["error"]["code"] == "internal_error"
        assert post_text(server.url, image, ["still alive"]).status_code == 200


def test_api_keys(serve):
    image = encode(random_image(16, 16))
    with serve(api_keys=["k1", "k2"]) as server:
        assert post_text(server.url, image, ["a"]).status_code == 401
        wrong = post_text(server.url, image, ["a"], headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        ok = post_text(server.url, image, ["a"], headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200
        assert httpx.get(server.url + "/healthz").status_code == 200
        assert httpx.get(server.url + "/readyz").status_code == 200


def test_info_and_metrics(serve, backend):
    with serve() as server:
        post_text(server.url, encode(random_image(16, 16)), ["a"])
        info = httpx.get(server.url + "/info").json()
        metrics = httpx.get(server.url + "/metrics")
    assert info["variant"] == "tiny" and info["device"] == "cpu" and info["dtype"] == "float32"
    assert info["backend"] == backend and "cpu_bf16" in info
    assert info["batching"]["queue_size"] == 256 and info["ready"] is True
    assert metrics.headers["content-type"].startswith("text/plain")
    for name in (
        'clipseg_requests_total{route="/v1/segment/text",status="200"} 1.0',
        'clipseg_stage_seconds_count{stage="decode"}',
        'clipseg_stage_seconds_count{stage="queue_wait"}',
        'clipseg_stage_seconds_count{stage="model"}',
        'clipseg_stage_seconds_count{stage="encode"}',
        "clipseg_queue_depth",
        "clipseg_text_cache_hit_ratio",
    ):
        assert name in metrics.text


def visual_files() -> tuple[bytes, bytes, bytes, list]:
    """(query, support, support mask, the multipart files of a one-shot request)."""
    query = encode(random_image(50, 30, seed=1))
    support = encode(random_image(40, 40, seed=2))
    mask = np.zeros((40, 40), np.uint8)
    mask[5:25, 10:30] = 255
    mask_png = encode(Image.fromarray(mask))
    files = [
        ("image", ("q.png", query, "image/png")),
        ("support_image", ("s.png", support, "image/png")),
        ("support_mask", ("m.png", mask_png, "image/png")),
    ]
    return query, support, mask_png, files


def test_visual_endpoint(serve, factory):
    query, support, mask_png, files = visual_files()
    with serve() as server:
        one_shot = httpx.post(
            server.url + "/v1/segment/visual", files=files, data={"threshold": 0.5}
        )
        hybrid = httpx.post(
            server.url + "/v1/segment/visual",
            files=files,
            data={"prompt": "a cat", "text_weight": "0.3", "threshold": "0.5", "format": "rle"},
        )
    predictor = factory(make_settings())
    visual = predictor.visual_embedding([(support, mask_png)])
    expected = predictor.segment(query, conditionals=visual[None], threshold=0.5).masks[0]
    assert one_shot.status_code == 200 and one_shot.headers["content-type"] == "image/png"
    assert np.array_equal(png_array(one_shot.content) > 0, expected)
    mixed = predictor.hybrid(predictor.text_embeddings(["a cat"])[0], visual, 0.3)
    expected = predictor.segment(query, conditionals=mixed[None], threshold=0.5).masks[0]
    body = hybrid.json()
    assert body["masks"][0]["prompt"] == "visual"
    assert body["masks"][0]["area"] == int(expected.sum())


def _same_answer(a: httpx.Response, b: httpx.Response) -> None:
    """Equal but for what is measured per call (timings)."""
    assert a.status_code == b.status_code
    assert a.headers["x-request-id"] == b.headers["x-request-id"]
    assert a.headers["content-type"] == b.headers["content-type"]
    if a.headers["content-type"] == "image/png":
        assert a.content == b.content
        assert a.headers["x-mask-score"] == b.headers["x-mask-score"]
    else:
        ja, jb = a.json(), b.json()
        ja.pop("timings_ms", None), jb.pop("timings_ms", None)
        assert ja == jb


SAME_ID = {"X-Request-ID": "alias-check"}  # error bodies carry it


def test_unversioned_paths_are_aliases_that_answer_the_same(serve):
    image = encode(random_image(37, 23, seed=5))
    _, _, _, files = visual_files()
    text_cases = [
        {"prompt": ["a cat"]},
        {"prompt": ["a cat", "a dog"], "format": "rle", "soft": "true"},
        {"prompt": ["a cat"], "threshold": "2"},  # the same 422
    ]
    with serve() as server:
        for data in text_cases:
            answers = [
                httpx.post(
                    server.url + path,
                    data=data,
                    files={"image": ("i.png", image, "image/png")},
                    headers=SAME_ID,
                    timeout=60,
                )
                for path in ("/v1/segment/text", "/segment/text")
            ]
            _same_answer(*answers)
        for data in ({"threshold": "0.5"}, {"format": "rle", "prompt": "x"}):
            answers = [
                httpx.post(server.url + path, data=data, files=files, headers=SAME_ID, timeout=60)
                for path in ("/v1/segment/visual", "/segment/visual")
            ]
            _same_answer(*answers)
        metrics = httpx.get(server.url + "/metrics").text
    # Each path counted under its own route, so alias use is visible before removal.
    assert 'clipseg_requests_total{route="/segment/text",status="200"} 2.0' in metrics
    assert 'clipseg_requests_total{route="/v1/segment/text",status="200"} 2.0' in metrics


def test_graceful_shutdown_finishes_queued_jobs(serve, factory):
    image = encode(random_image(16, 16))
    server = serve(max_batch_images=1, max_wait_ms=0.0).__enter__()
    factory.gate.clear()
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(post_text, server.url, image, [f"p{i}"]) for i in range(4)]
        time.sleep(0.5)
        server.server.should_exit = True  # SIGTERM: stop accepting, drain, exit
        time.sleep(0.2)
        factory.gate.set()
        statuses = [f.result().status_code for f in pending]
    server.thread.join(timeout=30)
    assert statuses == [200, 200, 200, 200]
    assert not server.thread.is_alive()


def test_out_of_memory_batches_are_split_and_retried(serve, factory):
    factory.oom_above = 2  # any batch of more than 2 images "runs out of memory"
    images = [encode(random_image(16, 16, seed=s)) for s in range(4)]
    with serve(max_wait_ms=500.0) as server:
        with ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(lambda im: post_text(server.url, im, ["a"]), images))
        metrics = httpx.get(server.url + "/metrics").text
    assert [r.status_code for r in responses] == [200] * 4
    assert _sample(metrics, 'clipseg_batch_failures_total{reason="oom"}') >= 1
    assert max(factory.logits_calls) <= 2


def test_expired_and_abandoned_jobs_are_dropped_before_compute(serve, factory):
    image = encode(random_image(16, 16))
    with serve(max_batch_images=1, max_wait_ms=0.0, request_timeout_s=1.0) as server:
        factory.gate.clear()
        calls_before = len(factory.logits_calls)
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(post_text, server.url, image, ["first"])
            time.sleep(0.3)  # "first" is now in the model, blocked on the gate
            # The second request times out while queued; the third hangs up.
            second = pool.submit(post_text, server.url, encode(random_image(9, 9)), ["late"])
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(
                    server.url + "/v1/segment/text",
                    data={"prompt": "gone"},
                    files={"image": ("x.png", encode(random_image(7, 7)), "image/png")},
                    timeout=0.5,
                )
            time.sleep(1.2)
            factory.gate.set()
            assert second.result().status_code == 504
            assert first.result().status_code == 504  # it also outlived its deadline
        time.sleep(0.3)
        metrics = httpx.get(server.url + "/metrics").text
        assert post_text(server.url, image, ["after"]).status_code == 200
    # Only the batch already running computed; the two queued jobs never reached the model.
    assert len(factory.logits_calls) - calls_before == 2  # "first" + "after"
    assert _sample(metrics, 'clipseg_dropped_jobs_total{reason="abandoned"}') == 2
    assert _sample(metrics, 'clipseg_rejected_total{reason="disconnected"}') == 1


def test_openapi_documents_both_endpoints(serve):
    with serve() as server:
        spec = httpx.get(server.url + "/openapi.json").json()
    for path in ("/v1/segment/text", "/v1/segment/visual"):
        operation = spec["paths"][path]["post"]
        assert "multipart/form-data" in operation["requestBody"]["content"]
        assert {"200", "413", "422", "429", "504"} <= set(operation["responses"])
    assert "SegmentResponse" in spec["components"]["schemas"]


def test_cors_allows_only_the_configured_origins(serve):
    headers = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with serve(cors_origins=["https://app.example"]) as server:
        allowed = httpx.options(server.url + "/v1/segment/text", headers=headers)
        other = httpx.options(
            server.url + "/v1/segment/text", headers={**headers, "Origin": "https://evil.example"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_one_bit_mask_pngs_when_asked(serve):
    image = encode(random_image(45, 30, seed=8))
    with serve() as server:
        eight = post_text(server.url, image, ["a cat"], threshold="0.452")
        one = post_text(server.url, image, ["a cat"], threshold="0.452", png_bits="1")
        both = post_text(server.url, image, ["a cat", "grass"], threshold="0.452", png_bits="1")
        bad = post_text(server.url, image, ["a cat"], png_bits="4")
    assert eight.status_code == one.status_code == both.status_code == 200
    reference = np.asarray(Image.open(io.BytesIO(eight.content))) > 0
    single = Image.open(io.BytesIO(one.content))
    assert single.mode == "1" and np.array_equal(np.asarray(single), reference)
    assert 0 < reference.sum() < reference.size  # a mask with edges
    entry = both.json()["masks"][0]
    assert Image.open(io.BytesIO(base64.b64decode(entry["png"]))).mode == "1"
    assert bad.status_code == 422 and "png_bits" in bad.text
