"""Reading images, masks and annotation files from disk, and rasterising polygons.

Images and masks go through the model's own decoders (``model.imaging.transforms``), so EXIF
orientation, odd PIL modes and alpha are handled exactly as at inference time. Every
failure becomes a ``DatasetError`` that names the annotation file and record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from clipseg_serve.model.errors import ClipSegError
from clipseg_serve.model.imaging.transforms import decode_image, load_mask
from clipseg_serve.training.data import DatasetError

__all__ = ["rasterize_polygons", "read_image", "read_json", "read_mask"]


def read_json(path: Path, what: str) -> Any:
    """The parsed JSON document at ``path`` (``what`` names it in error messages)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the {what}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: the {what} is not valid JSON: {exc}") from exc


def read_image(path: Path, where: str) -> Image.Image:
    """The upright RGB image at ``path``; ``where`` (file + record) prefixes errors."""
    if not path.is_file():
        raise DatasetError(f"{where}: image file {path} does not exist")
    try:
        return decode_image(path).image
    except ClipSegError as exc:
        raise DatasetError(f"{where}: cannot read image {path}: {exc}") from exc


def read_mask(path: Path, where: str) -> np.ndarray:
    """The bool mask [H, W] stored at ``path`` (nonzero = object)."""
    if not path.is_file():
        raise DatasetError(f"{where}: mask file {path} does not exist")
    try:
        return load_mask(path)
    except ClipSegError as exc:
        raise DatasetError(f"{where}: cannot read mask {path}: {exc}") from exc


def rasterize_polygons(polygons: Iterable[np.ndarray], width: int, height: int) -> np.ndarray:
    """Union mask (bool [height, width]) of polygons given as [K, 2] arrays of (x, y).

    Follows PhraseCut's official ``polygons_to_mask`` (PhraseCutDataset's
    ``utils/data_transfer.py``): coordinates are truncated to integers and each polygon is
    drawn filled *and* outlined, so thin or sliver polygons still mark their pixels;
    polygons of fewer than 2 points are ignored. COCO's masks are made differently
    (pycocotools, see ``coco_masks``).
    """
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        if len(polygon) < 2:
            continue
        points = [(int(x), int(y)) for x, y in np.asarray(polygon, dtype=np.float64)]
        draw.polygon(points, fill=1, outline=1)
    return np.asarray(canvas, dtype=bool).copy()
