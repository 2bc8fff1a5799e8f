"""Dataset files from the shards' records: COCO instance segmentation and YOLO
segmentation, each written atomically.

COCO (``annotations.json``): ``images`` in source order (``id`` = position + 1,
``file_name`` = the path or URI), ``categories`` = the prompts (the run's, then any a
manifest added, in order of appearance), one annotation per mask or instance with
``segmentation`` (compressed RLE, or polygon lists), ``area``, ``bbox`` [x, y, w, h],
``score`` and ``iscrowd`` 0. Images that could not be labelled are not in it; the
summary lists them.

YOLO (``yolo/``): ``labels/NNNNNN.txt`` for image NNNNNN (its position), one line per
polygon, ``class x1 y1 x2 y2 ...`` normalised to [0, 1]; ``images.txt`` lists the images in
the same order; ``data.yaml`` names the classes.

PNG masks (``masks/``): ``NNNNNN/C.png`` for image NNNNNN and COCO category id C, at the
image's size, 0 or 255 (the service's 8-bit mask PNG): the union of that category's
annotations in the image — with ``instances``, of its pieces. A category with no mask in
an image has no file. ``categories.json`` maps the ids to the prompts; ``images.txt``
lists the images in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clipseg_serve.label.shards import write_atomically
from clipseg_serve.model.codecs.polygons import mask_to_polygons
from clipseg_serve.model.codecs.rle import decode_rle, encode_png_mask


def categories(records: Iterable[dict[str, Any]], prompts: Sequence[str]) -> list[str]:
    """The category names: ``prompts`` in order, then other labels as they appear."""
    names = list(dict.fromkeys(prompts))
    for record in records:
        for annotation in record.get("annotations", ()):
            if annotation["label"] not in names:
                names.append(annotation["label"])
    return names


def category_ids(names: Sequence[str]) -> dict[str, int]:
    """COCO category ids of ``names``: 1, 2, ... in order."""
    return {name: i + 1 for i, name in enumerate(names)}


def coco(
    records: Sequence[dict[str, Any]], names: Sequence[str], segmentation: str = "rle"
) -> dict[str, Any]:
    """The COCO document of ``records`` (any order) with categories ``names``;
    ``segmentation``: "rle" or "polygon" (the records must have been made with it)."""
    ids = category_ids(names)
    images, annotations = [], []
    for record in sorted(records, key=lambda r: r["index"]):
        if "error" in record:
            continue
        image_id = record["index"] + 1
        images.append({"id": image_id, "file_name": record["uri"],
                       "width": record["width"], "height": record["height"]})  # fmt: skip
        for found in record["annotations"]:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": ids[found["label"]],
                "segmentation": found["polygons" if segmentation == "polygon" else "rle"],
                "area": found["area"],
                "bbox": found["bbox"],
                "score": found["score"],
                "iscrowd": 0,
            })  # fmt: skip
    categories_ = [{"id": i, "name": name} for name, i in ids.items()]
    return {"images": images, "annotations": annotations, "categories": categories_}


def write_coco(path: Path, document: dict[str, Any]) -> None:
    write_atomically(path, json.dumps(document, separators=(",", ":")).encode())


def yolo_lines(record: dict[str, Any], names: Sequence[str], tolerance: float) -> list[str]:
    """The YOLO segmentation lines of one record: one per polygon ring."""
    width, height = record["width"], record["height"]
    ids = {name: i for i, name in enumerate(names)}
    lines = []
    for found in record["annotations"]:
        polygons = found.get("polygons")
        if polygons is None:
            mask = decode_rle(found["rle"]).astype(bool)
            polygons = mask_to_polygons(mask, tolerance=tolerance, max_vertices=None)
        for ring in polygons:
            xs, ys = ring[0::2], ring[1::2]
            coords = " ".join(
                f"{x / width:.6f} {y / height:.6f}" for x, y in zip(xs, ys, strict=True)
            )
            lines.append(f"{ids[found['label']]} {coords}")
    return lines


def write_yolo(folder: Path, records: Sequence[dict[str, Any]], names: Sequence[str],
               tolerance: float) -> None:  # fmt: skip
    """``folder``/labels/*.txt, images.txt and data.yaml (see the module docstring)."""
    images = []
    for record in sorted(records, key=lambda r: r["index"]):
        if "error" in record:
            continue
        lines = yolo_lines(record, names, tolerance)
        label = folder / "labels" / f"{record['index']:06d}.txt"
        write_atomically(label, "".join(line + "\n" for line in lines).encode())
        images.append(record["uri"])
    write_atomically(folder / "images.txt", "".join(u + "\n" for u in images).encode())
    yaml = "names:\n" + "".join(f"  {i}: {json.dumps(n)}\n" for i, n in enumerate(names))
    write_atomically(folder / "data.yaml", yaml.encode())


def category_masks(record: dict[str, Any], ids: Mapping[str, int]) -> dict[int, np.ndarray]:
    """COCO category id (``ids`` of the labels) -> the union of its annotations' masks in
    ``record``, bool [h, w]; only categories with an annotation."""
    masks: dict[int, np.ndarray] = {}
    for found in record["annotations"]:
        mask = decode_rle(found["rle"]).astype(bool)
        category = ids[found["label"]]
        masks[category] = masks[category] | mask if category in masks else mask
    return masks


def write_png_masks(folder: Path, records: Sequence[dict[str, Any]], names: Sequence[str]
                    ) -> int:  # fmt: skip
    """``folder``/NNNNNN/C.png, categories.json and images.txt (see the module
    docstring); the number of PNG files."""
    ids = category_ids(names)
    images, files = [], 0
    for record in sorted(records, key=lambda r: r["index"]):
        if "error" in record:
            continue
        for category, mask in category_masks(record, ids).items():
            png = folder / f"{record['index']:06d}" / f"{category}.png"
            write_atomically(png, encode_png_mask(mask))
            files += 1
        images.append(record["uri"])
    write_atomically(folder / "images.txt", "".join(u + "\n" for u in images).encode())
    table = {str(i): name for name, i in ids.items()}
    write_atomically(folder / "categories.json", json.dumps(table, indent=1).encode())
    return files
