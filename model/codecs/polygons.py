"""Masks as COCO polygons: ``segmentation`` lists of ``[x1, y1, x2, y2, ...]``.

Outlines come from OpenCV's border following (Suzuki & Abe) with a two-level hierarchy
(outer borders and their holes), simplified with Douglas-Peucker to ``tolerance`` pixels.
Coordinates follow COCO: pixel (x, y) covers [x, x + 1] x [y, y + 1]. OpenCV traces the
centres of the boundary pixels, which would cut every boundary pixel in half (and lose
one- or two-pixel-wide parts); so the mask is traced at twice its resolution, where those
centres lie a quarter pixel inside the pixel edges: every mask pixel's centre is inside
its polygon and every other pixel's outside, and a single pixel is a small square.

COCO's polygon lists cannot say "hole": pycocotools rasterises each polygon and unions
them. So each hole is cut into its outer ring with a zero-width bridge (a "keyhole"): the
ring runs to the hole, around it and back along the same segment. pycocotools fills by
crossings (even-odd), so the bridge's two edges cancel and the hole stays empty —
``frPyObjects`` + ``merge`` + ``decode`` give back the mask, holes included, to within a
pixel on the boundary (tested). Tools that read only outer rings show the hole filled;
RLE keeps it for them.

Cost. Tracing is one linear pass of OpenCV over the doubled mask; all that follows is
linear in the traced vertices (plus a log factor for the bridges), and a noisy mask — a
refinement at a small radius on a grainy photo — has hundreds of thousands of them (a
4 MP one: 874k at tolerance 0, 500k at 1: tolerance does not shrink specks). So
``max_vertices`` caps the answer: vertices are counted contour by contour as they are
simplified, and the first one past the cap raises ``PolygonTooComplexError`` before any
hole is keyholed or any coordinate list is built. ``checkpoint`` is called between
contours, so a caller can stop at a deadline by raising from it.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from clipseg_serve.model.errors import PolygonTooComplexError

__all__ = ["DEFAULT_MAX_VERTICES", "least_vertices", "mask_to_polygons"]

#: Vertices of all polygons of one mask, by default: over 3x a busy 4 MP mask traced
#: exactly (about 80k at tolerance 0 for a hundred smooth blobs; 5k at tolerance 1), well
#: under a noisy one's (874k). A JSON answer spends about 17 bytes per vertex.
DEFAULT_MAX_VERTICES = 250_000

#: One outline: its outer ring [N, 2] and its holes [M_k, 2], int32 on the doubled grid.
Outline = tuple[np.ndarray, list[np.ndarray]]


def mask_to_polygons(
    mask: np.ndarray,
    tolerance: float = 1.0,
    *,
    max_vertices: int | None = DEFAULT_MAX_VERTICES,
    checkpoint: Callable[[], None] | None = None,
) -> list[list[float]]:
    """bool [H, W] -> COCO polygons, one per 8-connected component (holes keyholed in):
    float lists ``[x1, y1, x2, y2, ...]`` in pixels, multiples of 0.25.

    tolerance: the largest distance in pixels a simplified outline may stray from the
        traced one (0: every corner of the pixel outline).
    max_vertices: the most vertices all polygons together may have (None: no limit);
        past it, ``PolygonTooComplexError``, raised as soon as the count passes it.
    checkpoint: called between contours; what it raises stops the tracing (a deadline).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    if max_vertices is not None and max_vertices < 0:
        raise ValueError(f"max_vertices must be >= 0, got {max_vertices}")
    binary = np.ascontiguousarray(mask).view(np.uint8)
    limit = max_vertices if max_vertices is not None else np.iinfo(np.int64).max
    # findContours builds every contour at once (a million specks: +450 MB, 1.7 s), so a
    # mask that cannot fit is refused from a bound found in two cheap passes first.
    if max_vertices is not None and least_vertices(binary, tolerance) > limit:
        raise PolygonTooComplexError(limit)
    doubled = binary.repeat(2, axis=0).repeat(2, axis=1)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    del doubled  # 4 bytes per mask pixel: not kept while the polygons are built
    if hierarchy is None:
        return []
    outlines = _outlines(contours, hierarchy[0], tolerance * 2, limit, checkpoint)
    polygons = []
    for ring, holes in outlines:
        if checkpoint is not None:
            checkpoint()
        ring = _keyholed(ring, holes)
        # Doubled-grid pixel i's centre is at (i + 0.5) / 2 in COCO's coordinates.
        polygons.append(((ring.astype(np.float64) + 0.5) / 2).ravel().tolist())
    return polygons


