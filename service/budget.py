"""What a request may cost, checked from the image headers before any pixel is decoded.

Two kinds of limit:

* per request, in pixels a client can reason about (413 naming the setting): output
  pixels x decoder rows (``CLIPSEG_MAX_OUTPUT_PIXELS``), soft-map pixels
  (``CLIPSEG_MAX_SOFT_PIXELS``), support pixels (``CLIPSEG_MAX_SUPPORT_PIXELS``);
* for the whole server, in bytes an operator can reason about: every request in flight
  reserves its estimated peak host memory (decode, packed masks, soft maps, encoding,
  the response body) from ``CLIPSEG_MEMORY_BUDGET_MB`` before it is decoded, and gives it
  back once its response is sent. A request that does not fit now is refused with 429
  (never queued into an out-of-memory).

The estimates follow the code paths: JPEGs decode drafted toward the model size (1/2..1/8
per side), other formats at full size and are reduced after; masks leave the device
bit-packed (1 bit per pixel), soft maps as 8 bits per pixel; encoding unpacks one mask at
a time; polygons are traced on a doubled mask and capped at ``CLIPSEG_MAX_POLYGON_VERTICES``
(``service.encode_limits``), so their objects and text are bounded too.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from clipseg_serve.model.inference.batch import count_masks, count_rows
from clipseg_serve.model.masks.postprocess import (
    DEFAULT_POST,
    Background,
    Combine,
    PostProcess,
    Refine,
)
from clipseg_serve.service.config import Settings
from clipseg_serve.service.cost import HostWork, Work, host_work_for, work_for
from clipseg_serve.service.errors import ApiError

#: Decoded bytes per pixel of PIL modes (what the decoder allocates before conversion).
_MODE_BYTES = {"1": 0.125, "L": 1, "P": 1, "LA": 2, "La": 2, "PA": 2, "I;16": 2, "RGB": 3}
_DRAFTED = frozenset({"JPEG", "MPO"})
#: Tracing a mask for polygons, per mask pixel: the doubled mask and OpenCV's bordered
#: copy of it (4 + 4 bytes; the bound before tracing, int32 labels, needs less).
_TRACE_BYTES_PER_PIXEL = 8
#: Per allowed polygon vertex: two Python floats in a list (64 bytes), the JSON text
#: (~17) and its copy with the timings, and OpenCV's contours (at most a third as many
#: as vertices, ~150 bytes each with their arrays).
_BYTES_PER_VERTEX = 150


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says: format id, size and mode (no pixels decoded)."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def decode_bytes(header: ImageHeader, model_size: int, full: bool = False) -> int:
    """Peak bytes to decode ``header``'s image for the model (decoded + 8-bit RGB copy);
    ``full``: decoded at full size whatever the format (a refinement's guide)."""
    if header.format in _DRAFTED and not full:
        scale = 1
        while scale < 8 and min(header.width, header.height) // (scale * 2) >= model_size:
            scale *= 2
        return 2 * 3 * header.pixels // (scale * scale)
    per_pixel = _MODE_BYTES.get(header.mode, 4)
    return math.ceil(header.pixels * (per_pixel + 1 + 3 / 4))


@dataclass(frozen=True)
class RequestShape:
    """What a request asks for, known before decoding."""

    query: ImageHeader
    rows: int  # decoder rows (prompts, negatives, the visual row, the background row)
    masks: int  # masks in the answer
    soft: bool
    supports: tuple[ImageHeader, ...] = ()
    post: PostProcess = DEFAULT_POST

    def work(self, texts: int, grid: int) -> Work:
        """What it asks of the model thread (before anything is decoded): ``texts``
        sequences to encode, for a model of ``grid`` tokens a side."""
        return work_for(
            (self.query.height, self.query.width), self.rows, self.masks, soft=self.soft,
            supports=len(self.supports), texts=texts, post=self.post, grid=grid,
        )  # fmt: skip

    def host_work(self, model_size: int, fmt: str) -> HostWork:
        """Its decoding (query and supports) and the encoding of its answer as ``fmt``."""
        refine = self.post.refine is not Refine.NONE
        decoded = decode_bytes(self.query, model_size, full=refine) + sum(
            decode_bytes(h, model_size) + 3 * h.pixels for h in self.supports
        )
        size = (self.query.height, self.query.width)
        return host_work_for(size, self.masks, decoded, fmt, self.soft, self.post)


def check_limits(settings: Settings, shape: RequestShape, model_size: int, fmt: str = "png") -> int:
    """Raise 413 for a request over a per-request limit; else its estimated peak bytes.

    ``model_size``: the model's input side (images decode toward it); ``fmt``: the
    answer's format (png | rle | polygon).
    """
    query = shape.query
    output = query.pixels * shape.rows
    if output > settings.max_output_pixels:
        raise _too_costly(
            f"{query.width}x{query.height} pixels x {shape.rows} prompt rows = {output} "
            "output pixels",
            "max_output_pixels",
            settings.max_output_pixels,
        )
    soft = query.pixels * shape.masks if shape.soft else 0
    if soft > settings.max_soft_pixels:
        raise _too_costly(
            f"soft=true returns {shape.masks} full-size 8-bit maps of {query.width}x"
            f"{query.height} = {soft} pixels",
            "max_soft_pixels",
            settings.max_soft_pixels,
        )
    refine = shape.post.refine is not Refine.NONE
    if refine and query.pixels > settings.max_refine_pixels:
        raise _too_costly(
            f"refine={shape.post.refine.value} on a {query.width}x{query.height} image "
            f"({query.pixels} pixels)",
            "max_refine_pixels",
            settings.max_refine_pixels,
        )
    support = sum(h.pixels for h in shape.supports)
    if support > settings.max_support_pixels:
        raise _too_costly(
            f"the support images have {support} pixels in all",
            "max_support_pixels",
            settings.max_support_pixels,
        )
    polygons = polygon_bytes(shape.query, settings.max_polygon_vertices) if fmt == "polygon" else 0
    return estimated_bytes(shape, model_size) + polygons


def polygon_bytes(query: ImageHeader, max_vertices: int) -> int:
    """What ``format=polygon`` adds to a request's peak: one mask traced at a time, and
    the polygons of all masks, at most ``max_vertices`` vertices."""
    return _TRACE_BYTES_PER_PIXEL * query.pixels + _BYTES_PER_VERTEX * max_vertices


def estimated_bytes(shape: RequestShape, model_size: int) -> int:
    """Peak host memory of a request from upload to response (an upper estimate)."""
    query, post = shape.query, shape.post
    refine = post.refine is not Refine.NONE
    decode = decode_bytes(query, model_size, full=refine)
    for header in shape.supports:  # decoded one after the other, mask at full size
        decode = max(decode, decode_bytes(header, model_size) + 3 * header.pixels)
    guide = 3 * query.pixels if refine else 0  # kept until the batch has rendered
    packed = shape.masks * query.height * math.ceil(query.width / 8)
    soft = shape.masks * query.pixels if (shape.soft or post.instances) else 0
    instances = shape.masks * query.pixels if post.instances else 0  # uint8 ids per mask
    encode = 2 * query.pixels  # one unpacked mask + its 8-bit image / column-major copy
    if post.on_host:
        # OpenCV's int32 labels or two float32 distance maps (+ a signed copy), one mask
        # at a time: the host steps' transient.
        encode += 13 * query.pixels
    body = 2 * (packed + soft) + (query.pixels if post.feather else 0)  # alpha PNGs
    return decode + guide + packed + soft + instances + encode + body


def _too_costly(what: str, setting: str, limit: int) -> ApiError:
    name = f"CLIPSEG_{setting.upper()}"
    return ApiError(
        413,
        "request_too_costly",
        f"{what}, more than {name}={limit}; send a smaller image, fewer prompts"
        + (" or soft=false" if setting == "max_soft_pixels" else "")
        + f", or raise {name} on the server",
    )


class MemoryBudget:
    """Bytes reserved by requests in flight, against a limit. Thread-safe."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self._reserved = 0
        self._lock = threading.Lock()

    @property
    def reserved(self) -> int:
        return self._reserved

    def reserve(self, nbytes: int) -> Reservation:
        """A reservation of ``nbytes``, or 429 when the budget cannot hold it now (413 when
        it never could)."""
        if nbytes > self.limit:
            raise ApiError(
                413,
                "request_too_costly",
                f"this request needs about {nbytes >> 20} MB of server memory, more than "
                f"CLIPSEG_MEMORY_BUDGET_MB={self.limit >> 20}",
            )
        with self._lock:
            if self._reserved + nbytes > self.limit:
                raise ApiError(
                    429,
                    "memory_budget",
                    "the server's memory budget is taken by requests in flight; retry in 1 s",
                    headers={"Retry-After": "1"},
                    retry_after=1.0,
                )
            self._reserved += nbytes
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes


class Reservation:
    """Held memory; ``release`` is idempotent (call it from a finally and a callback)."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self.budget, self.nbytes = budget, nbytes
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.budget._release(self.nbytes)


def shape_of(
    query: ImageHeader,
    *,
    prompts: int,
    negatives: int,
    visual: bool,
    combine: Combine,
    soft: bool,
    supports: Sequence[ImageHeader] = (),
    post: PostProcess | None = None,
) -> RequestShape:
    """The shape of a text (``visual=False``) or visual request."""
    post = post or DEFAULT_POST
    positives = 1 if visual else prompts
    background = post.background is Background.PROMPT
    return RequestShape(
        query=query,
        rows=count_rows(positives, negatives, background),
        masks=count_masks(positives, combine),
        soft=soft,
        supports=tuple(supports),
        post=post,
    )
