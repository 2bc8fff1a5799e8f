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
        threshold: the threshold the server applied (a list for a union/intersection of
            prompts with thresholds of their own; None with ``background="prompt"``).
        mask: bool ``(H, W)`` at the image's own size.
        probabilities: float32 ``(H, W)`` in [0, 1] (8-bit precision) when ``soft=True``
            was asked, else None.
        instance: with ``PostOptions(instances=True)``, the piece's rank (0 = best); its
            ``score`` is then the mean probability inside and ``max_score`` the maximum.
        alpha: uint8 ``(H, W)`` alpha matte with ``PostOptions(feather=...)``; ``mask`` is
            its >= 128.
    """

    prompt: str
    score: float
    area: int
    bbox: tuple[int, int, int, int]
    threshold: float | list[float] | None
    mask: np.ndarray = field(repr=False)
    probabilities: np.ndarray | None = field(default=None, repr=False)
    instance: int | None = None
    max_score: float | None = None
    alpha: np.ndarray | None = field(default=None, repr=False)


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


def _mask_pixels(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """The bool mask, and the alpha matte when the entry's PNG is one (``feather``)."""
    if entry.get("rle") is not None:
        return decode_rle(entry["rle"]), None
    if entry.get("png") is not None:
        pixels = png_to_array(entry["png"])
        if entry.get("feather"):
            return pixels >= 128, pixels
        return pixels > 0, None
    raise ValueError("mask entry has neither 'rle' nor 'png' (format=polygon: see raw)")


def _threshold(value: Any) -> float | list[float] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [float(v) for v in value]
    return float(value)


def parse_mask(entry: Mapping[str, Any], size: tuple[int, int]) -> Mask:
    """One JSON mask entry decoded; ``size`` is ``(height, width)`` to check against.

    Raises:
        ValueError: the mask is not of the image's size, or carries no pixels.
    """
    pixels, alpha = _mask_pixels(entry)
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
        threshold=_threshold(entry.get("threshold")),
        mask=pixels,
        probabilities=soft,
        instance=None if entry.get("instance") is None else int(entry["instance"]),
        max_score=None if entry.get("max_score") is None else float(entry["max_score"]),
        alpha=alpha,
    )


def parse_segmentation(body: Mapping[str, Any], request_id: str | None) -> Segmentation:
    """The server's JSON answer as a :class:`Segmentation`."""
    width, height = int(body["width"]), int(body["height"])
    masks = [parse_mask(entry, (height, width)) for entry in body["masks"]]
    timings = {str(k): float(v) for k, v in body.get("timings_ms", {}).items()}
    return Segmentation(width, height, masks, timings, request_id, dict(body))
