"""One entry point for every weights source.

random / random:<variant>         random init (tests, offline smoke runs; meaningless masks)
<dir with our config.json>        our checkpoint (training output)
<dir with HF config.json>         a transformers CLIPSeg checkpoint on disk
<file>.pth                        an official decoder file (+ backbone weights)
CIDAS/clipseg-rd64-refined        a HuggingFace hub id (downloaded or from the HF cache)
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipseg_serve.model.config import DEFAULT_VARIANT, ClipSegConfig, get_variant
from clipseg_serve.model.errors import WeightsError, WeightsUnavailableError
from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.weights import hf, hub, native, official
from clipseg_serve.model.weights.files import read_state_dict
from clipseg_serve.model.weights.strict import load_strict

log = logging.getLogger(__name__)

RANDOM_WARNING = (
    "RANDOM WEIGHTS: this model was initialised at random; its masks are meaningless. "
    "Use it only for tests and smoke runs."
)
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class LoadedModel:
    """A model in eval mode plus where it came from (for /info and logs)."""

    model: ClipSeg
    kind: str  # "random" | "native" | "hf" | "official"
    source: str
    files: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    #: How to rebuild the (frozen) backbone, as recorded in checkpoints trained from here:
    #: "openai", an HF id/dir, "random:<seed>", or "included" (must be written along).
    backbone_source: str = "included"


def build_random(config: ClipSegConfig, seed: int = 0) -> ClipSeg:
    """A model with seeded random weights (same seed, same torch -> same weights)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ClipSeg(config)


def load_model(
    source: str | Path,
    *,
    variant: str | None = None,
    backbone: str = "openai",
) -> LoadedModel:
    """Load a CLIPSeg model from any supported source (see the module docstring).

    Args:
        source: the weights source.
        variant: expected/selected variant; for ``random`` it picks the architecture,
            elsewhere a mismatch with the checkpoint is an error.
        backbone: for official decoder files without CLIP weights: "openai" (open_clip's
            OpenAI ViT-B/16 weights, downloaded once) or a local weights file.
    """
    text = str(source)
    if text == "random" or text.startswith("random:"):
        name = text.partition(":")[2] or variant or DEFAULT_VARIANT
        # A log record, not also warnings.warn: the service routes warnings into the log,
        # so both would print the same line twice. Without any logging set up, Python's
        # last-resort handler still prints it to stderr.
        log.warning(RANDOM_WARNING)
        model = build_random(get_variant(name))
        return _finish(LoadedModel(model, "random", f"random:{name}", backbone_source="random:0"))
    path = Path(source).expanduser()
    if path.is_dir():
        if native.is_native_checkpoint(path):
            return _finish(_load_native(path, variant))
        return _finish(_load_hf_dir(path, variant, str(path)))
    if path.is_file():
        return _finish(_load_official(path, variant, backbone))
    if path.suffix or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise WeightsUnavailableError(
            text, "no such file or directory, and not a hub id (owner/name) either"
        )
    return _finish(_load_hf_dir(_download_hub(text), variant, text))


def _finish(loaded: LoadedModel) -> LoadedModel:
    loaded.model.eval()
    return loaded


def _check_variant(config: ClipSegConfig, variant: str | None, what: str) -> None:
    if variant is not None and variant != config.variant:
        raise WeightsError(f"{what} is variant {config.variant!r}, not the requested {variant!r}")


def _load_native(path: Path, variant: str | None) -> LoadedModel:
    meta = native.read_native_config(path)
    config = native.model_config_of(meta, path)
    _check_variant(config, variant, str(path))
    model = ClipSeg(config)
    decoder_file = path / native.DECODER_FILE
    load_strict(model.decoder, read_state_dict(decoder_file), str(decoder_file))
    files = [decoder_file]
    source = str(meta["backbone"].get("source", ""))
    if source == "included":
        backbone_file = path / native.BACKBONE_FILE
        load_strict(model.clip, read_state_dict(backbone_file), str(backbone_file))
        files.append(backbone_file)
    elif source.startswith("random:"):
        seed = int(source.partition(":")[2] or 0)
        load_strict(model.clip, build_random(config, seed).clip.state_dict(), source)
    else:
        load_strict(model.clip, backbone_state(source, config), f"backbone {source!r}")
    # An included backbone lives in this checkpoint only: a derived one must include it too.
    return LoadedModel(
        model, "native", str(path), files, dict(meta.get("metrics", {})), backbone_source=source
    )


