"""Model configuration and the registry of named variants.

A ``ClipSegConfig`` fully describes the module to build: the CLIP backbone's dimensions
(so a tiny random backbone works exactly like ViT-B/16), the decoder, and the
pre/post-processing constants that belong to the weights (input size, mean/std,
threshold). Configs are plain data and round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Threshold used when a checkpoint carries no calibrated one. CLIPSeg's probabilities are
#: poorly calibrated around 0.5; 0.4 is a common, documented middle ground.
DEFAULT_THRESHOLD = 0.4


@dataclass(frozen=True)
class BackboneConfig:
    """Dimensions of an open_clip CLIP model (vision ViT + causal text transformer).

    ``image_size`` is the pre-training resolution: it fixes the positional-embedding grid
    (224 / 16 = 14x14 for ViT-B/16), which is resized bicubically to the input grid.
    """

    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float = 4.0
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    context_length: int = 77
    vocab_size: int = 49408

    def open_clip_kwargs(self) -> dict[str, Any]:
        """Arguments for ``open_clip.model.CLIP`` (QuickGELU is passed separately)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "width": self.width,
                "layers": self.layers,
                "head_width": self.width // self.heads,
                "mlp_ratio": self.mlp_ratio,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": self.vocab_size,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }


VIT_B_16 = BackboneConfig(
    name="ViT-B-16",
    embed_dim=512,
    image_size=224,
    patch_size=16,
    width=768,
    layers=12,
    heads=12,
)

#: A backbone small enough for CPU tests in seconds. The text vocabulary stays CLIP's so
#: the real tokenizer works unchanged; patch 16 keeps the decoder head's shapes real.
TINY_BACKBONE = BackboneConfig(
    name="tiny",
    embed_dim=32,
    image_size=64,
    patch_size=16,
    width=48,
    layers=5,
    heads=2,
    text_width=32,
    text_heads=2,
    text_layers=2,
)


@dataclass(frozen=True)
class ClipSegConfig:
    """Everything needed to build a CLIPSeg module and feed it correctly.

    The decoder's widths are derived from ``backbone`` (``backbone.width`` for the reduce
    projections, ``backbone.embed_dim`` for the FiLM conditioning), never hard-coded.
    """

    variant: str
    backbone: BackboneConfig = VIT_B_16
    reduce_dim: int = 64
    decoder_heads: int = 4
    decoder_ffn_dim: int = 2048
    decoder_dropout: float = 0.1
    refined: bool = True
    extract_layers: tuple[int, ...] = (3, 6, 9)
    cond_layer: int = 0
    input_size: int = 352
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    threshold: float = DEFAULT_THRESHOLD
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.extract_layers:
            raise ValueError("extract_layers must name at least one backbone block")
        if max(self.extract_layers) >= self.backbone.layers or min(self.extract_layers) < 0:
            raise ValueError(
                f"extract_layers {self.extract_layers} out of range for a backbone with "
                f"{self.backbone.layers} blocks"
            )
        if self.input_size % self.backbone.patch_size:
            raise ValueError(
                f"input_size {self.input_size} is not a multiple of the patch size "
                f"{self.backbone.patch_size}"
            )
        if self.refined and self.backbone.patch_size % 4:
            raise ValueError("the refined head needs a patch size divisible by 4")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} is not in [0, 1]")

    @property
    def grid_size(self) -> int:
        """Side of the patch grid at ``input_size`` (22 for ViT-B/16 at 352)."""
        return self.input_size // self.backbone.patch_size

    @property
    def last_query_block(self) -> int:
        """Deepest block the query path needs; blocks after it are skipped."""
        return max(self.extract_layers)

    def replace(self, **changes: Any) -> ClipSegConfig:
        """A copy with ``changes`` applied (configs are immutable)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``from_dict`` inverts it."""
        data = dataclasses.asdict(self)
        data["extract_layers"] = list(self.extract_layers)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClipSegConfig:
        """Build from ``to_dict`` output; unknown keys are an error, not silently dropped."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        backbone = data.pop("backbone", None)
        if isinstance(backbone, dict):
            backbone_fields = {f.name for f in dataclasses.fields(BackboneConfig)}
            bad = sorted(set(backbone) - backbone_fields)
            if bad:
                raise ValueError(f"unknown backbone config keys: {bad}")
            data["backbone"] = BackboneConfig(**backbone)
        elif backbone is not None:
            data["backbone"] = BackboneConfig(**dataclasses.asdict(get_backbone(str(backbone))))
        for key in ("extract_layers", "mean", "std"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**data)


_BACKBONES: dict[str, BackboneConfig] = {}
_VARIANTS: dict[str, ClipSegConfig] = {}

DEFAULT_VARIANT = "rd64-refined"


def register_backbone(backbone: BackboneConfig) -> None:
    """Make ``backbone`` available by name (overwrites an existing entry)."""
    _BACKBONES[backbone.name] = backbone


def register_variant(config: ClipSegConfig) -> None:
    """Make ``config`` available by its variant name (overwrites an existing entry)."""
    _VARIANTS[config.variant] = config


def get_backbone(name: str) -> BackboneConfig:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(_BACKBONES)}") from None


def get_variant(name: str) -> ClipSegConfig:
    """The registered config named ``name`` (``rd64-refined``, ``rd64``, ``rd16``, ``tiny``...)."""
    try:
        return _VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(_VARIANTS)}") from None


def list_variants() -> list[str]:
    return sorted(_VARIANTS)


register_backbone(VIT_B_16)
register_backbone(TINY_BACKBONE)
register_variant(ClipSegConfig(variant="rd64-refined", refined=True, reduce_dim=64))
register_variant(ClipSegConfig(variant="rd64", refined=False, reduce_dim=64))
register_variant(ClipSegConfig(variant="rd16", refined=False, reduce_dim=16))
register_variant(
    ClipSegConfig(
        variant="tiny",
        backbone=TINY_BACKBONE,
        reduce_dim=16,
        decoder_heads=2,
        decoder_ffn_dim=32,
        refined=True,
        extract_layers=(1, 2, 3),
        input_size=96,
    )
)
