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
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["mask_to_polygons"]


def mask_to_polygons(mask: np.ndarray, tolerance: float = 1.0) -> list[list[float]]:
    """bool [H, W] -> COCO polygons, one per 8-connected component (holes keyholed in).

    tolerance: the largest distance in pixels a simplified outline may stray from the
        traced one (0: every corner of the pixel outline).
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    doubled = np.ascontiguousarray(mask).view(np.uint8).repeat(2, axis=0).repeat(2, axis=1)
    contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    tolerance *= 2  # in the doubled grid's pixels
    links = hierarchy[0]  # [next, previous, first child, parent] per contour
    polygons = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1:
            continue  # a hole: joined to its outer ring below
        ring = _simplified(contour, tolerance)
        child = links[index][2]
        while child != -1:
            hole = _simplified(contours[child], tolerance)
            if len(hole) >= 3:
                ring = _keyhole(ring, hole)
            child = links[child][0]
        # Doubled-grid pixel i's centre is at (i + 0.5) / 2 in COCO's coordinates.
        polygons.append(((ring.astype(np.float64) + 0.5) / 2).ravel().tolist())
    return polygons


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """[N, 1, 2] int contour -> [M, 2] points, Douglas-Peucker at ``tolerance``; a part
    that would shrink below a triangle keeps its traced corners (on the doubled grid every
    outline has at least four)."""
    if tolerance > 0 and len(contour) > 4:
        simpler = cv2.approxPolyDP(contour, tolerance, True)
        if len(simpler) >= 3:
            contour = simpler
    return contour[:, 0, :]


def _keyhole(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``ring`` with ``hole`` spliced in at their closest pair of vertices."""
    gaps = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(gaps.argmin()), gaps.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])  # the hole, closed at vertex j
    return np.concatenate([ring[: i + 1], around, ring[i:]])
