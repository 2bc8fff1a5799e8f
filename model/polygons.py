"""Masks as COCO polygons: ``segmentation`` lists of ``[x1, y1, x2, y2, ...]``.

Outlines come from OpenCV's border following (Suzuki & Abe) with a two-level hierarchy
(outer borders and their holes), simplified with Douglas-Peucker to ``tolerance`` pixels.
Coordinates are pixel centres (x right, y down), as OpenCV gives them.

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
    traced one (0: every corner of the pixel outline). Components of one or two pixels,
    whose outline has no area, come back as a small square/rectangle around them.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    contours, hierarchy = cv2.findContours(
        np.ascontiguousarray(mask).view(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE
    )
    if hierarchy is None:
        return []
    links = hierarchy[0]  # [next, previous, first child, parent] per contour
    polygons = []
    for index, contour in enumerate(contours):
        if links[index][3] != -1:
            continue  # a hole: joined to its outer ring below
        ring = _simplified(contour, tolerance)
        if len(ring) < 3:
            polygons.append(_box_ring(contour[:, 0, :]))
            continue
        child = links[index][2]
        while child != -1:
            hole = _simplified(contours[child], tolerance)
            if len(hole) >= 3:
                ring = _keyhole(ring, hole)
            child = links[child][0]
        polygons.append(ring.astype(np.float64).ravel().tolist())
    return polygons


def _simplified(contour: np.ndarray, tolerance: float) -> np.ndarray:
    """[N, 1, 2] int contour -> [M, 2] points, Douglas-Peucker at ``tolerance``."""
    if tolerance > 0 and len(contour) > 3:
        contour = cv2.approxPolyDP(contour, tolerance, True)
    return contour[:, 0, :]


def _keyhole(ring: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """``ring`` with ``hole`` spliced in at their closest pair of vertices."""
    gaps = ((ring[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(gaps.argmin()), gaps.shape)
    around = np.concatenate([hole[j:], hole[: j + 1]])  # the hole, closed at vertex j
    return np.concatenate([ring[: i + 1], around, ring[i:]])


def _box_ring(points: np.ndarray) -> list[float]:
    """A rectangle around 1-2 pixels (half a pixel out), as a polygon."""
    x0, y0 = points.min(axis=0) - 0.5
    x1, y1 = points.max(axis=0) + 0.5
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]
