"""The host steps of the post-processing pipeline, on a request's ``Segmentation``.

``model.masks.postprocess`` lists the order: after the device has thresholded and combined the
maps, each mask is reshaped (``min_area``, ``fill_holes``, ``erode``, ``dilate``), split
into instances, and given its feather width; areas and boxes follow the reshaped masks.
Masks are unpacked one at a time, so the transient memory is one mask's bytes (plus
OpenCV's int32 labels while components are found).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from clipseg_serve.model.inference.batch import Segmentation
from clipseg_serve.model.masks.mask_ops import (
    dilate,
    drop_small,
    erode,
    fill_holes,
    mask_box,
    split_instances,
)
from clipseg_serve.model.masks.postprocess import PostProcess

__all__ = ["finish_on_host", "shape_mask"]


def shape_mask(mask: np.ndarray, post: PostProcess) -> np.ndarray:
    """bool [H, W] after ``min_area``, ``fill_holes``, ``erode`` then ``dilate``."""
    mask = drop_small(mask, post.min_area)
    if post.fill_holes:
        mask = fill_holes(mask)
    mask = erode(mask, post.erode)
    return dilate(mask, post.dilate)


def finish_on_host(result: Segmentation, post: PostProcess, keep_soft: bool) -> Segmentation:
    """``result`` after the host steps ``post`` asks for.

    ``keep_soft``: the client asked for the soft maps (instances need them for their
    scores and ask the device for them either way; they are dropped here when unasked).
    """
    if not post.on_host:
        return result
    packed, areas, boxes = result.packed_masks, result.areas, result.boxes
    if post.reshapes:
        packed, areas, boxes = packed.copy(), areas.copy(), boxes.copy()
    instances = []
    for i in range(len(result.labels)):
        mask = result.mask(i) if (post.reshapes or post.instances) else None
        if post.reshapes:
            mask = shape_mask(mask, post)
            packed[i] = np.packbits(mask, axis=-1)
            areas[i] = int(np.count_nonzero(mask))
            boxes[i] = mask_box(mask)
        if post.instances:
            assert result.soft is not None, "instances are scored by the soft maps"
            instances.append(split_instances(mask, result.soft[i], post.max_instances))
    return dataclasses.replace(
        result,
        packed_masks=packed,
        areas=areas,
        boxes=boxes,
        # Runs found on the device describe the masks before reshaping.
        runs=None if post.reshapes else result.runs,
        soft=result.soft if keep_soft else None,
        instances=tuple(instances) if post.instances else None,
        feather=post.feather,
    )
