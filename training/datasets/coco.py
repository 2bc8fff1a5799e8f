"""COCO-style instance annotations as referring samples: one per (image, category).

The phrase is the category name (underscores read as spaces: "traffic_light" ->
"traffic light"); the target is the union of all instances of that category on the
image. Segmentations may be polygons, compressed RLE (``counts`` a string) or
uncompressed RLE (``counts`` a list, as in ``iscrowd`` annotations); all become masks
through pycocotools exactly as COCO's own API makes them (``coco_masks``). The category
is the sample's class for the evaluation's mIoU (also for negatives: the category asked
for).

The JSON's structure is checked when the dataset is opened, so a bad key or a dangling
image/category id fails at once, naming the file and annotation id; coordinates and RLE
counts are checked when a sample is read.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipseg_serve.training.data import DatasetError
from clipseg_serve.training.datasets.coco_masks import segmentation_mask
from clipseg_serve.training.datasets.loading import read_image, read_json
from clipseg_serve.training.datasets.sampling import AnnotatedDataset

__all__ = ["CocoDataset"]


_TOP_KEYS = ("images", "annotations", "categories")


@dataclass(frozen=True)
class _ImageInfo:
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class _Item:
    image_id: Any
    category_id: Any
    annotations: tuple[tuple[Any, Any], ...]  # (annotation id, segmentation)


def _require(record: Any, keys: tuple[str, ...], where: str) -> dict:
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise DatasetError(f"{where}: missing key(s) {', '.join(missing)}")
    return record


def _check_segmentation(segmentation: Any, where: str) -> None:
    """Structural check only (cheap); values are validated when rasterised/decoded."""
    if isinstance(segmentation, dict):
        if "counts" not in segmentation or "size" not in segmentation:
            raise DatasetError(f"{where}: RLE segmentation needs 'counts' and 'size'")
        return
    if not isinstance(segmentation, list) or not segmentation:
        raise DatasetError(f"{where}: segmentation must be a list of polygons or an RLE object")
    for polygon in segmentation:
        if not isinstance(polygon, list) or len(polygon) < 2 or len(polygon) % 2:
            raise DatasetError(
                f"{where}: each polygon must be a flat list [x1, y1, x2, y2, ...] "
                "with an even number of coordinates"
            )


class CocoDataset(AnnotatedDataset):
    """Samples from a COCO instances JSON and its image folder.

    Args:
        annotation_file: the instances JSON (``images``, ``annotations``, ``categories``).
        image_dir: folder of the images' ``file_name``s; default: the JSON's folder.
        split: the split the file holds; decides the ``augment`` default.
        seed: base seed of the per-sample generators.
        skip_crowd: leave out ``iscrowd`` annotations (default: include them).
        negative_prob: probability of a category absent from the image (all-zero target).
        template_prob: probability of wrapping the phrase in a training template.
        support_prob: probability of a visual support: the same category on another image.
        augment: joint augmentation; default on for the "train" split only.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path | None = None,
        split: str = "train",
        seed: int = 0,
        *,
        skip_crowd: bool = False,
        negative_prob: float = 0.0,
        template_prob: float = 0.0,
        support_prob: float = 0.0,
        augment: bool | None = None,
    ) -> None:
        super().__init__(
            split=split,
            seed=seed,
            negative_prob=negative_prob,
            template_prob=template_prob,
            support_prob=support_prob,
            augment=augment,
        )
        self.path = Path(annotation_file)
        self.image_dir = self.path.parent if image_dir is None else Path(image_dir)
        self.skip_crowd = skip_crowd
        data = _require(read_json(self.path, "COCO annotations"), _TOP_KEYS, str(self.path))
        for key in _TOP_KEYS:
            if not isinstance(data[key], list):
                raise DatasetError(f"{self.path}: '{key}' must be a list")
        self.categories = self._parse_categories(data["categories"])
        self.images = self._parse_images(data["images"])
        self._items = self._parse_annotations(data["annotations"])
        if not self._items:
            raise DatasetError(f"{self.path}: no annotations to sample from")
        self._set_items(
            [self.categories[item.category_id] for item in self._items],
            [item.image_id for item in self._items],
            vocabulary=self.categories.values(),  # any category can be a negative
        )

    def _parse_categories(self, records: list) -> dict[Any, str]:
        categories: dict[Any, str] = {}
        for i, record in enumerate(records):
            where = f"{self.path}: category #{i}"
            _require(record, ("id", "name"), where)
            name = record["name"]
            if not isinstance(name, str) or not name.replace("_", " ").strip():
                raise DatasetError(f"{where}: name must be a non-empty string")
            if record["id"] in categories:
                raise DatasetError(f"{where}: duplicate category id {record['id']!r}")
            categories[record["id"]] = " ".join(name.replace("_", " ").split())
        return categories

    def _parse_images(self, records: list) -> dict[Any, _ImageInfo]:
        images: dict[Any, _ImageInfo] = {}
        for i, record in enumerate(records):
            where = f"{self.path}: image #{i}"
            _require(record, ("id", "file_name", "width", "height"), where)
            if record["id"] in images:
                raise DatasetError(f"{where}: duplicate image id {record['id']!r}")
            width, height = record["width"], record["height"]
            if not all(isinstance(v, int) and v > 0 for v in (width, height)):
                raise DatasetError(f"{where}: width and height must be positive integers")
            images[record["id"]] = _ImageInfo(str(record["file_name"]), width, height)
        return images

    def _parse_annotations(self, records: list) -> list[_Item]:
        grouped: dict[tuple[Any, Any], list[tuple[Any, Any]]] = defaultdict(list)
        for i, record in enumerate(records):
            ann_id = record.get("id", f"#{i}") if isinstance(record, dict) else f"#{i}"
            where = f"{self.path}: annotation {ann_id}"
            keys = ("id", "image_id", "category_id", "segmentation")
            _require(record, keys, where)
            if record["image_id"] not in self.images:
                raise DatasetError(f"{where}: unknown image_id {record['image_id']!r}")
            if record["category_id"] not in self.categories:
                raise DatasetError(f"{where}: unknown category_id {record['category_id']!r}")
            _check_segmentation(record["segmentation"], where)
            if self.skip_crowd and record.get("iscrowd", 0):
                continue
            key = (record["image_id"], record["category_id"])
            grouped[key].append((ann_id, record["segmentation"]))
        # Order by the file's own image and category order: stable, and no need for the
        # ids to be mutually comparable.
        image_rank = {image_id: n for n, image_id in enumerate(self.images)}
        category_rank = {category_id: n for n, category_id in enumerate(self.categories)}
        keys = sorted(grouped, key=lambda k: (image_rank[k[0]], category_rank[k[1]]))
        return [_Item(img, cat, tuple(grouped[(img, cat)])) for img, cat in keys]

    def _load(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        item = self._items[index]
        info = self.images[item.image_id]
        where = f"{self.path}: image {item.image_id!r} category {item.category_id!r}"
        image = read_image(self.image_dir / info.file_name, where)
        if image.size != (info.width, info.height):
            raise DatasetError(
                f"{where}: {info.file_name} is {image.width}x{image.height} but the "
                f"annotations say {info.width}x{info.height}"
            )
        mask = np.zeros((info.height, info.width), dtype=bool)
        for ann_id, segmentation in item.annotations:
            annotation = f"{self.path}: annotation {ann_id}"
            mask |= segmentation_mask(segmentation, info.height, info.width, annotation)
        return image, mask, where
