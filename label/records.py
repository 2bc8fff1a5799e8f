"""One labelled image as a plain record: its size and one annotation per mask — or per
connected piece, with instances — encoded with the same functions as the service's
answers (COCO RLE from the device's runs, polygons by Douglas-Peucker), so the masks are
the service's bit for bit.

A record is JSON: ``{"index", "uri", "width", "height", "annotations": [{"label",
"score", "area", "bbox", "rle"[, "polygons"]}]}``, or ``{"index", "uri", "error"}`` for an
image that could not be labelled. Every annotation keeps its exact RLE (the PNG masks and
YOLO files are drawn from it); ``polygons`` is added with ``--segmentation polygon``.
"""

from __future__ import annotations

from typing import Any

from clipseg_serve.model.codecs.polygons import mask_to_polygons
from clipseg_serve.model.inference.batch import Segmentation
from clipseg_serve.model.inference.entries import answered_masks, entry_mask, entry_rle

#: ``--segmentation`` values: COCO RLE (exact) or polygons (simplified, holes keyholed).
SEGMENTATIONS = ("rle", "polygon")


def image_record(
    index: int, uri: str, result: Segmentation, segmentation: str, tolerance: float
) -> dict[str, Any]:
    """The record of image ``index`` (see the module docstring): the service's masks
    (``answered_masks``) less the empty ones, with the same RLE bytes."""
    height, width = result.size
    annotations = []
    for found in answered_masks(result):
        if found.area == 0:
            continue  # an empty mask is no annotation
        annotation = {"label": found.label, "score": found.score, "area": found.area,
                      "bbox": found.box, "rle": entry_rle(result, found)}  # fmt: skip
        if segmentation == "polygon":
            mask = entry_mask(result, found)
            annotation["polygons"] = mask_to_polygons(mask, tolerance=tolerance, max_vertices=None)
        annotations.append(annotation)
    return {"index": index, "uri": uri, "width": width, "height": height,
            "annotations": annotations}  # fmt: skip


def error_record(index: int, uri: str, error: str) -> dict[str, Any]:
    """The record of an image that could not be labelled, with the reason."""
    return {"index": index, "uri": uri, "error": error}
