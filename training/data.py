"""The one interface every training dataset implements.

A dataset yields ``Sample`` objects: a PIL RGB query image, its boolean target mask at
the image's size, the prompt phrase (template already applied when the dataset samples
templates), optionally a visual support (image + mask) for text/visual mixing, and
whether it is a negative (a phrase not in the image, all-zero target).

Randomness (augmentation, negatives, templates, supports) comes only from
``sample_rng(seed, epoch, index)``, so a sample depends on nothing but those three
numbers: identical across DataLoader workers, processes (DDP) and resumed runs.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


@dataclass
class Support:
    """A visual prompt: a PIL RGB image and its bool mask [H, W] (same size, non-empty)."""

    image: Image.Image
    mask: np.ndarray


@dataclass
class Sample:
    """One training/evaluation example.

    image: PIL RGB. mask: bool [H, W] at the image's size (all False for negatives).
    phrase: the text prompt fed to CLIP. support: optional visual prompt of the same
    phrase (another example). source: where it came from (file + record) for messages.
    label: the sample's class for the evaluation's mIoU (``training.metrics``), or None
    when the dataset has no classes.
    """

    image: Image.Image
    mask: np.ndarray
    phrase: str
    support: Support | None = None
    is_negative: bool = False
    source: str = ""
    label: Hashable | None = None


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The only source of per-sample randomness (see the module docstring)."""
    return np.random.default_rng([seed, epoch, index])


class SampleDataset(Dataset):
    """Base class: subclasses implement ``__len__`` and ``get(index, rng)``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> Sample:
        return self.get(index, sample_rng(self.seed, self.epoch, index))

    def get(self, index: int, rng: np.random.Generator) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError


class DatasetError(ValueError):
    """Malformed annotations or files; the message names the file and the record."""
