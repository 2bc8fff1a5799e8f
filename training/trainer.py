"""One training run (one process of it under torchrun): the loop behind ``clipseg-train``.

Reuses the model's preprocessing (``model.imaging.transforms``), visual-prompt engineering
(``model.imaging.visual_prompt``) and forward; writes ``<output>/best`` and ``<output>/final``,
checkpoints the service loads directly, each with its own evaluation and calibrated
threshold, plus ``state/last.pt`` for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.network.text import tokenize
from clipseg_serve.training.batching import Batch, Collate, EpochStream, StreamSampler
from clipseg_serve.training.config import TrainConfig
from clipseg_serve.training.data import SampleDataset
from clipseg_serve.training.datasets import build_dataset
from clipseg_serve.training.distributed import (
    DistInfo,
    any_rank_values,
    barrier,
    init_distributed,
    resolve_device,
)
from clipseg_serve.training.evaluation import evaluate_dataset
from clipseg_serve.training.initial import load_initial
from clipseg_serve.training.run_log import RunLogger
from clipseg_serve.training.state import export, load_state, save_state, state_path

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


def scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar summary of an evaluation: numbers and undefined (None) values, no
    per-threshold lists or per-prompt tables."""
    return {
        k: v
        for k, v in result.items()
        if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
    }


def non_finite_message(losses: torch.Tensor, step: int) -> str:
    """Why the run stops: ``losses`` is float [world], each rank's loss at ``step``."""
    bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
    where = f" on rank {', '.join(map(str, bad))}" if len(losses) > 1 else ""
    stop = f"stopping all {len(losses)} ranks" if len(losses) > 1 else "stopping"
    return (
        f"the loss became {losses[bad[0]].item()} at step {step}{where}; {stop}. "
        "Lower --lr, use --amp off, or check the data for broken masks."
    )


class Trainer:
    """One training run (one process of it under torchrun)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        # cuda:LOCAL_RANK under torchrun, set as the current device before NCCL starts.
        self.device = resolve_device(cfg.device)
        self.info: DistInfo = init_distributed(self.device)
        cfg.validate(self.info.world)
        torch.manual_seed(cfg.seed)
        # Data first: a wrong path fails in a second, not after a backbone download.
        self.train_set = build_dataset(
            cfg.dataset, cfg.data, cfg.train_split, cfg.seed, **cfg.dataset_options
        )
        self.val_set = self._val_dataset() if cfg.eval_every > 0 and self.info.is_main else None
        self.loaded = load_initial(
            cfg.init, variant=cfg.variant, backbone=cfg.backbone, fresh_decoder=cfg.fresh_decoder
        )
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
        self.last_eval: dict[str, Any] = {}  # the latest validation result (rank 0)
        self.last_eval_step = -1  # its step, known on every rank
        if cfg.resume:
            self.step, extra = load_state(cfg.resume, self.model, self.optimizer, self.scheduler)
            self.best, self.initial = extra.get("best", {}), extra.get("initial", {})
        self.ddp: torch.nn.Module = self.model
        if self.info.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=ids)

    # ------------------------------------------------------------------ data
    def _loader(self) -> Iterator[Batch]:
        cfg = self.cfg
        micro = cfg.micro_batch(self.info.world)
        consumed = self.step * micro * cfg.accumulate  # per rank
        n = len(self.train_set)
        sampler = StreamSampler(n, cfg.seed, self.info.rank, self.info.world, consumed)
        loader = DataLoader(
            EpochStream(self.train_set),
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

    def _val_dataset(self) -> SampleDataset:
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
                # Every rank learns every rank's loss *before* the backward: a rank that
                # stopped alone would leave the others waiting in DDP's gradient all-reduce.
                losses = any_rank_values(loss, self.info)
                if not bool(torch.isfinite(losses).all()):
                    raise TrainingError(non_finite_message(losses.cpu(), self.step + 1))
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
        try:
            if self.step == 0 and cfg.eval_every > 0:
                self.initial = self._evaluate()
                logger.metrics(0, {f"val/{k}": v for k, v in scalars(self.initial).items()})
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
            return self._finish(logger)
        finally:
            logger.close()

    def _evaluate(self) -> dict[str, Any]:
        """Validation metrics on rank 0 (the others wait)."""
        result: dict[str, Any] = {}
        if self.info.is_main:
            self.model.decoder.eval()
            result = evaluate_dataset(
                self.model, self.val_set, self.device, max_samples=self.cfg.eval_samples
            )
            self.model.decoder.train()
        barrier(self.info)
        return result

    def _evaluate_and_keep_best(self, logger: RunLogger) -> None:
        result = self._evaluate()
        self.last_eval_step = self.step
        if not self.info.is_main:
            return
        self.last_eval = result
        logger.metrics(self.step, {f"val/{k}": v for k, v in scalars(result).items()})
        if result["best_fg_iou"] > self.best.get("best_fg_iou", -1.0):
            self.best = {**scalars(result), "step": self.step}
            self._export("best", result)
            log.info("new best fg IoU %.4f at step %d", result["best_fg_iou"], self.step)

    def _export(self, name: str, result: dict[str, Any]) -> None:
        """Checkpoint ``name`` with ``result``'s metrics and calibrated threshold (the best
        fg IoU's); without a result, the starting model's threshold and no metrics."""
        metrics = {**scalars(result), "step": self.step}
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
            extra = {"best": self.best, "initial": scalars(self.initial)}
            save_state(
                state_path(self.output), self.model, self.optimizer, self.scheduler, self.step,
                extra,
            )  # fmt: skip
        barrier(self.info)

    def _finish(self, logger: RunLogger) -> dict[str, Any]:
        """Export ``final`` with its own evaluation (of the final weights) and threshold."""
        if self.cfg.eval_every > 0 and self.last_eval_step != self.step:
            self._evaluate_and_keep_best(logger)  # a collective: every rank calls it
        summary: dict[str, Any] = {"steps": self.step}
        if self.info.is_main:
            self._export("final", self.last_eval)
            if not (self.output / "best").exists():
                self._export("best", {})
            summary.update(
                initial_fg_iou=self.initial.get("best_fg_iou"),
                best=self.best,
                final={**scalars(self.last_eval), "step": self.step},
                output=str(self.output),
            )
            (self.output / "summary.json").write_text(json.dumps(summary, indent=2))
        barrier(self.info)
        return summary
