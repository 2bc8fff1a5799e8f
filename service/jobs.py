"""What travels through the batching queue: ready tensors in, masks out."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from model.postprocess import Combine
from model.text import Template


@dataclass
class JobResult:
    """Masks for one request, on the CPU.

    masks: bool [M, H, W]; probabilities: float32 [M, H, W] matching the masks (a
    prompt's own map, or the max/min over prompts for union/intersection);
    scores: float32 [M], max probability of each map.
    """

    masks: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    labels: list[str]
    threshold: float
    model_seconds: float = 0.0


@dataclass
class SegmentJob:
    """One request's work for the model thread.

    pixels: float32 [3, S, S] normalised query image; image_key identifies identical
    uploads so a batch runs each distinct image through the backbone once.
    prompts / negative_prompts: text prompts (template applied on the model thread).
    supports: float32 [K, 3, S, S] engineered visual prompts (k-shot mean), or None.
    text_weight: with supports and one prompt, the hybrid weight of the text.
    """

    pixels: torch.Tensor
    size: tuple[int, int]
    image_key: str
    prompts: list[str]
    negative_prompts: list[str] = field(default_factory=list)
    template: Template = Template.NONE
    supports: torch.Tensor | None = None
    text_weight: float | None = None
    threshold: float = 0.4
    combine: Combine = Combine.NONE
    deadline: float = float("inf")  # time.monotonic() value
    enqueued_at: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None

    @property
    def positive_rows(self) -> int:
        """Decoder rows of positive masks: one visual/hybrid row, or one per prompt."""
        return 1 if self.supports is not None else len(self.prompts)

    @property
    def rows(self) -> int:
        return self.positive_rows + len(self.negative_prompts)

    def abandoned(self, now: float) -> bool:
        """Past its deadline, or its client is gone (the future was cancelled)."""
        return now >= self.deadline or (self.future is not None and self.future.done())
