"""Bytes in, headers and ready tensors out (before the queue); masks in, bodies out (after).

Everything here is CPU work that runs in the threadpool, never on the event loop.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math

import numpy as np
import torch

from clipseg_serve.model.codecs.polygons import DEFAULT_MAX_VERTICES
from clipseg_serve.model.codecs.rle import encode_png_gray, encode_png_packed
from clipseg_serve.model.inference.batch import Segmentation
from clipseg_serve.model.inference.entries import (
    MaskEntry,
    answered_masks,
    entry_mask,
    entry_rle,
)
from clipseg_serve.model.inference.predictor import Predictor, PreparedImage
from clipseg_serve.service.budget import ImageHeader
from clipseg_serve.service.encode_limits import EncodeLimits
from clipseg_serve.service.errors import ApiError

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


def _require_bytes(data: bytes, field: str) -> None:
    if not data:
        raise ApiError(400, "undecodable_image", f"{field} is empty (0 bytes)")


def probe(predictor: Predictor, uploads: list[tuple[bytes, str]]) -> list[ImageHeader]:
    """Each (data, field name)'s format, size and mode from its header; no pixel decoded."""
    headers = []
    for data, field in uploads:
        _require_bytes(data, field)
        info = predictor.probe_image(data)
        headers.append(ImageHeader(info.format, info.width, info.height, info.mode))
    return headers


def image_key(data: bytes, guide: bool = False) -> str:
    """The content key of an upload (read before decoding: the scheduler counts queued
    requests for one image as one backbone pass). A full decode (``guide``) gives the
    model slightly different pixels than a drafted one, so it is a different image."""
    return hashlib.blake2b(data, digest_size=16).hexdigest() + (":full" if guide else "")


def prepare_query(
    predictor: Predictor, data: bytes, guide: bool = False
) -> tuple[PreparedImage, str]:
    """Decode the query image (``guide``: keep it at full size, for refinement); also
    return its content key (``image_key``) for in-batch de-duplication."""
    _require_bytes(data, "image")
    key = image_key(data, guide)
    prepared = predictor.prepare_image(data, guide=True) if guide else predictor.prepare_image(data)
    return prepared, key


def prepare_supports(predictor: Predictor, pairs: list[tuple[bytes, bytes]]) -> torch.Tensor:
    """Engineer every (support image, mask) pair: float32 [K, 3, S, S]."""
    engineered = []
    for i, (image, mask) in enumerate(pairs):
        _require_bytes(image, f"support_image #{i + 1}")
        _require_bytes(mask, f"support_mask #{i + 1}")
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


def _no_limits() -> EncodeLimits:
    """No deadline; the library's vertex cap (for callers outside a request)."""
    return EncodeLimits(math.inf, DEFAULT_MAX_VERTICES)


def json_body(
    result: Segmentation,
    fmt: str,
    png_bits: int = 8,
    tolerance: float = 1.0,
    limits: EncodeLimits | None = None,
) -> bytes:
    """The JSON answer as bytes — ``width``, ``height``, ``masks`` (``mask_entries``),
    ``instances_dropped`` with instances — rendered as Starlette's ``JSONResponse``
    renders, here in the threadpool rather than on the event loop (a big polygon answer
    takes a fraction of a second to render). 504 if the deadline passed meanwhile."""
    limits = limits or _no_limits()
    height, width = result.size
    entries = mask_entries(result, fmt, png_bits, tolerance, limits)
    payload: dict = {"width": width, "height": height, "masks": entries}
    if result.instances is not None:
        # Components beyond CLIPSEG_MAX_INSTANCES, per mask: nothing is dropped silently.
        payload["instances_dropped"] = [
            {"prompt": label, "dropped": found.dropped}
            for label, found in zip(result.labels, result.instances, strict=True)
        ]
    body = _render(payload)
    limits.check()
    return body


def with_field(body: bytes, name: str, value: object) -> bytes:
    """The JSON object ``body`` with ``name: value`` added at its end (the timings, known
    only once the rest is rendered), without parsing it again."""
    return body[:-1] + b"," + _render({name: value})[1:]


def _render(content: object) -> bytes:
    """JSON as ``JSONResponse.render`` writes it: compact, UTF-8, no NaN."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def mask_entries(
    result: Segmentation,
    fmt: str,
    png_bits: int = 8,
    tolerance: float = 1.0,
    limits: EncodeLimits | None = None,
) -> list[dict]:
    """One JSON entry per output mask — or per instance of each, when the result has
    instances — (see the README's response schema), encoded one mask at a time so only
    one unpacked mask exists at once; mask PNGs have ``png_bits`` (alpha mattes when the
    result is feathered); polygons are simplified to ``tolerance`` pixels. ``limits``:
    the deadline, checked before each mask (504), and the polygons' vertex cap (413)."""
    limits = limits or _no_limits()
    entries = []
    for found in answered_masks(result):
        limits.check()
        entry: dict = {"prompt": found.label}
        if found.instance is not None:
            entry |= {"instance": found.instance, "score": found.score,
                      "max_score": found.max_score}  # fmt: skip
        else:
            entry["score"] = found.score
        entry |= {
            "area": found.area,
            "bbox": found.box,
            "threshold": result.mask_threshold(found.index),
        }
        entry.update(_encoded(result, found, fmt, png_bits, tolerance, limits))
        if result.soft is not None and found.instance is None:
            entry["soft_png"] = _b64(encode_png_gray(result.soft[found.index]))
        entries.append(entry)
    return entries


def _encoded(
    result: Segmentation,
    found: MaskEntry,
    fmt: str,
    png_bits: int,
    tolerance: float,
    limits: EncodeLimits,
) -> dict:
    """``{"rle" | "segmentation" | "png": ...}`` of one mask or one of its instances; each
    mask is unpacked at most once (a whole mask's PNG, or its RLE from the device's runs,
    needs no unpacking at all)."""
    if fmt == "rle":
        return {"rle": entry_rle(result, found)}
    if fmt == "png" and result.feather:
        matte = encode_png_gray(result.alpha(found.index, found.instance))
        return {"png": _b64(matte), "feather": result.feather}
    width = result.size[1]
    if fmt == "png" and found.instance is None:
        packed = result.packed_masks[found.index]
        return {"png": _b64(encode_png_packed(packed, width, png_bits))}
    mask = entry_mask(result, found)
    if fmt == "polygon":
        return {"segmentation": limits.polygons(mask, tolerance)}
    packed = np.packbits(mask, axis=-1)  # an instance's PNG, with the answer's png_bits
    return {"png": _b64(encode_png_packed(packed, width, png_bits))}


def single_png(
    result: Segmentation, png_bits: int = 8, limits: EncodeLimits | None = None
) -> bytes:
    """The body of a single-mask PNG response at the query's size: mode L, 0/255
    (``png_bits=8``) or mode 1 (``png_bits=1``); the alpha matte when feathered. 504 if
    the deadline has passed, before or after encoding."""
    limits = limits or _no_limits()
    limits.check()
    if result.feather:
        body = encode_png_gray(result.alpha(0))
    else:
        body = encode_png_packed(result.packed_masks[0], result.size[1], png_bits)
    limits.check()
    return body
