"""Training datasets behind one factory, ``build_dataset(kind, root_or_path, split, seed)``.

Kinds and where their data lives:

* ``synthetic``: coloured shapes generated on the fly (``root_or_path`` is ignored).
* ``manifest``: a JSONL file, or a folder holding ``<split>.jsonl``.
* ``coco``: a COCO instances JSON (images in ``image_dir``, default its folder), or a
  COCO root with ``annotations/instances_<split>.json`` and images in ``<split>/``.
* ``phrasecut``: the VGPhraseCut_v0 folder (``refer_<split>.json``, ``images/``).

Options are the keyword arguments of the dataset's class (``negative_prob``,
``template_prob``, ``support_prob``, ``augment``, ...); an unknown one is a ValueError.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipseg_serve.training.data import SampleDataset
from clipseg_serve.training.datasets.augment import Augmentation
from clipseg_serve.training.datasets.coco import CocoDataset
from clipseg_serve.training.datasets.manifest import ManifestDataset
from clipseg_serve.training.datasets.phrasecut import PHRASECUT_PLUS, PhraseCutDataset
from clipseg_serve.training.datasets.synthetic import SyntheticShapes

__all__ = [
    "DATASET_KINDS",
    "PHRASECUT_PLUS",
    "Augmentation",
    "CocoDataset",
    "ManifestDataset",
    "PhraseCutDataset",
    "SyntheticShapes",
    "build_dataset",
]


def _synthetic(root: str, split: str, seed: int, **options: Any) -> SampleDataset:
    return SyntheticShapes(seed=seed, split=split, **options)


def _manifest(root: str, split: str, seed: int, **options: Any) -> SampleDataset:
    path = Path(root)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    return ManifestDataset(path, split, seed, **options)


def _coco(root: str, split: str, seed: int, **options: Any) -> SampleDataset:
    path = Path(root)
    if path.is_dir():  # the official layout: annotations/instances_<split>.json + <split>/
        options.setdefault("image_dir", path / split)
        path = path / "annotations" / f"instances_{split}.json"
    return CocoDataset(path, split=split, seed=seed, **options)


def _phrasecut(root: str, split: str, seed: int, **options: Any) -> SampleDataset:
    return PhraseCutDataset(root, split, seed, **options)


#: kind -> (builder, the class whose keyword arguments are the kind's options).
_KINDS: dict[str, tuple[Callable[..., SampleDataset], type]] = {
    "synthetic": (_synthetic, SyntheticShapes),
    "manifest": (_manifest, ManifestDataset),
    "coco": (_coco, CocoDataset),
    "phrasecut": (_phrasecut, PhraseCutDataset),
}
DATASET_KINDS: tuple[str, ...] = tuple(_KINDS)

#: Filled in by the factory itself, never options.
_POSITIONAL = {"self", "path", "root", "annotation_file", "split", "seed"}


def _option_names(cls: type) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - _POSITIONAL


def build_dataset(
    kind: str, root_or_path: str, split: str, seed: int, **options: Any
) -> SampleDataset:
    """The ``kind`` dataset of ``split`` at ``root_or_path`` (see the module docstring).

    Raises:
        ValueError: unknown kind or option (``DatasetError``, a ValueError, for bad data).
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; use one of: {', '.join(_KINDS)}")
    builder, cls = _KINDS[kind]
    unknown = sorted(set(options) - _option_names(cls))
    if unknown:
        known = ", ".join(sorted(_option_names(cls)))
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for dataset {kind!r}; known: {known}"
        )
    return builder(str(root_or_path), split, seed, **options)
