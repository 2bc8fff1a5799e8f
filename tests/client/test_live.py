"""The client against a live server (tiny random model): every field of both endpoints
reaches the server and changes its answer as it should; masks decode to exactly the
server's own PNG masks; every image form gives the same result; errors are typed."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from clipseg_client import AsyncClient, Client, InvalidInput, Segmentation, Unauthorized
from clipseg_client.images import png_bytes
from tests.client.conftest import live_server

PROMPTS = ["a red disc", "a blue sky"]


@pytest.fixture(scope="module")
def client(server):
    with Client(server.url) as client:
        yield client


@pytest.fixture(scope="module")
def middle(client, photo) -> float:
    """A threshold inside the tiny model's narrow probability range for ``photo`` (the
    median of the first prompt's map), so masks are neither empty nor full."""
    probabilities = client.segment_text(photo, PROMPTS[0], soft=True).masks[0].probabilities
    return float(np.median(probabilities))


def server_masks(url: str, path: str, files: list, data: dict) -> list[np.ndarray]:
    """The server's own PNG masks for a form, asked for directly (format=png, JSON)."""
    response = httpx.post(
        url + path, files=files, data={**data, "format": "png"},
        headers={"Accept": "application/json"}, timeout=30,
    )  # fmt: skip
    response.raise_for_status()
    return [decode_png(base64.b64decode(m["png"])) for m in response.json()["masks"]]


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        values = np.asarray(image)
    assert set(np.unique(values)) <= {0, 255}
    return values > 0


def masks_of(result: Segmentation) -> list[np.ndarray]:
    return [m.mask for m in result.masks]


def photo_part(photo: np.ndarray) -> tuple[str, bytes, str]:
    return ("photo.png", png_bytes(Image.fromarray(photo)), "image/png")


# --- the text endpoint -----------------------------------------------------------------


def test_masks_are_the_servers_png_masks(client, server, photo, middle):
    result = client.segment_text(photo, PROMPTS, threshold=middle)
    assert (result.width, result.height) == (64, 48)
    assert [m.prompt for m in result.masks] == PROMPTS
    theirs = server_masks(
        server.url, "/v1/segment/text", [("image", photo_part(photo))],
        {"prompt": PROMPTS, "threshold": str(middle)},
    )  # fmt: skip
    for mask, expected in zip(result.masks, theirs, strict=True):
        assert mask.mask.dtype == np.bool_ and mask.mask.shape == (48, 64)
        assert np.array_equal(mask.mask, expected)
        assert 0 < mask.area == int(expected.sum()) < expected.size
        ys, xs = np.nonzero(expected)
        x, y = xs.min(), ys.min()
        assert mask.bbox == (x, y, xs.max() - x + 1, ys.max() - y + 1)
        assert mask.threshold == pytest.approx(middle)
    # ... and the bare PNG the server answers for one mask when PNG is acceptable.
    raw = httpx.post(
        server.url + "/v1/segment/text", files=[("image", photo_part(photo))],
        data={"prompt": PROMPTS[0], "threshold": str(middle), "format": "png"}, timeout=30,
    )  # fmt: skip
    assert raw.headers["content-type"] == "image/png"
    assert np.array_equal(decode_png(raw.content), result.masks[0].mask)


def test_png_wire_format_decodes_to_the_same_masks(client, photo, middle):
    rle = client.segment_text(photo, PROMPTS, threshold=middle)
    png = client.segment_text(photo, PROMPTS, threshold=middle, format="png")
    assert "png" in png.raw["masks"][0] and "rle" in rle.raw["masks"][0]
    for a, b in zip(masks_of(rle), masks_of(png), strict=True):
        assert np.array_equal(a, b)


