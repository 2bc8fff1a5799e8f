"""Binary mask operations on the host: components, holes, discs, instances, feathering.

These are the steps after thresholding in ``model.masks.postprocess``'s order. They run on the
host with OpenCV, whose connected components (Wu's two-pass algorithm) and exact Euclidean
distance transform (Felzenszwalb-Huttenlocher) are linear-time C++; torch has neither, and
a disc of radius r done as a convolution costs r^2 per pixel. Masks arrive bit-packed from
the device, so each op sees one bool [H, W] mask at a time.

Conventions: components are 8-connected (the background 4-connected, its complement);
distances are between pixel centres (a pixel beside the mask is at 1); the image border is
not background — an object cut by the frame is not eroded or feathered from the frame.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "Instances",
    "dilate",
    "drop_small",
    "erode",
    "feather_alpha",
    "fill_holes",
    "mask_box",
    "split_instances",
]


def _u8(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] -> uint8 0/1 without a copy when possible (OpenCV's input type)."""
    return np.ascontiguousarray(mask).view(np.uint8)


def _box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """(rows, cols) of the mask's bounding box grown by ``margin`` pixels (inside the
    image), or None for an empty mask."""
    x, y, w, h = cv2.boundingRect(_u8(mask))
    if w == 0:
        return None
    height, width = mask.shape
    rows = slice(max(0, y - margin), min(height, y + h + margin))
    return rows, slice(max(0, x - margin), min(width, x + w + margin))


def _cropped(mask: np.ndarray, margin: int, step: Callable[[np.ndarray], np.ndarray]):
    """``step`` applied to the mask's bounding box grown by ``margin`` pixels, pasted into an
    empty mask: the same result as on the whole mask when nothing the step reads or
    writes lies beyond ``margin`` of the box — and the cost follows the object, not the
    image. An empty mask is passed through whole."""
    box = _box(mask, margin)
    if box is None:
        return step(mask)
    rows, cols = box
    done = step(mask[rows, cols])
    out = np.zeros(mask.shape, dtype=done.dtype)  # bool masks, uint8 mattes
    out[rows, cols] = done
    return out


def drop_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """bool [H, W] without its 8-connected components of fewer than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    return _cropped(mask, 0, lambda crop: _drop_small(crop, min_area))


def _drop_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    _, labels, stats, _ = cv2.connectedComponentsWithStats(_u8(mask), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False  # label 0 is the background
    if keep[1:].all():
        return mask
    return keep[labels]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool [H, W] with every background region that does not touch the border filled."""
    if not mask.any():
        return mask
    # A one-pixel margin: background around the box is connected to the outside.
    return _cropped(mask, 1, _fill_holes)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    # The background is 4-connected, so a hole is what an 8-connected outline encloses.
    count, labels = cv2.connectedComponents(_u8(~mask), connectivity=4)
    if count <= 1:
        return mask
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    outside = np.zeros(count, dtype=bool)
    outside[border] = True
    outside[0] = True  # label 0 is the mask itself here
    return ~outside[labels] | mask


