"""What the running app holds: settings, metrics, and (once loaded) the model and batcher."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from fastapi import Request
from PIL import Image

from model.batch import SegmentRequest
from model.predictor import Predictor
from model.weights.files import sha256_of

from .batcher import Batcher
from .config import Settings
from .errors import ApiError
from .jobs import SegmentJob
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)

PredictorFactory = Callable[[Settings], Predictor]


def default_predictor_factory(settings: Settings) -> Predictor:
    """Load the configured weights onto the configured device."""
    return Predictor.from_source(
        settings.weights,
        variant=settings.variant,
        backbone=settings.backbone,
        device=settings.device,
        dtype=settings.dtype,
        text_cache_size=settings.text_cache_size,
        max_pixels=settings.max_image_pixels,
    )


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    factory: PredictorFactory
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    ready: bool = False
    load_error: str | None = None
    weights_sha256: str | None = None
    started_at: float = field(default_factory=time.time)

    async def load(self) -> None:
        """Load weights (off the event loop), start the batcher, run a warm-up batch."""
        try:
            self.predictor = await asyncio.to_thread(self.factory, self.settings)
            loaded = self.predictor.loaded
            if loaded is not None and loaded.files:
                self.weights_sha256 = await asyncio.to_thread(sha256_of, loaded.files)
            self.batcher = Batcher(self.predictor, self.settings, self.metrics)
            self.batcher.start()
            if self.settings.warmup:
                await self._warm_up()
            self.ready = True
            log.info("model ready on %s (%s)", self.predictor.device, self.predictor.dtype)
        except Exception as exc:  # reported by /readyz; the process stays up for inspection
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the model failed")

    async def _warm_up(self) -> None:
        """One real batch through the whole path (compiles kernels, fills allocators)."""
        assert self.predictor is not None and self.batcher is not None
        blank = Image.fromarray(np.full((64, 64, 3), 127, dtype=np.uint8))
        prepared = await asyncio.to_thread(self.predictor.prepare_image, blank)
        request = SegmentRequest(prepared.pixels, prepared.size, "warm-up", prompts=["warm-up"])
        await self.batcher.submit(SegmentJob(request))
        self.predictor.text_cache.clear()

    async def close(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()

    def require_ready(self) -> tuple[Predictor, Batcher]:
        if not self.ready or self.predictor is None or self.batcher is None:
            detail = f" ({self.load_error})" if self.load_error else ""
            raise ApiError(503, "not_ready", f"the model is not ready yet{detail}")
        return self.predictor, self.batcher


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