def least_vertices(mask: np.ndarray, tolerance: float) -> int:
    """A lower bound of the vertices ``mask_to_polygons(mask, tolerance)`` returns, from
    two linear passes and no tracing: ``mask`` bool or 0/1 uint8 [H, W].

    Counts (2x2 windows over the zero-padded mask, Gray's bit quads): the outline's
    corners C = Q1 + Q3 + 2 QD (a diagonal window is two), the Euler number
    K - H = (Q1 - Q3 - 2 QD) / 4 with 8-connected pieces, and the pieces K (connected
    components), hence the holes H. Traced exactly, every outline edge is a straight run
    of its own, so at least C vertices; simplified, each contour keeps at least 3; and
    each hole's bridge adds 2.
    """
    binary = np.pad(np.ascontiguousarray(mask).view(np.uint8), 1)
    # Each window's code: 1 x top-left + 2 x top-right + 4 x bottom-left + 8 x bottom-right.
    codes = binary[:-1, :-1] + 2 * binary[:-1, 1:] + 4 * binary[1:, :-1] + 8 * binary[1:, 1:]
    counts = cv2.calcHist([codes], [0], None, [16], [0, 16]).ravel().astype(np.int64)
    del codes
    q1, q3, qd = counts[[1, 2, 4, 8]].sum(), counts[[7, 11, 13, 14]].sum(), counts[[6, 9]].sum()
    pieces = cv2.connectedComponents(binary, connectivity=8)[0] - 1  # label 0: background
    holes = pieces - (q1 - q3 - 2 * qd) // 4
    traced = q1 + q3 + 2 * qd if tolerance == 0 else 3 * (pieces + holes)
    return int(traced + 2 * holes)


def _outlines(
    contours: tuple[np.ndarray, ...],
    links: np.ndarray,
    tolerance: float,
    limit: int,
    checkpoint: Callable[[], None] | None,
) -> list[Outline]:
    """The simplified outer rings with their holes (``links``: OpenCV's [next, previous,
    first child, parent] per contour; ``tolerance`` in doubled-grid pixels), counting the
    vertices the polygons will have; ``PolygonTooComplexError`` once past ``limit``."""
    outlines, vertices = [], 0
    for index, contour in enumerate(contours):
        if links[index][3] != -1:
            continue  # a hole: gathered with its outer ring below
        ring, holes = _simplified(contour, tolerance), []
        vertices += len(ring)
        child = links[index][2]
        while True:
            if vertices > limit:
                raise PolygonTooComplexError(limit)
            if checkpoint is not None:
                checkpoint()
            if child == -1:
                break
            hole = _simplified(contours[child], tolerance)
            if len(hole) >= 3:
                holes.append(hole)
                vertices += len(hole) + 2  # the bridge repeats a hole and a ring vertex
            child = links[child][0]
        outlines.append((ring, holes))
    return outlines


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """[N, 1, 2] int contour -> [M, 2] points, Douglas-Peucker at ``tolerance``; a part
    that would shrink below a triangle keeps its traced corners (on the doubled grid every
    outline has at least four)."""
    if tolerance > 0 and len(contour) > 4:
        simpler = cv2.approxPolyDP(contour, tolerance, True)
        if len(simpler) >= 3:
            contour = simpler
    return contour[:, 0, :]


def _keyholed(ring: np.ndarray, holes: list[np.ndarray]) -> np.ndarray:
    """``ring`` [N, 2] with each hole [M_k, 2] spliced in at its closest pair of vertices
    (one of the hole's, one of the ring's own), all in one pass: O(n log n), where
    splicing holes one by one into the growing ring was quadratic (19 s for a noisy
    4 MP mask). Such bridges never cross one another: were two to cross, swapping their
    ring ends would shorten one, which then was not its hole's closest pair."""
    if not holes:
        return ring
    nearest, gaps = _nearest(ring, np.concatenate(holes))
    bridges, start = [], 0  # (ring vertex i, hole k, hole vertex j), in ring order
    for k, hole in enumerate(holes):
        j = int(gaps[start : start + len(hole)].argmin())
        bridges.append((int(nearest[start + j]), k, j))
        start += len(hole)
    bridges.sort()
    parts, start = [], 0
    for i, k, j in bridges:  # ring up to vertex i, around hole k from its vertex j, back
        hole = holes[k]
        parts += [ring[start : i + 1], hole[j:], hole[: j + 1]]
        start = i  # the ring goes on from vertex i again: the bridge back
    parts.append(ring[start:])
    return np.concatenate(parts)


def _nearest(ring: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``points`` [P, 2], the index of its closest ``ring`` [N, 2] vertex and
    the squared distance to it: int64 [P], float32 [P].

    FLANN's single k-d tree (algorithm 4) with unlimited checks searches exactly and
    deterministically; it beats a brute-force distance matrix from 20 x 20 points up
    (10 vs 15 us), and a ring with thousands of holes stays O(n log n).
    """
    tree = cv2.flann_Index(ring.astype(np.float32), {"algorithm": 4, "leaf_max_size": 10})
    index, squared = tree.knnSearch(points.astype(np.float32), 1, params={"checks": -1})
    return index[:, 0].astype(np.int64), squared[:, 0]
