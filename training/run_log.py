"""A run's logs on rank 0: progress bar, ``metrics.csv`` and TensorBoard (when installed)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from clipseg_serve.training.progress import progress

log = logging.getLogger("clipseg.train")


class RunLogger:
    """Progress bar, CSV file and TensorBoard, on rank 0 only (``enabled``)."""

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
        self.bar = progress(total, "train")
        self.bar.update(start)
        self._done = start

    def step(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.bar.update(step - self._done)
        self._done = step
        if hasattr(self.bar, "set_postfix"):  # tqdm
            self.bar.set_postfix(
                loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}",
                samples_s=f"{values['samples_per_s']:.1f}",
            )  # fmt: skip
        self.metrics(step, {f"train/{k}": v for k, v in values.items()})

    def metrics(self, step: int, values: dict[str, Any]) -> None:
        """One CSV row and TensorBoard scalar per value; undefined (None) values skipped."""
        if not self.enabled:
            return
        for key, value in values.items():
            if value is None:
                continue
            self.csv.writerow([step, key, value])
            if self.writer is not None:
                self.writer.add_scalar(key, value, step)
        self.csv_file.flush()

    def close(self) -> None:
        for thing in (self.bar, self.writer, self.csv_file):
            if thing is not None:
                thing.close()
