"""The client's pure parts: uploads from every input form, Retry-After, the budget."""

from __future__ import annotations

import email.utils
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_client.calls import text_call, visual_call
from clipseg_client.images import sniff_type, to_upload
from clipseg_client.retry import Attempts, RetryPolicy, parse_retry_after


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 3), (5, 7, 4)])
def test_arrays_are_sent_as_lossless_png(shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    upload = to_upload(pixels, "image")
    assert upload.content_type == "image/png" and upload.filename == "image.png"
    assert np.array_equal(decoded(upload.data), pixels)


def test_bool_masks_become_0_255():
    mask = np.array([[True, False], [False, True]])
    assert np.array_equal(decoded(to_upload(mask, "m").data), [[255, 0], [0, 255]])


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((4, 4), np.float32), "uint8"),
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((4,), np.uint8), "shape"),
    ],
)
def test_ambiguous_arrays_are_refused(array, message):
    with pytest.raises(ValueError, match=message):
        to_upload(array, "image")


def test_files_and_bytes_are_sent_as_they_are(tmp_path: Path):
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buffer, format="JPEG")
    jpeg = buffer.getvalue()
    path = tmp_path / "photo.weird-extension"
    path.write_bytes(jpeg)
    for value in (path, str(path), jpeg, bytearray(jpeg)):
        upload = to_upload(value, "image")
        assert upload.data == jpeg and upload.content_type == "image/jpeg"
    assert to_upload(path, "image").filename == "photo.weird-extension"


def test_pil_modes_png_cannot_hold_are_converted():
    upload = to_upload(Image.new("CMYK", (2, 2), (0, 255, 0, 0)), "image")
    image = Image.open(io.BytesIO(upload.data))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 255)


def test_sniffed_types():
    assert sniff_type(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_type(b"GIF89a...") == "image/gif"
    assert sniff_type(b"hello") == "application/octet-stream"


def test_text_form_has_every_field():
    call = text_call(
        np.zeros((2, 2), np.uint8), "a cat", negative_prompts=["a dog", "a bird"],
        combine="union", threshold=0.25, template="ensemble", soft=True, fmt="png",
    )  # fmt: skip
    assert call.path == "/v1/segment/text"
    assert call.data == {
        "format": "png", "soft": "true", "threshold": "0.25", "prompt": ["a cat"],
        "combine": "union", "template": "ensemble", "negative_prompt": ["a dog", "a bird"],
    }  # fmt: skip
    assert [name for name, _ in call.files] == ["image"]


def test_visual_form_pairs_supports():
    pixel = np.zeros((2, 2), np.uint8)
    mask = np.ones((2, 2), bool)
    call = visual_call(pixel, [(pixel, mask), (pixel, mask)], prompt="a cat", text_weight=0.3)
    assert [name for name, _ in call.files] == [
        "image", "support_image", "support_mask", "support_image", "support_mask"
    ]  # fmt: skip
    assert call.data == {"format": "rle", "soft": "false", "prompt": "a cat", "text_weight": "0.3"}
    with pytest.raises(ValueError, match="pair"):
        visual_call(pixel, [(pixel,)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        text_call(pixel, [])


def test_retry_after_seconds_and_dates():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-2") == 0.0
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(7.0)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_backoff_is_full_jitter_capped():
    policy = RetryPolicy(backoff_base_s=0.5, backoff_cap_s=3.0)
    assert [policy.backoff(n, lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(4, lambda: 0.0) == 0.0


def test_no_wait_is_started_that_would_end_past_the_budget():
    clock = FakeClock()
    attempts = Attempts(RetryPolicy(max_attempts=10, budget_s=5.0), clock, lambda: 1.0)
    attempts.made = 1
    assert attempts.next_delay(retry_after=4.0) == 4.0
    clock.now += 2.0  # 3 s left
    assert attempts.next_delay(retry_after=4.0) is None
    assert attempts.next_delay(retry_after=None) == 0.25  # backoff fits
    assert attempts.timeout(60.0) == pytest.approx(3.0)  # cut to the budget left
    assert attempts.timeout(1.0) == 1.0


def test_attempts_are_capped():
    attempts = Attempts(RetryPolicy(max_attempts=2, budget_s=100.0), FakeClock(), lambda: 0.0)
    attempts.made = 1
    assert attempts.next_delay(None) == 0.0
    attempts.made = 2
    assert attempts.next_delay(None) is None
