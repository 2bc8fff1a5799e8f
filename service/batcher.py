"""The model worker: the scheduler's batches run on one dedicated model thread.

The event loop admits jobs through the ``Scheduler`` (cost-based, EDF) and this loop takes
its batches: it waits up to ``max_wait_ms`` after the first job for more to join (only
while a batch could still grow), drops jobs that can no longer make their deadline, runs
the batch on the model thread, feeds the measured time back into the cost model, and
resolves each job's future. Jobs whose request gave up are skipped at render time. A
failing batch is split in halves and retried, so a bad job (or a CUDA out-of-memory)
fails only itself. ``failure`` says why the worker is dead or stuck (the watchdog reads
it for /healthz and /readyz).

Pipelined (``CLIPSEG_PIPELINE``; ``auto``, the default, pipelines on CUDA), a batch is
*launched* on the model thread (``Predictor.launch``: inputs up on a side stream, model and
rendering enqueued, copies back started) and *collected* on a second thread
(``Predictor.collect``: wait for the copies, build the results, resolve the futures) while
the next batch is formed and launched. At most two batches are in flight: the next launch
starts only after the previous collect has begun, and a batch is settled only after the
one before it. On a CPU the launch does all the computing, so the answers are the same
tensors either way (the tests compare them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from clipseg_serve.model.inference.batch import Segmentation, plan_batch
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service import request_id
from clipseg_serve.service.config import Settings
from clipseg_serve.service.cost import CostModel, HostCost, HostWork, Work
from clipseg_serve.service.errors import ApiError
from clipseg_serve.service.jobs import Cost, Estimates, SegmentJob
from clipseg_serve.service.metrics import ServiceMetrics
from clipseg_serve.service.scheduler import Limits, Rejected, Scheduler, Ticket

log = logging.getLogger(__name__)

T = TypeVar("T")
Outcome = Segmentation | BaseException | None


def rejection_error(rejected: Rejected) -> ApiError:
    """The HTTP answer to a refused admission (429 with an integer Retry-After, or 504)."""
    if rejected.status != 429:
        return ApiError(rejected.status, rejected.reason, rejected.message)
    seconds = max(1, math.ceil(rejected.retry_after))
    return ApiError(
        429,
        rejected.reason,
        rejected.message,
        headers={"Retry-After": str(seconds)},
        retry_after=rejected.retry_after,
    )


class Batcher:
    """Owns the model thread; ``submit`` jobs from the event loop and await their futures."""

    def __init__(
        self,
        predictor: Predictor,
        settings: Settings,
        metrics: ServiceMetrics,
        cost: CostModel,
        host: HostCost,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.predictor = predictor
        self.settings = settings
        self.metrics = metrics
        limits = Limits(
            max_batch_images=settings.max_batch_images,
            max_batch_rows=settings.max_batch_prompts,
            queue_size=settings.queue_size,
            max_queue_wait_s=settings.max_queue_wait_s,
        )
        self.scheduler = Scheduler(cost, limits, clock)
        self.host_cost = host
        self.accepting = False
        self._clock = clock
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipseg-model")
        self._collector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipseg-collect")
        self._collecting: asyncio.Task | None = None  # the previous batch's collect
        self._started: dict[int, float] = {}  # id(batch) -> clock() at launch, in flight
        #: On a CPU a launch computes everything: nothing would overlap, a hop would cost.
        self.pipelined = settings.pipeline == "on" or (
            settings.pipeline == "auto" and predictor.device.type == "cuda"
        )
        self._last_done = -math.inf  # perf_counter when the previous batch's results landed
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._busy_since: float | None = None
        self._died: str | None = None
        self._publish_costs()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")
        self._task.add_done_callback(self._on_loop_exit)

    def _on_loop_exit(self, task: asyncio.Task) -> None:
        if self._stopping:
            return
        exc = None if task.cancelled() else task.exception()
        self._died = (
            f"the batcher stopped unexpectedly ({type(exc).__name__ if exc else 'cancelled'})"
        )
        log.error("%s; the service is unhealthy", self._died, exc_info=exc)
        self._fail_queued(ApiError(503, "worker_failed", "the model worker stopped"))

    @property
    def failure(self) -> str | None:
        """Why the worker cannot serve (dead loop, batch stuck far past its estimate)."""
        if self._died:
            return self._died
        busy = self._busy_since
        if busy is not None and self._clock() - busy > self.settings.stuck_batch_s:
            return f"a model batch has been running for more than {self.settings.stuck_batch_s} s"
        return None

    async def stop(self) -> None:
        """Stop accepting, finish the queued jobs, then stop the model thread."""
        self.accepting = False
        while self._task is not None and not self._task.done():
            if self.scheduler.depth == 0 and self._busy_since is None and self._idle_collector():
                break
            await asyncio.sleep(0.01)
        if self._collecting is not None:
            await asyncio.gather(self._collecting, return_exceptions=True)
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_queued(ApiError(503, "shutting_down", "the server is shutting down"))
        self._executor.shutdown(wait=True)
        self._collector.shutdown(wait=True)

    def _idle_collector(self) -> bool:
        return self._collecting is None or self._collecting.done()

    def _fail_queued(self, error: ApiError) -> None:
        """Answer every job still queued (nothing is left waiting forever)."""
        while True:
            batch, dropped = self.scheduler.next_batch()
            self.scheduler.finish(batch, None)
            if not batch and not dropped:
                return
            for ticket in (*batch, *dropped):
                _settle(ticket.payload, error)

    def use_cost_model(self, cost: CostModel, host: HostCost | None = None) -> None:
        """Replace the cost models (e.g. with the warm-up calibration's)."""
        self.scheduler.cost = cost
        if host is not None:
            self.host_cost = host
        self._publish_costs()

    def observe_host(self, work: HostWork, seconds: float) -> None:
        """A request's decoding and encoding took ``seconds``: learn from it."""
        ratio = self.host_cost.observe(work, seconds)
        if ratio is not None:
            self.metrics.estimate_ratio.labels(kind="host").observe(ratio)
            self._publish_host_costs()

    async def run_on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the model thread (warm-up, maintenance) and await it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ reporting
    @property
    def queue_depth(self) -> int:
        """Jobs waiting for a batch."""
        return self.scheduler.depth

    def backlog_seconds(self) -> float:
        """Estimated seconds until the model is free (running batch + queue)."""
        return self.scheduler.backlog_seconds()

    @property
    def cost_coefficients(self) -> dict[str, float]:
        """The model-time cost model's terms, seconds per unit."""
        return self.scheduler.cost.coefficients

    @property
    def host_cost_coefficients(self) -> dict[str, float]:
        """The host-time (decode + encode) cost model's terms, seconds per unit."""
        return self.host_cost.coefficients

    # ------------------------------------------------------------------ submitting
    def estimate(self, cost: Cost) -> Estimates:
        """The seconds ``cost`` would take alone, on the model thread and on the host,
        without margins."""
        return Estimates(self.scheduler.cost.predict(cost.work), self.host_cost.predict(cost.host))

    def check(self, cost: Cost, deadline: float, arrived: float | None = None) -> None:
        """Refuse now (ApiError 413/422/429/503/504) what ``submit`` would refuse; queues
        nothing. ``arrived``: the request's arrival (monotonic; default now)."""
        self._require_accepting()
        host = self._feasible(cost)
        try:
            self.scheduler.check(cost.work, deadline - host, cost.image_key, arrived)
        except Rejected as rejected:
            raise self._refused(rejected) from None

    def refusal(self, work: Work, deadline: float) -> ApiError | None:
        """The 429 that ``check`` would raise for ``work`` now (counted as refused), or
        None; anything else is left to ``check`` (``service.early_refusal``)."""
        if not self.accepting or self.failure:
            return None
        try:
            self.scheduler.check(work, deadline)
        except Rejected as rejected:
            if rejected.status == 429:
                return self._refused(rejected)
        return None

    def submit(self, job: SegmentJob) -> asyncio.Future[Segmentation]:
        """Admit ``job``; its future resolves to a Segmentation (or an ApiError)."""
        self._require_accepting()
        cost = job.cost
        host = self._feasible(cost)
        try:
            deadline = job.deadline - host
            job.ticket = self.scheduler.admit(job, cost.work, deadline, cost.image_key, job.arrived)
        except Rejected as rejected:
            raise self._refused(rejected) from None
        job.future = asyncio.get_running_loop().create_future()
        self._wake.set()
        return job.future

    def _feasible(self, cost: Cost) -> float:
        """The request's host seconds (margin included); 413 when it cannot finish within
        the server's timeout even on an idle server, 422 when only the client's shorter
        ``X-Request-Timeout`` is the reason."""
        grow = 1.0 + self.scheduler.margin()
        estimate = self.estimate(cost)
        model, host = estimate.model, estimate.host
        needed = (model + host) * grow
        timeout = self.settings.request_timeout_s
        if needed <= timeout and (cost.asked_s is None or needed <= cost.asked_s):
            return host * grow
        what = (
            f"this request needs about {needed:.2f} s on this server even when it is idle "
            f"(an estimated {model:.2f} s of model time and {host:.2f} s of decoding and "
            f"encoding, plus a {100 * (grow - 1):.0f} % margin for the estimate's error)"
        )
        if needed > timeout:
            self.metrics.rejected.labels(reason="request_too_costly").inc()
            raise ApiError(
                413,
                "request_too_costly",
                f"{what}, more than the server's deadline of {timeout:g} s; send a smaller "
                "image, fewer prompts or supports, or lighter post-processing (refine, "
                "soft maps, instances, polygons), or raise CLIPSEG_REQUEST_TIMEOUT_S on "
                "the server",
            )
        self.metrics.rejected.labels(reason="deadline_too_short").inc()
        raise ApiError(
            422,
            "deadline_too_short",
            f"{what}, more than its X-Request-Timeout of {cost.asked_s:g} s; send a longer "
            f"X-Request-Timeout (up to {timeout:g} s) or a lighter request",
        )

    def abandon(self, job: SegmentJob) -> None:
        """The request gave up: never compute it, and stop counting it as queued work."""
        job.abandoned = True
        if job.ticket is not None and job.ticket.queued:
            self.metrics.dropped.labels(reason="abandoned").inc()
            self.scheduler.cancel(job.ticket)

    def _require_accepting(self) -> None:
        if not self.accepting:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        if self.failure:
            raise ApiError(503, "worker_failed", "the model worker is not running")

    def _refused(self, rejected: Rejected) -> ApiError:
        self.metrics.rejected.labels(reason=rejected.reason).inc()
        return rejection_error(rejected)

    # ------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            await self._until_work()
            await self._batching_window()
            batch, dropped = self.scheduler.next_batch()
            for ticket in dropped:
                self.metrics.dropped.labels(reason="hopeless").inc()
                _settle(
                    ticket.payload,
                    ApiError(504, "deadline_exceeded", "the request cannot finish in time"),
                )
            if batch:
                await self._run(batch)

    async def _until_work(self) -> None:
        while self.scheduler.depth == 0:
            self._wake.clear()
            await self._wake.wait()

    async def _batching_window(self) -> None:
        """Give a batch that could still grow ``max_wait_ms`` (from its first job) to fill."""
        window = self.settings.max_wait_ms / 1000.0
        while self.scheduler.depth < self.settings.max_batch_images:
            first = self.scheduler.first_admitted_at()
            left = (first + window - self._clock()) if first is not None else 0.0
            if left <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), left)

    async def _run(self, batch: list[Ticket]) -> None:
        jobs: list[SegmentJob] = [ticket.payload for ticket in batch]
        now = self._clock()
        for ticket in batch:
            self.metrics.stage_seconds.labels(stage="queue_wait").observe(now - ticket.admitted_at)
        if self.pipelined:
            await self._launch_then_collect(batch, jobs)
            return
        self._busy_since = now
        try:
            outcomes, seconds = await self.run_on_model_thread(self._execute, jobs)
        finally:
            self._busy_since = None
        self._settle_batch(batch, jobs, outcomes, seconds)

    def _settle_batch(
        self,
        batch: list[Ticket],
        jobs: list[SegmentJob],
        outcomes: list[Outcome],
        seconds: float | None,
    ) -> None:
        ratio = self.scheduler.finish(batch, seconds)
        if ratio is not None:
            self.metrics.estimate_ratio.labels(kind="batch").observe(ratio)
        self._record(batch, seconds)
        for job, outcome in zip(jobs, outcomes, strict=True):
            job.model_seconds = seconds or 0.0
            if outcome is None:  # its request gave up while the batch ran: not rendered
                self.metrics.dropped.labels(reason="abandoned_in_batch").inc()
            else:
                _settle(job, outcome)

    # ------------------------------------------------------------------ pipelined
    async def _launch_then_collect(self, batch: list[Ticket], jobs: list[SegmentJob]) -> None:
        """Launch this batch, then hand it to the collector once the previous one is done."""
        self._in_flight(batch, True)
        try:
            launched = await self.run_on_model_thread(self._launch, jobs)
        except BaseException:
            self._in_flight(batch, False)
            raise
        previous = self._collecting
        if previous is not None:
            outcome: list[BaseException | None] = await asyncio.gather(
                previous, return_exceptions=True
            )
            if isinstance(outcome[0], BaseException):
                log.error("collecting a batch failed", exc_info=outcome[0])
        self._collecting = asyncio.get_running_loop().create_task(
            self._collect(batch, jobs, launched), name="collect"
        )

    def _launch(self, jobs: list[SegmentJob]) -> tuple[Any, float, list[Outcome] | None]:
        """On the model thread: (pending batch, start time, outcomes if it failed to launch)."""
        ids = ",".join(job.request_id for job in jobs if job.request_id)
        with request_id.bound(ids or None):
            start = time.perf_counter()
            try:
                plan = plan_batch([job.request for job in jobs])
                pending = self.predictor.launch(plan, keep=lambda i: not jobs[i].abandoned)
                return pending, start, None
            except Exception as exc:
                return None, start, self._split(jobs, exc)

    async def _collect(self, batch: list[Ticket], jobs: list[SegmentJob], launched: tuple) -> None:
        pending, start, failed = launched
        outcomes: list[Outcome]
        seconds: float | None = None
        try:
            if failed is not None:
                outcomes = failed
            else:
                loop = asyncio.get_running_loop()
                try:
                    results = await loop.run_in_executor(
                        self._collector, self.predictor.collect, pending
                    )
                    outcomes = list(results)
                    done = time.perf_counter()
                    # Its own time: from its launch, or from when the previous batch's
                    # results landed if it queued behind that one on the device.
                    seconds = done - max(start, self._last_done)
                    self._last_done = done
                except Exception as exc:  # an asynchronous device error surfaces here
                    outcomes = await self.run_on_model_thread(self._split, jobs, exc)
        finally:
            self._in_flight(batch, False)
        self._settle_batch(batch, jobs, outcomes, seconds)

    def _in_flight(self, batch: list[Ticket], started: bool) -> None:
        """Track batches between launch and collected; busy since the oldest one started
        (what the stuck-batch watchdog measures)."""
        if started:
            self._started[id(batch)] = self._clock()
        else:
            self._started.pop(id(batch), None)
        self._busy_since = min(self._started.values()) if self._started else None

    def _record(self, batch: list[Ticket], seconds: float | None) -> None:
        work = Scheduler.batch_work(batch)
        self.metrics.batches.inc()
        self.metrics.batch_images.observe(work.images)
        self.metrics.batch_rows.observe(work.rows)
        if seconds is not None:
            self.metrics.stage_seconds.labels(stage="model").observe(seconds)
        self._publish_costs()

    def _publish_costs(self) -> None:
        for term, value in self.cost_coefficients.items():
            self.metrics.batch_cost.labels(term=term).set(value)
        self._publish_host_costs()

    def _publish_host_costs(self) -> None:
        for term, value in self.host_cost.coefficients.items():
            self.metrics.host_cost.labels(term=term).set(value)

    def _execute(self, jobs: list[SegmentJob]) -> tuple[list[Outcome], float | None]:
        """On the model thread: (an outcome per job, seconds if the batch ran in one go).

        Log lines from here carry the IDs of the batch's requests, comma-separated: the
        thread serves them all at once (a failing half names only its own).
        """
        ids = ",".join(job.request_id for job in jobs if job.request_id)
        with request_id.bound(ids or None):
            start = time.perf_counter()
            try:
                results = self.predictor.segment_batch(
                    [job.request for job in jobs], keep=lambda i: not jobs[i].abandoned
                )
                return list(results), time.perf_counter() - start
            except Exception as exc:
                return self._split(jobs, exc), None

    def _split(self, jobs: list[SegmentJob], exc: Exception) -> list[Outcome]:
        """A failed batch: retry its halves, so only the culprit fails."""
        oom = isinstance(exc, torch.cuda.OutOfMemoryError)
        self.metrics.batch_failures.labels(reason="oom" if oom else "error").inc()
        if oom and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if len(jobs) == 1:
            log.error("job failed", exc_info=exc)
            return [exc]
        half = len(jobs) // 2
        log.warning("batch of %d failed (%s); retrying in halves", len(jobs), exc)
        return self._execute(jobs[:half])[0] + self._execute(jobs[half:])[0]


def _settle(job: SegmentJob, outcome: Segmentation | BaseException) -> None:
    """Resolve the job's future unless its request already gave up."""
    future = job.future
    if future is None or future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
