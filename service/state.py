"""What the running app holds: settings, metrics, the memory budget, and (once loaded) the
predictor and its batcher — plus the health verdict the probes report."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request

from clipseg_serve.model.backends import load_predictor
from clipseg_serve.model.device import resolve_device
from clipseg_serve.model.errors import ClipSegError
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.weights.files import sha256_of
from clipseg_serve.service.batcher import Batcher
from clipseg_serve.service.budget import MemoryBudget
from clipseg_serve.service.calibrate import GENERIC_HOST_PRIOR, GENERIC_PRIOR, calibrate
from clipseg_serve.service.config import Settings
from clipseg_serve.service.cost import CostModel, HostCost
from clipseg_serve.service.errors import ApiError
from clipseg_serve.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)

PredictorFactory = Callable[[Settings], Predictor]
#: Called once when the service can no longer serve (weights failed, worker died).
FatalHandler = Callable[[str], None]

# Absolute POSIX or Windows paths inside exception messages: they go to the log, not to
# clients (they reveal the server's layout).
_PATH = re.compile(r"(?:[A-Za-z]:\\|/)[^\s'\"]*[/\\][^\s'\"]*")


def redact_paths(text: str) -> str:
    return _PATH.sub("<path>", text)


def default_predictor_factory(settings: Settings) -> Predictor:
    """Load the configured weights onto the configured device."""
    return load_predictor(
        settings.weights,
        variant=settings.variant,
        backbone=settings.backbone,
        backend=settings.backend,
        device=settings.device,
        dtype=settings.dtype,
        text_cache_size=settings.text_cache_size,
        max_pixels=settings.max_image_pixels,
        decode=decode_argument(settings),
        compile_buckets=settings.compile_batch_sizes or None,
    )


def decode_argument(settings: Settings) -> str:
    """``Predictor``'s decode for CLIPSEG_DECODE: gpu means on the (CUDA) model device."""
    if settings.decode == "gpu":
        device = resolve_device(settings.device)
        if device.type != "cuda":
            raise ValueError(f"CLIPSEG_DECODE=gpu needs a CUDA device; the model is on {device}")
        return "device"
    return settings.decode


