"""Training configuration: the paper's recipe as defaults, every knob a flag or a file key."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Defaults follow CLIPSeg's training recipe (frozen CLIP, AdamW 1e-3 cosine to 1e-4,
    batch 64, 20k iterations, BCE with logits, mixed precision on CUDA)."""

    # Data
    dataset: str = "synthetic"  # synthetic | manifest | coco | phrasecut
    data: str = ""  # root folder or file (manifest JSONL, COCO JSON); unused for synthetic
    train_split: str = "train"
    val_split: str = "val"
    dataset_options: dict[str, Any] = field(default_factory=dict)
    val_dataset_options: dict[str, Any] = field(default_factory=dict)
    num_workers: int = 2
    # Model
    init: str = "random:tiny"  # any weights source: CIDAS/clipseg-rd64-refined, a .pth, ...
    variant: str | None = None
    backbone: str = "openai"
    fresh_decoder: bool = False  # re-initialise the decoder instead of fine-tuning it
    include_backbone: bool = False  # write the backbone into exported checkpoints
    # Optimisation
    steps: int = 20_000
    batch_size: int = 64  # global: micro-batch x accumulate x world size
    accumulate: int = 1
    lr: float = 1e-3
    lr_min: float = 1e-4
    weight_decay: float = 0.01
    mix_max: float = 0.5  # text/visual mixing weight w ~ U(0, mix_max) when a support exists
    amp: str = "auto"  # auto (bf16/fp16 on CUDA, off on CPU) | off | bf16 | fp16
    device: str = "auto"
    seed: int = 0
    # Bookkeeping
    output: str = "runs/clipseg"
    log_every: int = 20
    eval_every: int = 1000
    eval_samples: int = 500
    checkpoint_every: int = 1000
    resume: str | None = None  # a run folder or a training-state file

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
        description="Train the CLIPSeg decoder (frozen CLIP). Flags override --config.",
    )
    parser.add_argument("--config", help="JSON file with any of the options below")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = _flag_type(f)
        if kind is None:  # booleans
            parser.add_argument(name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(name, type=kind, default=None, help=f"default: {default!r}")
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
