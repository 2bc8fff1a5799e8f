"""Bytes in, ready tensors out (before the queue); masks in, response bodies out (after).

Everything here is CPU work that runs in the threadpool, never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib

import numpy as np
import torch

from model.batch import Segmentation
from model.masks import encode_png_mask, encode_png_probabilities, encode_rle, mask_bbox
from model.predictor import Predictor, PreparedImage

from .errors import ApiError

#: Declared part types we refuse outright (415); anything else is sniffed by the decoder.
ACCEPTED_TYPE_PREFIXES = ("image/", "application/octet-stream")


def check_content_type(content_type: str | None, field: str) -> None:
    """415 for an upload declared as something other than an image (or unspecified)."""
    if not content_type:
        return
    if not content_type.lower().startswith(ACCEPTED_TYPE_PREFIXES):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"{field} was sent as {content_type!r}; send an image (PNG, JPEG, WebP, ...)",
        )


def prepare_query(predictor: Predictor, data: bytes) -> tuple[PreparedImage, str]:
    """Decode the query image; also return a content key for in-batch de-duplication."""
    if not data:
        raise ApiError(400, "undecodable_image", "image is empty (0 bytes)")
    return predictor.prepare_image(data), hashlib.blake2b(data, digest_size=16).hexdigest()


def prepare_supports(predictor: Predictor, pairs: list[tuple[bytes, bytes]]) -> torch.Tensor:
    """Engineer every (support image, mask) pair: float32 [K, 3, S, S]."""
    engineered = []
    for i, (image, mask) in enumerate(pairs):
        if not image or not mask:
            which = "support_image" if not image else "support_mask"
            raise ApiError(400, "undecodable_image", f"{which} #{i + 1} is empty (0 bytes)")
        try:
            engineered.append(predictor.prepare_support(image, mask))
        except ApiError:
            raise
        except Exception as exc:  # add which pair failed to the domain error's message
            exc.args = (f"support #{i + 1}: {exc}",)
            raise
    return torch.stack(engineered)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def mask_entries(result: Segmentation, fmt: str, soft: bool) -> list[dict]:
    """One JSON entry per output mask (see the README's response schema)."""
    entries = []
    for label, mask, probs, score in zip(
        result.labels, result.masks, result.probabilities, result.scores, strict=True
    ):
        entry: dict = {
            "prompt": label,
            "score": round(float(score), 6),
            "area": int(np.count_nonzero(mask)),
            "bbox": mask_bbox(mask),
            "threshold": result.threshold,
        }
        if fmt == "rle":
            entry["rle"] = encode_rle(mask)
        else:
            entry["png"] = _b64(encode_png_mask(mask))
        if soft:
            entry["soft_png"] = _b64(encode_png_probabilities(probs))
        entries.append(entry)
    return entries


def single_png(result: Segmentation) -> bytes:
    """The body of a single-mask PNG response: mode L, 0/255, the query's size."""
    return encode_png_mask(result.masks[0])
