"""Samples -> model-ready tensors, with the model's own preprocessing (no second copy).

The epoch stream turns a finite dataset into an endless, resumable sequence: virtual
index ``v = epoch * len + i`` names sample ``i`` of ``epoch``; each epoch is a seeded
permutation, split across DDP ranks, and a resumed run skips what was already consumed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.imaging.transforms import to_model_input
from clipseg_serve.model.imaging.visual_prompt import engineer_support_image
from clipseg_serve.training.data import Sample, SampleDataset, sample_rng


class EpochStream(Dataset):
    """Maps a virtual index to (epoch, index) of ``base``; see the module docstring."""

    def __init__(self, base: SampleDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, virtual: int) -> Sample:
        epoch, index = divmod(int(virtual), len(self.base))
        return self.base.get(index, sample_rng(self.base.seed, epoch, index))


class StreamSampler(Sampler[int]):
    """Endless virtual indices: per epoch a permutation seeded by (seed, epoch); rank r of
    w takes every w-th; the first ``skip`` indices of this rank are skipped (resume)."""

    def __init__(self, length: int, seed: int, rank: int = 0, world: int = 1, skip: int = 0):
        self.length, self.seed, self.rank, self.world, self.skip = length, seed, rank, world, skip

    def __iter__(self) -> Iterator[int]:
        per_rank = self.length // self.world  # drop the tail so ranks stay in step
        if per_rank < 1:
            raise ValueError(
                f"dataset of {self.length} samples is too small for {self.world} ranks"
            )
        epoch, offset = divmod(self.skip, per_rank)
        while True:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.length, generator=generator)[: per_rank * self.world]
            mine = order[self.rank :: self.world].tolist()
            for index in mine[offset:]:
                yield epoch * self.length + index
            epoch, offset = epoch + 1, 0


@dataclass
class Batch:
    """images float32 [B, 3, S, S]; targets float32 [B, S, S] in [0, 1]; phrases [B];
    supports float32 [K, 3, S, S] for the rows in ``support_rows`` (int64 [K])."""

    images: torch.Tensor
    targets: torch.Tensor
    phrases: list[str]
    supports: torch.Tensor | None
    support_rows: torch.Tensor
    negatives: torch.Tensor


def image_batch(images: list, config: ClipSegConfig) -> torch.Tensor:
    """PIL images -> float32 [B, 3, S, S] with the model's own preprocessing."""
    size, mean, std = config.input_size, config.mean, config.std
    return torch.stack([to_model_input(image, size, mean, std) for image in images])


def target_tensor(mask: np.ndarray, size: int) -> torch.Tensor:
    """Bool mask [H, W] -> float32 [size, size], resized like the image (bilinear, soft)."""
    target = torch.from_numpy(mask.astype(np.float32))[None, None]
    target = torch.nn.functional.interpolate(
        target, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return target[0, 0].clamp_(0.0, 1.0)


def support_tensor(sample: Sample, config: ClipSegConfig) -> torch.Tensor:
    """The engineered visual prompt of ``sample.support``: float32 [3, S, S]."""
    assert sample.support is not None
    return engineer_support_image(sample.support.image, sample.support.mask, config)


class Collate:
    """DataLoader collate_fn (picklable for worker processes)."""

    def __init__(self, config: ClipSegConfig) -> None:
        self.config = config

    def __call__(self, samples: list[Sample]) -> Batch:
        c = self.config
        images = torch.stack(
            [to_model_input(s.image, c.input_size, c.mean, c.std) for s in samples]
        )
        targets = torch.stack([target_tensor(s.mask, c.input_size) for s in samples])
        rows = [i for i, s in enumerate(samples) if s.support is not None]
        supports = torch.stack([support_tensor(samples[i], c) for i in rows]) if rows else None
        return Batch(
            images=images,
            targets=targets,
            phrases=[s.phrase for s in samples],
            supports=supports,
            support_rows=torch.tensor(rows, dtype=torch.long),
            negatives=torch.tensor([s.is_negative for s in samples]),
        )
