"""Typed results: the server's JSON answer with every mask decoded to a numpy array."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from .rle import decode_rle


@dataclass(frozen=True)
class Mask:
    """One output mask.

    Attributes:
        prompt: the prompt it answers, or ``visual``/``union``/``intersection``.
        score: the maximum probability in its probability map, in [0, 1].
        area: foreground pixels.
        bbox: ``(x, y, width, height)`` of the foreground.
        threshold: the threshold the server applied.
        mask: bool ``(H, W)`` at the image's own size.
        probabilities: float32 ``(H, W)`` in [0, 1] (8-bit precision) when ``soft=True``
            was asked, else None.
    """

    prompt: str
    score: float
    area: int
    bbox: tuple[int, int, int, int]
    threshold: float
    mask: np.ndarray = field(repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Segmentation:
    """The answer to one segment request.

    Attributes:
        width, height: the image's size in pixels (every mask is ``(height, width)``).
        masks: one per output mask, in the server's order (the prompts' order).
        timings_ms: the server's stage timings (decode, queue_and_model, model, encode,
            total).
        request_id: the request's ``X-Request-ID``.
        raw: the server's JSON answer as it came (masks still encoded).
    """

    width: int
    height: int
    masks: list[Mask]
    timings_ms: dict[str, float]
    request_id: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def by_prompt(self, prompt: str) -> Mask:
        """The first mask answering ``prompt``.

        Raises:
            KeyError: no mask has that prompt.
        """
        for mask in self.masks:
            if mask.prompt == prompt:
                return mask
        raise KeyError(prompt)


def png_to_array(encoded: str) -> np.ndarray:
    """A base64 PNG (mode L) as a uint8 ``(H, W)`` array."""
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image.convert("L"))


def _mask_pixels(entry: Mapping[str, Any]) -> np.ndarray:
    if entry.get("rle") is not None:
        return decode_rle(entry["rle"])
    if entry.get("png") is not None:
        return png_to_array(entry["png"]) > 0
    raise ValueError("mask entry has neither 'rle' nor 'png'")


def parse_mask(entry: Mapping[str, Any], size: tuple[int, int]) -> Mask:
    """One JSON mask entry decoded; ``size`` is ``(height, width)`` to check against.

    Raises:
        ValueError: the mask is not of the image's size, or carries no pixels.
    """
    pixels = _mask_pixels(entry)
    if pixels.shape != size:
        raise ValueError(f"mask is {pixels.shape}, the image {size}")
    soft = None
    if entry.get("soft_png") is not None:
        # The server sends round(p * 255); dividing back gives p to within 1/510.
        soft = png_to_array(entry["soft_png"]).astype(np.float32) / np.float32(255.0)
    x, y, w, h = (int(v) for v in entry["bbox"])
    return Mask(
        prompt=str(entry["prompt"]),
        score=float(entry["score"]),
        area=int(entry["area"]),
        bbox=(x, y, w, h),
        threshold=float(entry["threshold"]),
        mask=pixels,
        probabilities=soft,
    )


def parse_segmentation(body: Mapping[str, Any], request_id: str | None) -> Segmentation:
    """The server's JSON answer as a :class:`Segmentation`."""
    width, height = int(body["width"]), int(body["height"])
    masks = [parse_mask(entry, (height, width)) for entry in body["masks"]]
    timings = {str(k): float(v) for k, v in body.get("timings_ms", {}).items()}
    return Segmentation(width, height, masks, timings, request_id, dict(body))