def _distance_to_zero(src: np.ndarray) -> np.ndarray:
    """float32 [H, W]: each pixel's exact Euclidean distance to the nearest 0 of ``src``
    (OpenCV's "no zero anywhere" result is a huge value, which every caller treats as far)."""
    return cv2.distanceTransform(src, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """bool [H, W] grown by a disc of ``radius`` pixels (pixels within it of the mask)."""
    if radius <= 0 or not mask.any():
        return mask
    return _cropped(mask, radius + 1, lambda crop: _distance_to_zero(_u8(~crop)) <= radius)


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    """bool [H, W] shrunk by a disc of ``radius`` pixels (pixels farther from the
    background than it)."""
    if radius <= 0 or not mask.any():
        return mask
    return _cropped(mask, 1, lambda crop: _distance_to_zero(_u8(crop)) > radius)


def feather_alpha(mask: np.ndarray, width: int) -> np.ndarray:
    """uint8 [H, W] alpha matte: a linear ramp ``width`` pixels wide centred on the edge.

    The signed distance to the edge (which lies half-way between a mask pixel and its
    background neighbour) is mapped to ``clip(0.5 + d / width, 0, 1) * 255``, so the matte
    is 128 on the edge and reaches 0/255 ``width / 2`` pixels out/in; ``width <= 1`` is the
    hard 0/255 mask.
    """
    if width <= 1 or not mask.any() or mask.all():
        return mask.astype(np.uint8) * 255
    # Beyond width / 2 of the edge the matte is 0: the box plus that margin holds the ramp.
    return _cropped(mask, width // 2 + 2, lambda crop: _feather(crop, width))


def _feather(mask: np.ndarray, width: int) -> np.ndarray:
    inside = _distance_to_zero(_u8(mask)) - 0.5  # > 0 on the mask
    outside = _distance_to_zero(_u8(~mask)) - 0.5  # > 0 off it
    signed = np.where(mask, inside, -outside)
    alpha = np.clip(0.5 + signed / np.float32(width), 0.0, 1.0)
    return np.rint(alpha * 255).astype(np.uint8)


def mask_box(mask: np.ndarray) -> list[int]:
    """[x, y, w, h] of the mask's pixels as pycocotools' ``toBbox``; zeros when empty."""
    x, y, w, h = cv2.boundingRect(_u8(mask))
    return [int(x), int(y), int(w), int(h)]


@dataclass(frozen=True)
class Instances:
    """A mask's connected components, best first.

    ids: uint8 [H, W], 0 outside every kept instance, k + 1 inside instance k.
    scores: float32 [K] mean probability inside; max_scores: float32 [K] the maximum;
    areas: int64 [K]; boxes: int64 [K, 4] ``[x, y, w, h]``; dropped: components beyond
    the cap (the lowest-scoring ones), not in ``ids``.
    """

    ids: np.ndarray
    scores: np.ndarray
    max_scores: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    dropped: int = 0

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def mask(self, index: int) -> np.ndarray:
        """bool [H, W] of instance ``index`` (0-based)."""
        return self.ids == index + 1


def split_instances(mask: np.ndarray, soft: np.ndarray, limit: int) -> Instances:
    """Split bool [H, W] into 8-connected components scored by uint8 [H, W] ``soft``
    (``round(p * 255)``): sorted by mean probability, then area, then position; at most
    ``limit`` (<= 255) kept. The work is done on the mask's bounding box."""
    rows, cols = _box(mask, 0) or (slice(0, mask.shape[0]), slice(0, mask.shape[1]))
    found = _split(mask[rows, cols], soft[rows, cols], limit)
    ids = np.zeros(mask.shape, dtype=np.uint8)
    ids[rows, cols] = found.ids
    boxes = found.boxes + np.array([cols.start, rows.start, 0, 0], dtype=np.int64)
    return dataclasses.replace(found, ids=ids, boxes=boxes)


def _split(mask: np.ndarray, soft: np.ndarray, limit: int) -> Instances:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(_u8(mask), connectivity=8)
    found = count - 1
    if found == 0:
        empty = np.zeros(0, dtype=np.float32)
        ids = np.zeros(mask.shape, dtype=np.uint8)
        return Instances(ids, empty, empty, np.zeros(0, np.int64), np.zeros((0, 4), np.int64))
    flat, weights = labels.ravel(), np.ascontiguousarray(soft).ravel()
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.int64)
    sums = np.bincount(flat, weights=weights, minlength=count)[1:]
    means = (sums / areas / 255.0).astype(np.float32)
    peaks = np.zeros(count, dtype=np.uint8)
    np.maximum.at(peaks, flat, weights)
    # lexsort's last key is the primary one: mean score desc, then area desc, then label.
    order = np.lexsort((np.arange(found), -areas, -means))[:limit]
    lut = np.zeros(count, dtype=np.uint8)
    lut[order + 1] = np.arange(1, len(order) + 1, dtype=np.uint8)
    boxes = stats[1:, :4][order].astype(np.int64)  # x, y, w, h
    return Instances(
        ids=lut[labels],
        scores=means[order],
        max_scores=(peaks[1:][order] / 255.0).astype(np.float32),
        areas=areas[order],
        boxes=boxes,
        dropped=found - len(order),
    )