def _load_hf_dir(path: Path, variant: str | None, source: str) -> LoadedModel:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise WeightsError(f"{path} has no config.json: not a CLIPSeg checkpoint directory")
    try:
        config = hf.config_from_hf(json.loads(config_file.read_text()))
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{config_file} is not valid JSON: {exc}") from exc
    _check_variant(config, variant, source)
    weights = _hf_weights_file(path)
    model = ClipSeg(config)
    load_strict(model, hf.convert_hf_state_dict(read_state_dict(weights)), str(weights))
    return LoadedModel(model, "hf", source, [weights], backbone_source=source)


def _hf_weights_file(path: Path) -> Path:
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise WeightsError(f"{path} has none of {', '.join(HF_WEIGHT_FILES)}")


def _download_hub(repo_id: str) -> Path:
    return hub.download(repo_id, ["config.json", *HF_WEIGHT_FILES])


def _load_official(path: Path, variant: str | None, backbone: str) -> LoadedModel:
    state = read_state_dict(path)
    config = official.config_for_official(state, variant)
    decoder_state, clip_state = official.split_official_state_dict(state)
    model = ClipSeg(config)
    load_strict(model.decoder, decoder_state, str(path))
    if clip_state:
        load_strict(model.clip, clip_state, f"{path} (clip_model.*)")
        backbone = "included"
    else:
        load_strict(model.clip, backbone_state(backbone, config), f"backbone {backbone!r}")
    return LoadedModel(model, "official", str(path), [path], backbone_source=backbone)


def backbone_state(source: str, config: ClipSegConfig) -> dict[str, torch.Tensor]:
    """open_clip-keyed CLIP tensors from "openai", a weights file, or an HF checkpoint."""
    if source == "openai":
        return _openai_backbone(config)
    path = Path(source).expanduser()
    if path.is_file():
        return read_state_dict(path)
    loaded = _load_hf_dir(path if path.is_dir() else _download_hub(source), None, source)
    return loaded.model.clip.state_dict()


def _openai_backbone(config: ClipSegConfig) -> dict[str, torch.Tensor]:
    if config.backbone.name != "ViT-B-16":
        raise WeightsError(f"OpenAI weights exist for ViT-B-16, not {config.backbone.name!r}")
    try:
        import open_clip

        with _open_clip_logs_at_debug():
            clip = open_clip.create_model("ViT-B-16", pretrained="openai", force_quick_gelu=True)
    except Exception as exc:
        cause = hub.unavailable_cause(exc, "OpenAI CLIP ViT-B/16 (through open_clip)")
        if cause is not None:
            raise WeightsUnavailableError("openai", cause) from exc
        raise WeightsError(f"cannot load OpenAI ViT-B/16 weights through open_clip: {exc}") from exc
    return clip.state_dict()


class _DemoteOpenClip(logging.Filter):
    """Re-logs open_clip's root-logger records at DEBUG under this module's logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "open_clip" not in record.pathname:
            return True
        log.debug("open_clip: %s", record.getMessage())
        return False


@contextlib.contextmanager
def _open_clip_logs_at_debug() -> Iterator[None]:
    """open_clip logs through the root logger: INFO chatter, and an ERROR for a failed
    download that we re-raise as one error with its fixes. Both would break the one-line
    first start, so they go to DEBUG while open_clip runs."""
    root = logging.getLogger()
    demote = _DemoteOpenClip()
    root.addFilter(demote)
    try:
        yield
    finally:
        root.removeFilter(demote)
