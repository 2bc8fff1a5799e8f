"""Our own checkpoint format: a directory the service and CLI load directly.

    <dir>/config.json          {"format": "clipseg-serve", "format_version": 1,
                                "model": <ClipSegConfig>, "backbone": {"source": ...},
                                "metrics": {...}}
    <dir>/decoder.safetensors  decoder weights (a few MB)
    <dir>/backbone.safetensors only when backbone.source == "included"

The backbone is frozen during training, so by default only its source is recorded
("openai", an HF CLIPSeg checkpoint id or directory, or "random:<seed>") and it is
rebuilt from there; small or unusual backbones can be included instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.network.clipseg import ClipSeg

FORMAT = "clipseg-serve"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
DECODER_FILE = "decoder.safetensors"
BACKBONE_FILE = "backbone.safetensors"


def is_native_checkpoint(path: Path) -> bool:
    config = path / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT
    except (json.JSONDecodeError, AttributeError):
        return False


def read_native_config(path: Path) -> dict[str, Any]:
    """The checkpoint's config.json, validated."""
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"cannot read {path / CONFIG_FILE}: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise WeightsError(f"{path} is not a {FORMAT} checkpoint")
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(
            f"{path} has format_version {meta.get('format_version')}; "
            f"this version reads {FORMAT_VERSION}"
        )
    if "model" not in meta or "backbone" not in meta:
        raise WeightsError(f"{path / CONFIG_FILE} lacks the 'model' or 'backbone' section")
    return meta


def model_config_of(meta: dict[str, Any], path: Path) -> ClipSegConfig:
    try:
        return ClipSegConfig.from_dict(meta["model"])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f"invalid model config in {path / CONFIG_FILE}: {exc}") from exc


def _cpu_float32(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    model: ClipSeg,
    path: str | Path,
    *,
    backbone_source: str,
    include_backbone: bool = False,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    config: ClipSegConfig | None = None,
) -> Path:
    """Write ``model`` as a checkpoint directory; returns its path.

    ``backbone_source`` records where the frozen backbone comes from; with
    ``include_backbone`` its weights are written too and the source becomes "included".
    ``config`` overrides ``model.config`` in the file (e.g. a calibrated threshold).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(_cpu_float32(model.decoder), str(path / DECODER_FILE))
    if include_backbone:
        save_file(_cpu_float32(model.clip), str(path / BACKBONE_FILE))
        backbone_source = "included"
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": (config or model.config).to_dict(),
        "backbone": {"source": backbone_source},
        "metrics": metrics or {},
        **(extra or {}),
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path
