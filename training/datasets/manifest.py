"""Your own data as a JSON-lines manifest: one ``{"image", "mask", "phrase"}`` per line.

    {"image": "images/0001.jpg", "mask": "masks/0001_dog.png", "phrase": "dog"}

Relative paths are resolved against the manifest's folder. Masks are any image whose
nonzero pixels mark the object (see ``model.imaging.transforms.load_mask``) at the image's size.
Records are checked when the manifest is opened (cheap: JSON and keys); the files
themselves are checked when a sample is read, so opening a large manifest stays fast.
An optional ``"class"`` (a non-empty string) names the record's class for the
evaluation's mIoU; without it the samples have no class and mIoU is reported as n/a.
Blank lines are allowed; other keys in a record are ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_serve.training.data import DatasetError
from clipseg_serve.training.datasets.loading import read_image, read_mask
from clipseg_serve.training.datasets.sampling import AnnotatedDataset

__all__ = ["ManifestDataset"]

_KEYS = ("image", "mask", "phrase")


@dataclass(frozen=True)
class _Record:
    line: int
    image: Path
    mask: Path
    label: str | None = None


class ManifestDataset(AnnotatedDataset):
    """Samples from a JSONL manifest.

    Args:
        path: the manifest file.
        split: the split this file holds; decides the ``augment`` default.
        seed: base seed of the per-sample generators.
        negative_prob: probability of swapping in a phrase from a record of another
            image whose phrase is not on this image (all-zero target).
        template_prob: probability of wrapping the phrase in a training template.
        support_prob: probability of a visual support: another record with the same phrase.
        augment: joint augmentation; default on for the "train" split only.
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        seed: int = 0,
        *,
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
        self.path = Path(path)
        self._records, phrases = self._parse()
        labels = [r.label for r in self._records]
        self._set_items(phrases, [r.image for r in self._records], labels=labels)

    def _parse(self) -> tuple[list[_Record], list[str]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DatasetError(f"{self.path}: cannot read the manifest: {exc}") from exc
        records: list[_Record] = []
        phrases: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                record, phrase = self._parse_line(line, number)
                records.append(record)
                phrases.append(phrase)
        if not records:
            raise DatasetError(f"{self.path}: the manifest has no records")
        return records, phrases

    def _parse_line(self, line: str, number: int) -> tuple[_Record, str]:
        where = f"{self.path}: line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: expected a JSON object, got {type(data).__name__}")
        missing = [k for k in _KEYS if k not in data]
        if missing:
            raise DatasetError(f"{where}: missing key(s) {', '.join(missing)}")
        bad = [k for k in _KEYS if not isinstance(data[k], str) or not data[k].strip()]
        if bad:
            raise DatasetError(f"{where}: {', '.join(bad)} must be non-empty strings")
        label = data.get("class")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise DatasetError(f"{where}: class must be a non-empty string")
        root = self.path.parent
        record = _Record(number, root / data["image"], root / data["mask"], label)
        return record, " ".join(data["phrase"].split())

    def _load(self, index: int) -> tuple[Image.Image, np.ndarray, str]:
        record = self._records[index]
        where = f"{self.path}: line {record.line}"
        image = read_image(record.image, where)
        mask = read_mask(record.mask, where)
        if mask.shape != (image.height, image.width):
            raise DatasetError(
                f"{where}: mask {record.mask} is {mask.shape[1]}x{mask.shape[0]} but image "
                f"{record.image} is {image.width}x{image.height}"
            )
        return image, mask, where
