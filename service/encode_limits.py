"""What encoding one answer may spend: time until the request's deadline, and polygon
vertices up to ``CLIPSEG_MAX_POLYGON_VERTICES`` for all its masks together.

Encoding runs after the model, in the threadpool, and its cost follows the masks, not the
request: a noisy 4 MP mask traced at ``polygon_tolerance=0`` has 874k vertices (a 15 MB
body). So the encoder checks the deadline before each mask and between contours while
tracing (504, as for a deadline that passed in the queue: never a 200 after it), and the
vertex cap bounds the polygons' time and the body's size (413 naming the setting, before
the vertices past it are built).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import monotonic

import numpy as np

from clipseg_serve.model.codecs.polygons import mask_to_polygons
from clipseg_serve.model.errors import PolygonTooComplexError
from clipseg_serve.service.errors import ApiError

__all__ = ["EncodeLimits", "deadline_passed", "too_many_vertices"]


def deadline_passed() -> ApiError:
    """The 504 of a deadline that passed while the answer was being encoded."""
    return ApiError(
        504,
        "deadline_exceeded",
        "the request did not finish before its deadline (it passed while the masks were "
        "being encoded)",
    )


def too_many_vertices(limit: int) -> ApiError:
    """The 413 of polygons past ``CLIPSEG_MAX_POLYGON_VERTICES`` (``limit``)."""
    name = "CLIPSEG_MAX_POLYGON_VERTICES"
    return ApiError(
        413,
        "request_too_costly",
        f"format=polygon: the masks' polygons need more than {name}={limit} vertices in "
        "all (a noisy or ragged mask); raise polygon_tolerance (1 or 2 px removes most "
        "stair-step corners), drop small pieces with min_area, ask for format=rle (exact "
        f"and compact), or raise {name} on the server",
    )


@dataclass
class EncodeLimits:
    """The allowance of one answer while it is encoded (one thread; not shared).

    deadline: the request's deadline, a ``time.monotonic()`` value.
    max_vertices: polygon vertices for all masks of the answer together.
    clock: the time source (``time.monotonic``; tests pass their own).
    vertices: spent so far.
    """

    deadline: float
    max_vertices: int
    clock: Callable[[], float] = monotonic
    vertices: int = 0

    def check(self) -> None:
        """504 once the deadline has passed."""
        if self.clock() >= self.deadline:
            raise deadline_passed()

    def polygons(self, mask: np.ndarray, tolerance: float) -> list[list[float]]:
        """``mask`` bool [H, W] as COCO polygons (``model.codecs.polygons``), within what is left
        of the vertex allowance (413 past it) and the deadline (504), both checked while
        tracing."""
        left = self.max_vertices - self.vertices
        try:
            polygons = mask_to_polygons(mask, tolerance, max_vertices=left, checkpoint=self.check)
        except PolygonTooComplexError:
            raise too_many_vertices(self.max_vertices) from None
        self.vertices += sum(len(p) for p in polygons) // 2
        return polygons