@dataclass
class ServiceState:
    settings: Settings
    metrics: ServiceMetrics
    factory: PredictorFactory
    on_fatal: FatalHandler | None = None
    predictor: Predictor | None = None
    batcher: Batcher | None = None
    ready: bool = False
    #: A stop signal arrived and the shutdown delay runs: /readyz 503, requests still served.
    draining: bool = False
    load_error: str | None = None
    weights_sha256: str | None = None
    #: Where the server listens (``listening``); named in the "ready" log line.
    url: str | None = None
    started_at: float = field(default_factory=time.time)
    memory: MemoryBudget = field(init=False)

    def __post_init__(self) -> None:
        self.memory = MemoryBudget(self.settings.memory_budget_mb << 20)
        self.metrics.bind(
            ready=lambda: self.ready and not self.draining,
            healthy=lambda: self.health() is None,
            memory_reserved_bytes=lambda: float(self.memory.reserved),
        )

    async def load(self) -> None:
        """Load weights (off the event loop), start the batcher, calibrate its costs.

        A failure is logged as one ERROR line: a library error's message says what is
        wrong (and, for weights that cannot be had, what to do), so its traceback is only
        logged at DEBUG; anything else is a bug and gets its traceback at ERROR.
        """
        try:
            await self._load()
        except ClipSegError as exc:
            self.load_error = f"loading the weights failed: {exc}"
            log.error("%s", self.load_error)
            log.debug("the load failure in full", exc_info=exc)
            self._fatal(self.load_error)
        except Exception as exc:
            self.load_error = f"loading the weights failed: {type(exc).__name__}: {exc}"
            log.error("%s", self.load_error, exc_info=exc)
            self._fatal(self.load_error)

    async def _load(self) -> None:
        self.predictor = await asyncio.to_thread(self.factory, self.settings)
        files = self.predictor.describe()["weights"]["files"]
        if files:
            self.weights_sha256 = await asyncio.to_thread(sha256_of, files)
        prior, host = CostModel(GENERIC_PRIOR), HostCost(GENERIC_HOST_PRIOR)
        self.batcher = Batcher(self.predictor, self.settings, self.metrics, prior, host)
        self._bind_worker_metrics(self.batcher)
        self.batcher.start()
        # Compilation (if configured) happens here, not on a user's first request.
        await self.batcher.run_on_model_thread(self.predictor.warm_up)
        if self.settings.warmup:
            cost, host = await self.batcher.run_on_model_thread(calibrate, self.predictor)
            self.batcher.use_cost_model(cost, host)
        self.ready = True
        log.info("%s", self.ready_line())

    def listening(self, url: str) -> None:
        """The server is bound to ``url`` (called by service/server.py's server)."""
        self.url = url

    def ready_line(self) -> str:
        """What the "ready" log line says: weights, variant, device, dtype and URL.

        uvicorn's "Application startup complete" comes before the weights are loaded;
        this line comes when /readyz turns 200. The server binds right after start-up,
        long before any weights load, so the URL is known by then; without one (another
        ASGI server) the line leaves it out.
        """
        assert self.predictor is not None
        described = self.predictor.describe()
        weights = described["weights"]
        line = (
            f"ready: serving {weights['source']} ({weights['kind']} weights, variant "
            f"{described['variant']}) on {described['device']} in {described['dtype']}"
            f" ({described['backend']} backend)"
        )
        int8 = described.get("int8")
        if int8:
            state = "on" if int8["use_int8"] else "off"
            line += f"; int8 {state} on {int8['kernel_class']}: {int8['reason']}"
        return f"{line} at {self.url}" if self.url else line

    def start_draining(self) -> None:
        """The server got a stop signal and delays it (``CLIPSEG_SHUTDOWN_DELAY_S``):
        readiness turns 503 so that load balancers stop routing here; work continues."""
        self.draining = True
        log.info(
            "stop signal: /readyz answers 503 for %.1f s while serving, then draining",
            self.settings.shutdown_delay_s,
        )

    def _bind_worker_metrics(self, batcher: Batcher) -> None:
        assert self.predictor is not None
        predictor = self.predictor
        self.metrics.bind(
            queue_depth=lambda: float(batcher.queue_depth),
            backlog_seconds=batcher.backlog_seconds,
            text_cache=predictor.stats,
        )

    def _fatal(self, reason: str) -> None:
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def health(self) -> str | None:
        """None when the process can serve (or is still loading); else the reason why not."""
        if self.load_error:
            return self.load_error
        if self.batcher is not None:
            return self.batcher.failure
        return None

    def public_health(self) -> str | None:
        """``health()`` without server file paths (for client-facing bodies)."""
        reason = self.health()
        return None if reason is None else redact_paths(reason)

    async def watch(self, interval: float = 1.0) -> None:
        """Watchdog: log and report (once) when the worker stops being able to serve."""
        reported = False
        while True:
            await asyncio.sleep(interval)
            reason = self.batcher.failure if self.batcher is not None else None
            if reason and not reported:
                reported = True
                log.error("the model worker failed: %s", reason)
                self._fatal(reason)

    async def close(self) -> None:
        self.ready = False
        if self.batcher is not None:
            await self.batcher.stop()

    def require_ready(self) -> tuple[Predictor, Batcher]:
        problem = self.public_health()
        if problem:
            raise ApiError(503, "unhealthy", f"the service cannot serve: {problem}")
        if not self.ready or self.predictor is None or self.batcher is None:
            raise ApiError(503, "not_ready", "the model is not ready yet (loading / warming up)")
        return self.predictor, self.batcher


def get_state(request: Request) -> ServiceState:
    return request.app.state.service
