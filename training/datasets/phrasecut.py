"""PhraseCut (VGPhraseCut_v0) with the PhraseCut+ sampling CLIPSeg was trained with.

Layout, as published (github.com/ChenyunWu/PhraseCutDataset)::

    <root>/refer_train.json   refer_val.json   refer_test.json   refer_miniv.json
    <root>/images/<image_id>.jpg

Each ``refer_<split>.json`` is a list of tasks (phrase-region pairs)::

    {"task_id": "...", "image_id": 1234, "phrase": "white car on left",
     "Polygons": [instance, ...],  instance = [polygon, ...],  polygon = [[x, y], ...],
     "phrase_structure": {...}, "instance_boxes": [...], "ann_ids": [...]}

The target is the union of all polygons of all instances, rasterised like PhraseCut's
own ``polygons_to_mask`` (see ``loading.rasterize_polygons``). Like the official
``RefVGLoader`` (which CLIPSeg's loader builds on), tasks without a ``phrase_structure``
are skipped by default; tasks without polygons are skipped too. Both are counted in
``skipped`` and logged, never dropped silently. Each task is its own class for the
evaluation's mIoU (``Sample.label`` = the task id), as in the official CLIPSeg evaluation.

PhraseCut+ (the paper's training set) adds, for the "train" split by default: 20%
negatives (a phrase from another image, empty target), random prompt templates, and a
visual support (another task with the same phrase) half of the time. Other splits
default to plain samples (raw phrase, no negatives, no support), as the reference
evaluation uses. Every option can be set explicitly for any split.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipseg_serve.training.data import DatasetError
from clipseg_serve.training.datasets.loading import rasterize_polygons, read_image, read_json
from clipseg_serve.training.datasets.sampling import AnnotatedDataset

__all__ = ["PHRASECUT_PLUS", "PhraseCutDataset"]

log = logging.getLogger(__name__)

#: The paper's PhraseCut+ sampling, used for the "train" split when an option is None.
PHRASECUT_PLUS: dict[str, float] = {"negative_prob": 0.2, "template_prob": 1.0, "support_prob": 0.5}

_REQUIRED = ("task_id", "image_id", "phrase", "Polygons")


def _option(value: float | None, name: str, split: str) -> float:
    if value is not None:
        return value
    return PHRASECUT_PLUS[name] if split == "train" else 0.0


def _parse_polygons(value: Any, where: str) -> list[np.ndarray]:
    """All polygons of all instances as float64 [K, 2] arrays (instances are unioned)."""
    if not isinstance(value, list):
        raise DatasetError(f"{where}: 'Polygons' must be a list of instances")
    polygons: list[np.ndarray] = []
    for n, instance in enumerate(value):
        if not isinstance(instance, list):
            raise DatasetError(f"{where}: instance {n} must be a list of polygons")
        for polygon in instance:
            try:
                # float64, not float32: coordinates are truncated to integers later, and
                # float32 rounding could move e.g. 2.99999999 onto the next pixel.
                points = np.asarray(polygon, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"{where}: instance {n}: polygon is not [[x, y], ...]") from exc
            if points.size == 0:
                continue  # an empty polygon draws nothing, exactly as in the official loader
            if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
                raise DatasetError(
                    f"{where}: instance {n}: polygon must be a list of finite [x, y] points"
                )
            if len(points) >= 2:  # PhraseCut's polygons_to_mask ignores single points
                polygons.append(points)
    return polygons


class PhraseCutDataset(AnnotatedDataset):
    """PhraseCut tasks as samples; see the module docstring.

    Args:
        root: the VGPhraseCut_v0 folder (``refer_<split>.json`` and ``images/``).
        split: "train", "val", "test" or "miniv".
        seed: base seed of the per-sample generators.
        negative_prob: probability of a phrase from another image (empty target).
        template_prob: probability of wrapping the phrase in a training template.
        support_prob: probability of a visual support: another task with the same phrase,
            on a different image when one exists.
            (These three default to ``PHRASECUT_PLUS`` for "train", else 0.)
        augment: joint augmentation; default on for the "train" split only.
        require_structure: skip tasks without ``phrase_structure`` as the official loader.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        seed: int = 0,
        *,
        negative_prob: float | None = None,
        template_prob: float | None = None,
        support_prob: float | None = None,
        augment: bool | None = None,
        require_structure: bool = True,
    ) -> None:
        super().__init__(
            split=split,
            seed=seed,
            negative_prob=_option(negative_prob, "negative_prob", split),
            template_prob=_option(template_prob, "template_prob", split),
            support_prob=_option(support_prob, "support_prob", split),
            augment=augment,
        )
        self.root = Path(root)
        self.path = self.root / f"refer_{split}.json"
        self.require_structure = require_structure
        self.skipped: Counter[str] = Counter()
        self._load_tasks(read_json(self.path, "PhraseCut tasks"))

    def _load_tasks(self, tasks: Any) -> None:
        if not isinstance(tasks, list):
            raise DatasetError(f"{self.path}: expected a list of tasks")
        task_ids: list[Any] = []
        image_ids: list[Any] = []
        phrases: list[str] = []
        chunks: list[np.ndarray] = []  # every kept polygon, in task order
        per_task: list[int] = []  # number of polygons of each kept task
        examples: dict[str, list[Any]] = {}
        for i, task in enumerate(tasks):
            parsed = self._parse_task(task, i)
            if isinstance(parsed, str):  # the reason it is skipped
                self.skipped[parsed] += 1
                if len(seen := examples.setdefault(parsed, [])) < 3:
                    seen.append(task.get("task_id"))
                continue
            phrase, polygons = parsed
            task_ids.append(task["task_id"])
            image_ids.append(task["image_id"])
            phrases.append(phrase)
            chunks.extend(polygons)
            per_task.append(len(polygons))
        for reason, count in self.skipped.items():
            log.warning(
                "%s: skipped %d task(s) with %s (e.g. task_id %s)",
                self.path,
                count,
                reason,
                ", ".join(repr(t) for t in examples[reason]),
            )
        if not phrases:
            raise DatasetError(f"{self.path}: no usable tasks ({dict(self.skipped)} skipped)")
        self.task_ids = task_ids
        self.image_ids = image_ids
        # Flat arrays instead of millions of small lists: less memory, and DataLoader
        # workers forked from this process do not copy them by touching refcounts.
        self._points = np.concatenate(chunks)
        self._polygon_ends = np.cumsum([len(p) for p in chunks])
        self._task_ends = np.cumsum(per_task)
        # Each task is its own class, as in the official CLIPSeg evaluation (its PhraseCut
        # loader hands the sample index to the metric as the class): the paper's PhraseCut
        # mIoU is the mean of the tasks' own foreground IoUs.
        self._set_items(phrases, image_ids, labels=[str(t) for t in task_ids])

    def _parse_task(self, task: Any, position: int) -> tuple[str, list[np.ndarray]] | str:
        """(phrase, polygons) of a usable task, or why it is skipped; malformed -> error."""
        if not isinstance(task, dict):
            raise DatasetError(f"{self.path}: task #{position} is not an object")
        if "task_id" in task:
            where = f"{self.path}: task_id {task['task_id']!r}"
        else:
            where = f"{self.path}: task #{position}"
        missing = [k for k in _REQUIRED if k not in task]
        if missing:
            raise DatasetError(f"{where}: missing key(s) {', '.join(missing)}")
        phrase = task["phrase"]
        if not isinstance(phrase, str) or not phrase.strip():
            raise DatasetError(f"{where}: phrase must be a non-empty string")
        if not isinstance(task["image_id"], (int, str)) or isinstance(task["image_id"], bool):
            raise DatasetError(f"{where}: image_id must be an integer or a string")
        polygons = _parse_polygons(task["Polygons"], where)
        if self.require_structure and not task.get("phrase_structure"):
            return "no phrase_structure"
        if not polygons:
            return "no polygons"
        return " ".join(phrase.split()), polygons

    def _polygons(self, index: int) -> list[np.ndarray]:
        first = int(self._task_ends[index - 1]) if index else 0
        ends = self._polygon_ends[first : int(self._task_ends[index])]
        starts = [int(self._polygon_ends[first - 1]) if first else 0, *ends[:-1].tolist()]
        return [self._points[s:e] for s, e in zip(starts, ends.tolist(), strict=True)]

    def _load(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        where = f"{self.path}: task_id {self.task_ids[index]!r}"
        image = read_image(self.root / "images" / f"{self.image_ids[index]}.jpg", where)
        mask = rasterize_polygons(self._polygons(index), image.width, image.height)
        return image, mask, where
