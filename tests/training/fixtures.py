"""Writers of tiny on-disk datasets (PhraseCut, COCO, manifest) for tests.

Everything is generated into a temporary folder; nothing is downloaded. Polygons are
axis-aligned rectangles so the expected masks can be written by hand with slicing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A random-noise RGB image (PNG or JPEG by suffix)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "RGB").save(path)
    return path


def write_mask(path: Path, mask: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path)
    return path


def rect_polygon(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    """A rectangle as a PhraseCut polygon ([[x, y], ...])."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def rect_mask(width: int, height: int, *boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Hand rasterisation: union of inclusive integer boxes (x0, y0, x1, y1)."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE (column-major runs, background first), written out by hand."""
    flat = mask.ravel(order="F").astype(np.int8)
    counts: list[int] = []
    value, run = 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = int(pixel), 1
    counts.append(run)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE, from pycocotools when installed, else ``model.codecs.rle``."""
    try:
        from pycocotools import mask as coco_mask
    except ImportError:
        from clipseg_serve.model.codecs.rle import encode_rle

        return encode_rle(mask)
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


# ----------------------------------------------------------------------------- PhraseCut

#: Image sizes (width, height) of the PhraseCut fixture.
PHRASECUT_IMAGES = {1: (40, 30), 2: (36, 28), 3: (20, 20)}

#: Tasks with known masks, as (task, inclusive boxes of the expected union mask).
PHRASECUT_TASKS: list[tuple[dict[str, Any], list[tuple[int, int, int, int]]]] = [
    (
        {
            "task_id": "1__a",
            "image_id": 1,
            "phrase": "red car",
            # Two instances, the second with two polygons; float corners are truncated.
            "Polygons": [
                [rect_polygon(2.7, 3.2, 10.9, 8.6)],
                [rect_polygon(20, 10, 25, 20), rect_polygon(30, 2, 35, 5)],
            ],
        },
        [(2, 3, 10, 8), (20, 10, 25, 20), (30, 2, 35, 5)],
    ),
    (
        {
            "task_id": "2__b",
            "image_id": 2,
            "phrase": "red car",
            "Polygons": [[rect_polygon(5, 5, 15, 12)]],
        },
        [(5, 5, 15, 12)],
    ),
    (
        {
            "task_id": "2__c",
            "image_id": 2,
            "phrase": "tree  on the left",  # extra space: phrases are whitespace-normalised
            "Polygons": [[rect_polygon(0, 0, 4, 27)]],
        },
        [(0, 0, 4, 27)],
    ),
]

#: Tasks the loader must skip (and count): no polygons at all, an instance without
#: polygons, and no phrase_structure.
PHRASECUT_SKIPPED: list[dict[str, Any]] = [
    {"task_id": "3__d", "image_id": 3, "phrase": "sky", "Polygons": []},
    {"task_id": "3__e", "image_id": 3, "phrase": "cloud", "Polygons": [[]]},
    {
        "task_id": "3__f",
        "image_id": 3,
        "phrase": "grass",
        "Polygons": [[rect_polygon(1, 1, 5, 5)]],
        "phrase_structure": None,
    },
]


def phrasecut_task(task: dict[str, Any]) -> dict[str, Any]:
    """A task with the other keys of the published format filled in."""
    full = {
        "ann_ids": [0],
        "instance_boxes": [[0, 0, 1, 1]] * len(task.get("Polygons", [])),
        "phrase_structure": {"name": str(task.get("phrase", "")).split(" ")[-1]},
    }
    full.update(task)
    return full


def write_phrasecut(
    root: Path, splits: tuple[str, ...] = ("train",), tasks: list[dict[str, Any]] | None = None
) -> Path:
    """A VGPhraseCut_v0-style folder: refer_<split>.json for each split + images/*.jpg."""
    if tasks is None:
        tasks = [t for t, _ in PHRASECUT_TASKS] + PHRASECUT_SKIPPED
    for image_id, (width, height) in PHRASECUT_IMAGES.items():
        write_image(root / "images" / f"{image_id}.jpg", width, height, seed=image_id)
    for split in splits:
        (root / f"refer_{split}.json").write_text(json.dumps([phrasecut_task(t) for t in tasks]))
    return root


# ----------------------------------------------------------------------------- COCO

COCO_SIZES = {1: (24, 20), 2: (16, 16)}
#: Expected masks: image 1 "traffic light" = polygon + compressed RLE; "dog" = crowd RLE.
#: COCO's polygon corners are pixel edges: the rectangle (2, 2)-(8, 6) covers the pixels
#: x 2..7, y 2..5 (pycocotools; PhraseCut's fill-and-outline would add the far edges).
COCO_MASKS = {
    "polygon": rect_mask(24, 20, (2, 2, 7, 5)),
    "rle": rect_mask(24, 20, (12, 10, 15, 17)),
    "crowd": rect_mask(24, 20, (0, 12, 5, 19)),
    "person": rect_mask(16, 16, (3, 4, 8, 11)),
}


def coco_document() -> dict[str, Any]:
    """A COCO instances document over the two fixture images."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 24, "height": 20},
            {"id": 2, "file_name": "b.png", "width": 16, "height": 16},
        ],
        "categories": [
            {"id": 1, "name": "traffic_light"},
            {"id": 2, "name": "dog"},
            {"id": 3, "name": "person"},
            {"id": 4, "name": "cat"},  # never annotated: still a valid negative phrase
        ],
        "annotations": [
            {
                "id": 10,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]],
            },
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": compressed_rle(COCO_MASKS["rle"]),
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "iscrowd": 1,
                "segmentation": uncompressed_rle(COCO_MASKS["crowd"]),
            },
            {
                "id": 13,
                "image_id": 2,
                "category_id": 3,
                "iscrowd": 0,
                "segmentation": [[3, 4, 9, 4, 9, 12, 3, 12]],
            },
        ],
    }


def write_coco(folder: Path, document: dict[str, Any] | None = None) -> Path:
    """instances.json + the images next to it; returns the JSON's path."""
    for image_id, (width, height) in COCO_SIZES.items():
        write_image(folder / ("a.png" if image_id == 1 else "b.png"), width, height, image_id)
    path = folder / "instances.json"
    path.write_text(json.dumps(coco_document() if document is None else document))
    return path


# ----------------------------------------------------------------------------- manifest


def write_manifest(folder: Path, lines: list[str] | None = None) -> Path:
    """Two images with masks and a manifest with relative paths; returns its path."""
    write_image(folder / "images" / "one.png", 20, 16, seed=1)
    write_image(folder / "images" / "two.png", 12, 10, seed=2)
    write_mask(folder / "masks" / "one.png", rect_mask(20, 16, (3, 2, 9, 7)))
    write_mask(folder / "masks" / "two.png", rect_mask(12, 10, (0, 0, 5, 9)))
    if lines is None:
        records = [
            {"image": "images/one.png", "mask": "masks/one.png", "phrase": "cat"},
            {"image": "images/two.png", "mask": "masks/two.png", "phrase": "dog"},
        ]
        lines = [json.dumps(r) for r in records]
        lines.insert(1, "")  # blank lines are allowed
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