def test_every_image_form_gives_the_same_masks(client, photo, middle, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    forms = [photo, Image.fromarray(photo), path, str(path), path.read_bytes()]
    results = [client.segment_text(form, PROMPTS, threshold=middle) for form in forms]
    for result in results[1:]:
        for a, b in zip(masks_of(results[0]), masks_of(result), strict=True):
            assert np.array_equal(a, b)
    # an RGBA array: the server drops alpha, as for a PNG file with alpha
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    assert np.array_equal(client.segment_text(rgba, PROMPTS[0], threshold=middle).masks[0].mask,
                          results[0].masks[0].mask)  # fmt: skip


def test_threshold_changes_the_masks(client, photo, middle):
    low = client.segment_text(photo, PROMPTS[0], threshold=middle - 0.004).masks[0]
    high = client.segment_text(photo, PROMPTS[0], threshold=middle + 0.004).masks[0]
    assert low.area > high.area
    assert not np.any(high.mask & ~low.mask)  # a higher threshold only removes pixels
    assert (low.threshold, high.threshold) == pytest.approx((middle - 0.004, middle + 0.004))


def test_soft_maps_are_probabilities_consistent_with_the_mask(client, photo, middle):
    plain = client.segment_text(photo, PROMPTS, threshold=middle)
    soft = client.segment_text(photo, PROMPTS, threshold=middle, soft=True)
    assert all(m.probabilities is None for m in plain.masks)
    for mask in soft.masks:
        p = mask.probabilities
        assert p is not None and p.dtype == np.float32 and p.shape == (48, 64)
        assert p.min() >= 0.0 and p.max() <= 1.0
        assert mask.score == pytest.approx(float(p.max()), abs=1 / 255)
        # 8-bit maps: within a quantisation step of the threshold either side may hold
        assert np.all(p[mask.mask] >= middle - 1 / 255)
        assert np.all(p[~mask.mask] <= middle + 1 / 255)


def test_negative_prompts_remove_what_they_match(client, photo, middle):
    alone = client.segment_text(photo, PROMPTS[0], threshold=middle).masks[0]
    assert alone.area > 0
    # A negative equal to the prompt is as likely everywhere: it removes every pixel.
    removed = client.segment_text(
        photo, PROMPTS[0], negative_prompts=[PROMPTS[0]], threshold=middle
    ).masks[0]
    assert removed.area == 0 and not removed.mask.any()


def test_combine_modes(client, photo, middle):
    def run(combine):
        return client.segment_text(photo, PROMPTS, combine=combine, threshold=middle).masks

    none, union, inter, argmax = (run(c) for c in ("none", "union", "intersection", "argmax"))
    assert [m.prompt for m in none] == PROMPTS
    assert [m.prompt for m in union] == ["union"] and [m.prompt for m in inter] == ["intersection"]
    assert len(argmax) == 2
    assert np.array_equal(union[0].mask, none[0].mask | none[1].mask)
    assert np.array_equal(inter[0].mask, none[0].mask & none[1].mask)
    assert not np.any(argmax[0].mask & argmax[1].mask)  # exclusive labels


def test_templates_change_the_text_embedding(client, photo):
    maps = {
        template: client.segment_text(photo, PROMPTS[0], template=template, soft=True)
        .masks[0]
        .probabilities
        for template in ("none", "photo", "ensemble")
    }
    assert not np.array_equal(maps["none"], maps["photo"])
    assert not np.array_equal(maps["photo"], maps["ensemble"])


# --- the visual endpoint ---------------------------------------------------------------


def test_one_and_k_shot(client, server, photo, support):
    image, mask = support
    one = client.segment_visual(photo, [(image, mask)], soft=True, threshold=0.3)
    (entry,) = one.masks
    assert entry.prompt == "visual" and entry.mask.shape == (48, 64)
    # the mask as uint8 0/1 or a PIL image is the same mask
    same = client.segment_visual(
        photo, [(Image.fromarray(image), mask.astype(np.uint8))], soft=True, threshold=0.3
    )
    assert np.array_equal(same.masks[0].probabilities, entry.probabilities)
    flipped = (image[:, ::-1].copy(), mask[:, ::-1].copy())
    two = client.segment_visual(photo, [(image, mask), flipped], soft=True, threshold=0.3)
    assert len(two.masks) == 1
    assert not np.array_equal(two.masks[0].probabilities, entry.probabilities)
    files = [("image", photo_part(photo))]
    for img, m in [(image, mask), flipped]:
        files += [("support_image", photo_part(img)), ("support_mask", photo_part(m))]
    (theirs,) = server_masks(server.url, "/v1/segment/visual", files, {"threshold": "0.3"})
    assert np.array_equal(two.masks[0].mask, theirs)


def test_hybrid_prompt_weights_text_against_the_support(client, photo, support):
    def visual_map(**hybrid):
        return client.segment_visual(photo, [support], soft=True, **hybrid).masks[0]

    text = client.segment_text(photo, PROMPTS[0], soft=True).masks[0].probabilities
    pure = visual_map().probabilities
    # w = 1: the text embedding alone; w = 0: the support alone.
    assert np.allclose(visual_map(prompt=PROMPTS[0], text_weight=1.0).probabilities, text,
                       atol=1.5 / 255)  # fmt: skip
    assert np.allclose(visual_map(prompt=PROMPTS[0], text_weight=0.0).probabilities, pure,
                       atol=1.5 / 255)  # fmt: skip
    half = visual_map(prompt=PROMPTS[0], text_weight=0.5).probabilities
    assert not np.array_equal(half, pure) and not np.array_equal(half, text)


# --- errors, IDs, operations -------------------------------------------------------------


def test_a_422_carries_code_message_and_request_id(client, photo):
    with pytest.raises(InvalidInput) as caught:
        client.segment_text(photo, PROMPTS[0], threshold=1.5)
    error = caught.value
    assert error.status == 422 and error.code == "invalid_field"
    assert "threshold" in error.message
    assert error.request_id and len(error.request_id) == 32
    assert error.attempts == 1  # a 422 is final: never retried
    with pytest.raises(InvalidInput) as caught:
        client.segment_text(photo, PROMPTS[0], request_id="my-call-7", threshold=2.0)
    assert caught.value.request_id == "my-call-7" and "my-call-7" in str(caught.value)


def test_results_carry_the_request_id_and_timings(client, photo):
    result = client.segment_text(photo, PROMPTS[0], request_id="trace.abc-1")
    assert result.request_id == "trace.abc-1"
    assert {"decode", "model", "total"} <= set(result.timings_ms)


def test_operations(client):
    assert client.ready() and client.health()
    assert client.info()["variant"] == "tiny"


def test_async_client_gives_the_same_masks(server, client, photo, middle):
    async def run():
        async with AsyncClient(server.url) as aclient:
            one = await aclient.segment_text(photo, PROMPTS, threshold=middle)
            many = await aclient.segment_many([photo, photo[::-1].copy()], PROMPTS,
                                              threshold=middle)  # fmt: skip
            assert await aclient.ready()
            return one, many

    one, many = asyncio.run(run())
    sync = client.segment_text(photo, PROMPTS, threshold=middle)
    for a, b in zip(masks_of(one), masks_of(sync), strict=True):
        assert np.array_equal(a, b)
    assert isinstance(many[0], Segmentation) and isinstance(many[1], Segmentation)
    assert np.array_equal(many[0].masks[0].mask, sync.masks[0].mask)  # input order kept


def test_segment_many_keeps_order_and_reports_bad_items(client, photo, middle, tmp_path):
    flipped = photo[:, ::-1].copy()
    results = client.segment_many(
        [photo, tmp_path / "missing.png", b"not an image", flipped], PROMPTS[0],
        concurrency=3, threshold=middle,
    )  # fmt: skip
    assert isinstance(results[1], FileNotFoundError)
    assert isinstance(results[2], Exception) and results[2].status == 400
    assert results[2].code == "undecodable_image"
    expected = [client.segment_text(im, PROMPTS[0], threshold=middle) for im in (photo, flipped)]
    for got, want in zip((results[0], results[3]), expected, strict=True):
        assert np.array_equal(got.masks[0].mask, want.masks[0].mask)
    with pytest.raises(FileNotFoundError):
        client.segment_many([photo, tmp_path / "missing.png"], "x", fail_fast=True)


def test_api_key(tiny_model, photo, monkeypatch):
    with live_server(tiny_model, api_keys=["s3cret"]) as server:
        with Client(server.url, api_key="wrong") as bad, pytest.raises(Unauthorized) as caught:
            bad.segment_text(photo, "a cat")
        assert caught.value.code == "unauthorized" and caught.value.status == 401
        monkeypatch.setenv("CLIPSEG_API_KEY", "s3cret")
        with Client(server.url) as good:  # the key from the environment
            assert len(good.segment_text(photo, "a cat").masks) == 1


def test_segment_many_with_supports_is_a_visual_call_per_image(client, server, photo, support):
    flipped = photo[:, ::-1].copy()
    results = client.segment_many([photo, flipped], supports=[support], soft=True)
    for image, got in zip((photo, flipped), results, strict=True):
        want = client.segment_visual(image, [support], soft=True)
        assert got.masks[0].prompt == "visual"
        assert np.array_equal(got.masks[0].probabilities, want.masks[0].probabilities)
    (hybrid,) = client.segment_many([photo], "a cat", supports=[support], text_weight=1.0)
    text = client.segment_text(photo, "a cat")
    assert np.array_equal(hybrid.masks[0].mask, text.masks[0].mask)  # w=1: the text alone
    with pytest.raises(ValueError, match="at most one prompt"):
        client.segment_many([photo], ["a", "b"], supports=[support])
    with pytest.raises(ValueError, match="prompts or supports"):
        client.segment_many([photo])


def test_post_options_reach_the_server(client, server, photo, middle):
    from clipseg_client import PostOptions

    files = [("image", photo_part(photo))]
    refined = client.segment_text(photo, PROMPTS[0], threshold=middle,
                                  post=PostOptions(refine="guided", dilate=2))  # fmt: skip
    expected = server_masks(server.url, "/v1/segment/text", files,
                            {"prompt": PROMPTS[0], "threshold": repr(middle),
                             "refine": "guided", "dilate": "2"})  # fmt: skip
    assert np.array_equal(refined.masks[0].mask, expected[0])
    plain = client.segment_text(photo, PROMPTS[0], threshold=middle)
    assert not np.array_equal(plain.masks[0].mask, refined.masks[0].mask)

    pieces = client.segment_text(photo, PROMPTS[0], threshold=middle,
                                 post=PostOptions(instances=True, min_area=3))  # fmt: skip
    assert [m.instance for m in pieces.masks] == list(range(len(pieces.masks)))
    assert all(m.max_score is not None and m.max_score >= m.score for m in pieces.masks)
    assert "instances_dropped" in pieces.raw

    matte = client.segment_text(photo, PROMPTS[0], threshold=middle, format="png",
                                post=PostOptions(feather=6))  # fmt: skip
    mask = matte.masks[0]
    assert mask.alpha is not None and len(np.unique(mask.alpha)) > 2
    assert np.array_equal(mask.mask, plain.masks[0].mask)  # the matte's >= 128

    both = client.segment_text(photo, PROMPTS, threshold=[middle, 0.99])
    assert [m.threshold for m in both.masks] == [middle, 0.99]
    exclusive = client.segment_text(photo, PROMPTS, combine="argmax",
                                    post=PostOptions(background="prompt"))  # fmt: skip
    assert all(m.threshold is None for m in exclusive.masks)
    with pytest.raises(InvalidInput, match="feather"):
        client.segment_text(photo, PROMPTS[0], post=PostOptions(feather=4))  # format=rle
