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

import numpy as np

from clipseg_serve.model.codecs.polygons import mask_to_polygons
from clipseg_serve.model.codecs.rle import encode_rle, encode_rle_runs
from clipseg_serve.model.inference.batch import Segmentation

#: ``--segmentation`` values: COCO RLE (exact) or polygons (simplified, holes keyholed).
SEGMENTATIONS = ("rle", "polygon")


def image_record(
    index: int, uri: str, result: Segmentation, segmentation: str, tolerance: float
) -> dict[str, Any]:
    """The record of image ``index`` (see the module docstring)."""
    height, width = result.size
    annotations = []
    for i, label in enumerate(result.labels):
        if result.instances is not None:
            found = result.instances[i]
            for k in range(len(found)):
                mask = found.mask(k)
                annotations.append(
                    _annotation(label, found.scores[k], found.areas[k], found.boxes[k])
                    | _encoded(mask, None, result.size, segmentation, tolerance)
                )
            continue
        if int(result.areas[i]) == 0:
            continue  # an empty mask is no annotation
        runs = result.runs[i] if result.runs is not None else None
        annotations.append(
            _annotation(label, result.scores[i], result.areas[i], result.boxes[i])
            | _encoded(result.mask(i), runs, result.size, segmentation, tolerance)
        )
    return {"index": index, "uri": uri, "width": width, "height": height,
            "annotations": annotations}  # fmt: skip


def error_record(index: int, uri: str, error: str) -> dict[str, Any]:
    """The record of an image that could not be labelled, with the reason."""
    return {"index": index, "uri": uri, "error": error}


def _annotation(label: str, score: float, area: int, box: np.ndarray) -> dict[str, Any]:
    return {
        "label": label,
        "score": round(float(score), 6),
        "area": int(area),
        "bbox": [int(v) for v in box],
    }


def _encoded(
    mask: np.ndarray,
    runs: np.ndarray | None,
    size: tuple[int, int],
    segmentation: str,
    tolerance: float,
) -> dict[str, Any]:
    """``{"rle": ...}`` (from the device's runs when there are some, as the service), and
    with ``segmentation == "polygon"`` also ``"polygons": [...]``."""
    encoded: dict[str, Any] = {
        "rle": encode_rle_runs(runs, size) if runs is not None else encode_rle(mask)
    }
    if segmentation == "polygon":
        encoded["polygons"] = mask_to_polygons(mask, tolerance=tolerance, max_vertices=None)
    return encoded
