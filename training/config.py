"""Training configuration: the paper's recipe as defaults, every knob a flag or a file key.

Imports only the standard library: ``clipseg-train --help`` builds its parser from here
before torch is imported. Each field's help text is its ``metadata["help"]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipseg_serve.training.cli import (
    BACKBONE_HELP,
    DATASET_HELP,
    DATASET_KINDS,
    DEVICE_HELP,
    VARIANT_HELP,
)


def _opt(default: Any, help_text: str, **kwargs: Any) -> Any:
    """A config field with its ``--flag`` help text."""
    return field(default=default, metadata={"help": help_text, **kwargs})


INIT_HELP = (
    "where the weights start. clip (default): the paper's recipe, a fresh decoder "
    "(--variant, default rd64) on the frozen CLIP backbone of --backbone (default openai: "
    "OpenAI's ViT-B/16, downloaded once like the service's weights; offline it needs a "
    "cached copy or a local --backbone file). Or any weights source to fine-tune: "
    "CIDAS/clipseg-rd64-refined, a checkpoint folder (runs/x/best), an official decoder "
    ".pth. random:tiny: a tiny random model for smoke tests (meaningless masks)."
)


@dataclass
class TrainConfig:
    """Defaults follow CLIPSeg's training recipe (frozen OpenAI CLIP ViT-B/16, fresh rd64
    decoder, AdamW 1e-3 cosine to 1e-4, batch 64, 20k iterations, BCE with logits, mixed
    precision on CUDA)."""

    # Data
    dataset: str = _opt("synthetic", DATASET_HELP, choices=DATASET_KINDS)
    data: str = _opt("", "dataset root folder or file (see --dataset); unused for synthetic")
    train_split: str = _opt("train", "split to train on. Default: %(default)s")
    val_split: str = _opt("val", "split to validate on. Default: %(default)s")
    dataset_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "dataset options as JSON, e.g. '{\"negative_prob\": 0.2}' (keyword "
            "arguments of the dataset class; PhraseCut's train split defaults to PhraseCut+ "
            "sampling)"
        },
    )
    val_dataset_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "options for the validation split only, as JSON, over --dataset-options "
            "(augmentation is off there unless asked for)"
        },
    )
    num_workers: int = _opt(2, "DataLoader worker processes per rank. Default: %(default)s")
    # Model
    init: str = _opt("clip", INIT_HELP)
    variant: str | None = _opt(None, VARIANT_HELP.replace("%(default)s", "rd64 for clip"))
    backbone: str = _opt("openai", BACKBONE_HELP)
    fresh_decoder: bool = _opt(
        False, "re-initialise the decoder of --init weights instead of fine-tuning it"
    )  # fmt: skip
    include_backbone: bool = _opt(
        False, "write the backbone into exported checkpoints (~600 MB) instead of naming "
        "its source"
    )  # fmt: skip
    # Optimisation
    steps: int = _opt(20_000, "optimizer steps. Default: %(default)s")
    batch_size: int = _opt(
        64, "global batch: micro-batch x --accumulate x ranks. Default: %(default)s"
    )  # fmt: skip
    accumulate: int = _opt(1, "gradient accumulation micro-steps per step. Default: %(default)s")
    lr: float = _opt(1e-3, "AdamW learning rate at the start. Default: %(default)s")
    lr_min: float = _opt(1e-4, "learning rate at the end of the cosine. Default: %(default)s")
    weight_decay: float = _opt(0.01, "AdamW weight decay. Default: %(default)s")
    mix_max: float = _opt(
        0.5, "text/visual mixing weight w ~ U(0, mix_max) for samples with a visual support. "
        "Default: %(default)s"
    )  # fmt: skip
    amp: str = _opt(
        "auto", "mixed precision: auto (bf16, else fp16, on CUDA; off on CPU), off, bf16, "
        "fp16. Default: %(default)s", choices=("auto", "off", "bf16", "fp16")
    )  # fmt: skip
    device: str = _opt("auto", DEVICE_HELP)
    seed: int = _opt(0, "seed of the data order, sampling and decoder init. Default: %(default)s")
    # Bookkeeping
    output: str = _opt(
        "runs/clipseg", "run folder (best/, final/, logs, state/). Default: %(default)s"
    )  # fmt: skip
    log_every: int = _opt(20, "log the loss every N steps. Default: %(default)s")
    eval_every: int = _opt(
        1000, "validate every N steps (and at the end); 0: never, then final/ and best/ carry "
        "no metrics and no calibrated threshold. Default: %(default)s"
    )  # fmt: skip
    eval_samples: int = _opt(500, "validation samples per evaluation. Default: %(default)s")
    checkpoint_every: int = _opt(
        1000, "write the resumable state/last.pt every N steps. Default: %(default)s"
    )  # fmt: skip
    resume: str | None = _opt(None, "continue a run: its folder or a training-state file")

    def validate(self, world_size: int = 1) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.accumulate < 1:
            raise ValueError("steps, batch_size and accumulate must be >= 1")
        if self.batch_size % (self.accumulate * world_size):
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by accumulate x world size "
                f"({self.accumulate} x {world_size})"
            )
        if not 0.0 <= self.mix_max <= 1.0:
            raise ValueError("mix_max must be in [0, 1]")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp must be auto, off, bf16 or fp16, not {self.amp!r}")

    def micro_batch(self, world_size: int = 1) -> int:
        return self.batch_size // (self.accumulate * world_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag_type(f: dataclasses.Field) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else None
    if isinstance(default, bool):
        return None
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if f.name in ("dataset_options", "val_dataset_options"):
        return json.loads
    return str


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clipseg-train",
        description="Train the CLIPSeg decoder on a frozen CLIP backbone; the defaults are "
        "the paper's recipe. Flags override --config; run under torchrun for DDP.",
    )
    parser.add_argument("--config", help="JSON file with any of the options below (as keys)")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata["help"].replace("%(default)s", str(default))
        kind = _flag_type(f)
        if kind is None:  # booleans
            parser.add_argument(
                name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(name, type=kind, default=None, choices=choices, help=help_text)
    return parser


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < --config file < command-line flags."""
    args = vars(build_parser().parse_args(argv))
    config_file = args.pop("config")
    values: dict[str, Any] = json.loads(Path(config_file).read_text()) if config_file else {}
    return _merge(values, args)


def _merge(values: dict[str, Any], args: dict[str, Any]) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown training options in the config file: {unknown}")
    values.update({k: v for k, v in args.items() if v is not None and k in known})
    return TrainConfig(**values)
