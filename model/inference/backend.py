"""What a ``Predictor`` runs: the interface ``ClipSeg`` (torch) and ``OnnxClipSeg`` (ONNX
Runtime) both provide, and what a loaded model says about where it came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.network.text import Template


class Backend(Protocol):
    """A CLIPSeg network on one device.

    ``backend_name``: "torch" or "onnx" (for /info). ``fixed_precision``: the arithmetic
    the backend itself fixes ("float32", "int8": ONNX graphs), or None when the predictor
    chooses it (autocast around a torch module). ``home_device``: the device the backend
    was built for (ONNX Runtime's providers), or None: any. ``compiled_tower``: a compiled
    stand-in for ``image_features`` (torch only; None: eager or not applicable).
    """

    backend_name: str
    fixed_precision: str | None
    home_device: torch.device | None
    config: ClipSegConfig
    compiled_tower: Callable[[torch.Tensor], list[torch.Tensor]] | None

    def to(self, device: torch.device | str) -> Backend: ...

    def eval(self) -> Backend: ...

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """float32 [B, 3, S, S] normalised -> the decoder's taps."""
        ...

    def embed_phrases(
        self, phrases: Sequence[str], template: Template | str = Template.NONE
    ) -> torch.Tensor:
        """Text prompts -> float32 [N, D]."""
        ...

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Engineered supports [K, 3, S, S] -> [K, D]."""
        ...

    def __call__(
        self,
        images: torch.Tensor,
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images [B, 3, S, S], conditionals [P, D], image_index [P] -> logits [P, S, S]."""
        ...

    def description(self) -> dict[str, Any]:
        """Backend-specific facts for /info (ONNX: providers, int8 decision); may be {}."""
        ...


class Provenance(Protocol):
    """Where a model came from (``LoadedModel``, ``LoadedOnnx``): for /info and logs."""

    kind: str
    source: str
    files: list[Path]
