"""``clipseg-train``: train the CLIPSeg decoder on a frozen CLIP backbone.

    clipseg-train --dataset phrasecut --data /datasets/phrasecut --init openai-rd64 ...
    torchrun --nproc_per_node 4 -m training.train --config run.json

Reuses the model's preprocessing (``model.transforms``), visual-prompt engineering
(``model.visual_prompt``) and forward; writes ``<output>/best`` and ``<output>/final``,
checkpoints the service loads directly, plus ``state/last.pt`` for ``--resume``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.clipseg import ClipSeg
from model.decoder import ClipSegDecoder
from model.text import tokenize
from model.weights.loader import LoadedModel, load_model

from .batching import Batch, Collate, EpochStream, StreamSampler
from .config import TrainConfig, config_from_args
from .datasets import build_dataset
from .distributed import DistInfo, barrier, init_distributed, pick_device, shutdown
from .evaluate import evaluate_dataset
from .state import export, load_state, save_state, state_path

log = logging.getLogger("clipseg.train")


class TrainingError(RuntimeError):
    """Training cannot continue (non-finite loss, bad configuration)."""


def amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """Mixed precision on CUDA: bf16 where supported (else fp16); none on CPU."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return None
    if cfg.amp == "fp16" or (cfg.amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class Trainer:
    """One training run (one process of it under torchrun)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device, 0)
        self.info: DistInfo = init_distributed(self.device)
        self.device = pick_device(cfg.device, self.info.local_rank)
        cfg.validate(self.info.world)
        torch.manual_seed(cfg.seed)
        self.loaded = self._load_model()
        self.model: ClipSeg = self.loaded.model.to(self.device)
        self.model.clip.eval()  # frozen: no dropout/grad in the backbone
        self.model.decoder.train()
        self.optimizer = torch.optim.AdamW(
            self.model.decoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, T_max=cfg.steps, eta_min=cfg.lr_min
        )
        self.amp = amp_dtype(cfg, self.device)
        self.scaler = torch.amp.GradScaler(enabled=self.amp == torch.float16)
        self.output = Path(cfg.output)
        self.step = 0
        self.best: dict[str, Any] = {}
        self.initial: dict[str, Any] = {}
        if cfg.resume:
            self.step, extra = load_state(cfg.resume, self.model, self.optimizer, self.scheduler)
            self.best, self.initial = extra.get("best", {}), extra.get("initial", {})
        self.ddp: torch.nn.Module = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    def _load_model(self) -> LoadedModel:
        cfg = self.cfg
        loaded = load_model(cfg.init, variant=cfg.variant, backbone=cfg.backbone)
        if cfg.fresh_decoder:
            loaded.model.decoder = ClipSegDecoder(loaded.model.config)
        return loaded

    # ------------------------------------------------------------------ data
    def _loader(self) -> Iterator[Batch]:
        cfg = self.cfg
        dataset = build_dataset(
            cfg.dataset, cfg.data, cfg.train_split, cfg.seed, **cfg.dataset_options
        )
        micro = cfg.micro_batch(self.info.world)
        consumed = self.step * micro * cfg.accumulate  # per rank
        sampler = StreamSampler(len(dataset), cfg.seed, self.info.rank, self.info.world, consumed)
        loader = DataLoader(
            EpochStream(dataset),
            batch_size=micro,
            sampler=sampler,
            collate_fn=Collate(self.model.config),
            num_workers=cfg.num_workers,
            # Its own generator: creating workers must not consume the global torch RNG,
            # which decoder dropout uses and a resume restores.
            generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=cfg.num_workers > 0,
            pin_memory=self.device.type == "cuda",
        )
        return iter(loader)

    def _val_dataset(self):
        cfg = self.cfg
        options = {**cfg.dataset_options, **cfg.val_dataset_options}
        options.setdefault("augment", False)
        return build_dataset(cfg.dataset, cfg.data, cfg.val_split, cfg.seed, **options)

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def _conditionals(self, batch: Batch, micro_index: int) -> torch.Tensor:
        """Text embeddings; rows with a support become w*text + (1-w)*visual."""
        model, device = self.model, self.device
        with torch.no_grad(), self._autocast():
            cond = model.embed_text(tokenize(batch.phrases).to(device)).float()
            if batch.supports is not None:
                visual = model.embed_images(batch.supports.to(device)).float()
                # w drawn from (seed, step, micro-batch, rank): identical after a resume.
                seed = hash((self.cfg.seed, self.step, micro_index, self.info.rank)) % 2**63
                generator = torch.Generator().manual_seed(seed)
                w = torch.rand(len(batch.support_rows), 1, generator=generator) * self.cfg.mix_max
                w = w.to(device)
                rows = batch.support_rows.to(device)
                cond[rows] = w * cond[rows] + (1 - w) * visual
        return cond

    def _loss(self, batch: Batch, micro_index: int) -> torch.Tensor:
        cond = self._conditionals(batch, micro_index)
        with self._autocast():
            logits = self.ddp(batch.images.to(self.device, non_blocking=True), cond)
        targets = batch.targets.to(self.device, non_blocking=True)
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    def _train_step(self, batches: Iterator[Batch]) -> float:
        cfg = self.cfg
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro_index in range(cfg.accumulate):
            batch = next(batches)
            last = micro_index == cfg.accumulate - 1
            sync = contextlib.nullcontext() if last or not self.info.enabled else self.ddp.no_sync()
            with sync:
                loss = self._loss(batch, micro_index) / cfg.accumulate
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at step {self.step + 1}; stopping. "
                        "Lower --lr, use --amp off, or check the data for broken masks."
                    )
                self.scaler.scale(loss).backward()
            total += loss.item()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return total

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        cfg, main = self.cfg, self.info.is_main
        if main:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        logger = RunLogger(self.output, enabled=main, total=cfg.steps, start=self.step)
        if self.step == 0 and cfg.eval_every > 0:
            self.initial = self._evaluate()
            logger.metrics(0, {f"val/{k}": v for k, v in _scalars(self.initial).items()})
        batches = self._loader()
        started, seen = time.perf_counter(), 0
        while self.step < cfg.steps:
            loss = self._train_step(batches)
            seen += cfg.batch_size
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                rate = seen / (time.perf_counter() - started)
                lr = self.scheduler.get_last_lr()[0]
                logger.step(self.step, {"loss": loss, "lr": lr, "samples_per_s": rate})
            if cfg.eval_every > 0 and self.step % cfg.eval_every == 0:
                self._evaluate_and_keep_best(logger)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self._save_state()
        if cfg.eval_every > 0 and cfg.steps % cfg.eval_every:
            self._evaluate_and_keep_best(logger)
        summary = self._finish()
        logger.close()
        return summary

    def _evaluate(self) -> dict[str, Any]:
        """Validation metrics on rank 0 (the others wait)."""
        result: dict[str, Any] = {}
        if self.info.is_main:
            self.model.decoder.eval()
            result = evaluate_dataset(
                self.model, self._val_dataset(), self.device, max_samples=self.cfg.eval_samples
            )
            self.model.decoder.train()
        barrier(self.info)
        return result

    def _evaluate_and_keep_best(self, logger: RunLogger) -> None:
        result = self._evaluate()
        if not self.info.is_main:
            return
        logger.metrics(self.step, {f"val/{k}": v for k, v in _scalars(result).items()})
        if result["best_fg_iou"] > self.best.get("best_fg_iou", -1.0):
            self.best = {**_scalars(result), "step": self.step}
            self._export("best", result)
            log.info("new best fg IoU %.4f at step %d", result["best_fg_iou"], self.step)

    def _export(self, name: str, result: dict[str, Any]) -> None:
        metrics = {**_scalars(result), "step": self.step}
        if self.initial:
            metrics["initial_fg_iou"] = self.initial.get("best_fg_iou")
        export(
            self.model,
            self.output / name,
            backbone_source=self.loaded.backbone_source,
            include_backbone=self.cfg.include_backbone,
            threshold=result.get("best_threshold"),
            metrics=metrics,
            train_config=self.cfg.to_dict(),
        )

    def _save_state(self) -> None:
        if self.info.is_main:
            extra = {"best": self.best, "initial": _scalars(self.initial)}
            save_state(
                state_path(self.output), self.model, self.optimizer, self.scheduler, self.step,
                extra,
            )  # fmt: skip
        barrier(self.info)

    def _finish(self) -> dict[str, Any]:
        summary: dict[str, Any] = {"steps": self.step}
        if self.info.is_main:
            best_threshold = self.best.get("best_threshold")
            self._export("final", {"best_threshold": best_threshold} if best_threshold else {})
            if not (self.output / "best").exists():
                self._export("best", {})
            summary.update(
                initial_fg_iou=self.initial.get("best_fg_iou"),
                best=self.best,
                output=str(self.output),
            )
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2))
        barrier(self.info)
        return summary


def _scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The numeric summary of an evaluation (no per-threshold lists or per-prompt tables)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float))}


class RunLogger:
    """Progress bar, CSV file and TensorBoard (when installed), on rank 0 only."""

    def __init__(self, output: Path, *, enabled: bool, total: int, start: int) -> None:
        self.enabled = enabled
        self.bar = self.writer = self.csv_file = None
        if not enabled:
            return
        self.csv_file = open(output / "metrics.csv", "a", newline="")  # noqa: SIM115
        self.csv = csv.writer(self.csv_file)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"))
        except ImportError:
            log.info("tensorboard is not installed; logging to metrics.csv only")
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", file=sys.stderr)
        except ImportError:
            pass

    def step(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                samples_s=f"{values['samples_per_s']:.1f}",
            )  # fmt: skip
        self.metrics(step, {f"train/{k}": v for k, v in values.items()})

    def metrics(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.csv.writerow([step, key, value])
            if self.writer is not None:
                self.writer.add_scalar(key, value, step)
        self.csv_file.flush()

    def close(self) -> None:
        for thing in (self.bar, self.writer, self.csv_file):
            if thing is not None:
                thing.close()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = config_from_args(argv)
        trainer = Trainer(cfg)
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"clipseg-train: error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run()
    except TrainingError as exc:
        print(f"clipseg-train: {exc}", file=sys.stderr)
        return 1
    finally:
        shutdown(trainer.info)
    if trainer.info.is_main:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
