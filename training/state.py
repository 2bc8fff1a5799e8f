"""Resumable training state and exported checkpoints.

``<output>/state/last.pt`` holds everything needed to continue exactly: decoder weights,
optimizer, scheduler, step, and the torch RNG states (decoder dropout). It is written with
tensors and plain containers only, so it loads with ``weights_only=True``.
Exported checkpoints (``<output>/best``, ``<output>/final``) are the service's format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.weights.native import save_checkpoint

STATE_DIR = "state"
STATE_FILE = "last.pt"


def state_path(output: str | Path) -> Path:
    return Path(output) / STATE_DIR / STATE_FILE


def save_state(
    path: Path,
    model: ClipSeg,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    extra: dict[str, Any],
) -> None:
    """Atomically write the training state (a crash never leaves a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step,
        "decoder": model.decoder.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "extra": json.dumps(extra),
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(
    source: str | Path,
    model: ClipSeg,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, dict[str, Any]]:
    """Restore from a run folder or a state file; returns (step, extra)."""
    path = Path(source)
    if path.is_dir():
        path = state_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no training state at {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.decoder.load_state_dict(state["decoder"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    return int(state["step"]), json.loads(state["extra"])


def export(
    model: ClipSeg,
    path: Path,
    *,
    backbone_source: str,
    include_backbone: bool,
    threshold: float | None,
    metrics: dict[str, Any],
    train_config: dict[str, Any],
) -> Path:
    """Write a checkpoint the service loads with ``CLIPSEG_WEIGHTS=<path>``."""
    config = model.config
    if threshold is not None:
        config = config.replace(threshold=float(threshold))
    return save_checkpoint(
        model,
        path,
        backbone_source=backbone_source,
        include_backbone=include_backbone or backbone_source == "included",
        metrics=metrics,
        extra={"training": train_config},
        config=config,
    )
