"""Dynamic batching: an asyncio queue feeding one dedicated model thread.

A batch starts with the first waiting job and grows until ``max_batch_images`` images or
``max_batch_prompts`` decoder rows are reached, or ``max_wait_ms`` has passed since that
first job arrived. Jobs that queued up while the previous batch ran are therefore taken
at once. Expired or abandoned jobs are dropped before compute. A failing batch is split
in halves and retried, so a bad job (or a CUDA out-of-memory) fails only itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from model.batch import Segmentation, segment_batch
from model.predictor import Predictor

from .config import Settings
from .errors import ApiError
from .jobs import SegmentJob
from .metrics import ServiceMetrics

log = logging.getLogger(__name__)


class QueueFullError(ApiError):
    def __init__(self, retry_after: int) -> None:
        super().__init__(
            429,
            "queue_full",
            f"the server is at capacity; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


class Batcher:
    """Owns the model thread; ``submit`` jobs from the event loop, await their futures."""

    def __init__(self, predictor: Predictor, settings: Settings, metrics: ServiceMetrics) -> None:
        self.predictor = predictor
        self.settings = settings
        self.metrics = metrics
        self.queue: asyncio.Queue[SegmentJob] = asyncio.Queue(maxsize=settings.queue_size)
        self.accepting = False
        self._carry: SegmentJob | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clipseg-model")
        self._task: asyncio.Task | None = None
        self._busy = False
        self._batch_seconds = 0.05  # moving averages for Retry-After
        self._jobs_per_batch = 1.0
        metrics.queue_depth.set_function(lambda: float(self.queue.qsize()))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.accepting = True
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def stop(self) -> None:
        """Stop accepting, finish the queued jobs, then stop the model thread."""
        self.accepting = False
        while self._carry is not None or not self.queue.empty() or self._busy:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def run_on_model_thread(self, fn, *args):
        """Run ``fn`` on the model thread (warm-up, maintenance) and await it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    # ------------------------------------------------------------------ submitting
    def submit(self, job: SegmentJob) -> asyncio.Future:
        """Queue ``job``; its future resolves to a Segmentation. 429 when the queue is full."""
        if not self.accepting:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        job.future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.metrics.rejected.inc(reason="queue_full")
            raise QueueFullError(self.retry_after()) from None
        return job.future

    def retry_after(self) -> int:
        """Seconds until the queue should have room, from recent batch timings."""
        batches = self.queue.qsize() / max(1.0, self._jobs_per_batch)
        return max(1, math.ceil(batches * self._batch_seconds))

    # ------------------------------------------------------------------ the loop
    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            live = self._drop_abandoned(jobs)
            if live:
                self._busy = True
                try:
                    await self._run(live)
                finally:
                    self._busy = False

    async def _next_job(self, timeout: float | None) -> SegmentJob | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return await self.queue.get()
        if timeout <= 0:
            try:
                return self.queue.get_nowait()
            except asyncio.QueueEmpty:
                return None
        try:
            return await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _collect(self) -> list[SegmentJob]:
        first = await self._next_job(None)
        assert first is not None
        jobs, images, rows = [first], {first.image_key}, first.rows
        until = first.enqueued_at + self.settings.max_wait_ms / 1000.0
        limits = self.settings
        while len(images) < limits.max_batch_images and rows < limits.max_batch_prompts:
            job = await self._next_job(until - time.monotonic())
            if job is None:
                break
            if rows + job.rows > limits.max_batch_prompts:
                self._carry = job  # it starts the next batch
                break
            jobs.append(job)
            images.add(job.image_key)
            rows += job.rows
        return jobs

    def _drop_abandoned(self, jobs: list[SegmentJob]) -> list[SegmentJob]:
        now, live = time.monotonic(), []
        for job in jobs:
            if job.future is not None and job.future.done():
                # Its request gave up (deadline or client gone) and already answered.
                self.metrics.dropped.inc(reason="abandoned")
            elif now >= job.deadline:
                self.metrics.dropped.inc(reason="expired")
                job.future.set_exception(  # type: ignore[union-attr]
                    ApiError(504, "deadline_exceeded", "the request waited past its deadline")
                )
            else:
                live.append(job)
        return live

    async def _run(self, jobs: list[SegmentJob]) -> None:
        now = time.monotonic()
        for job in jobs:
            self.metrics.stage_seconds.observe(now - job.enqueued_at, stage="queue_wait")
        start = time.perf_counter()
        outcomes = await self.run_on_model_thread(self._execute, jobs)
        elapsed = time.perf_counter() - start
        self._record_batch(jobs, elapsed)
        for job, outcome in zip(jobs, outcomes, strict=True):
            if job.future is None or job.future.done():
                continue
            if isinstance(outcome, BaseException):
                job.future.set_exception(outcome)
            else:
                job.future.set_result(outcome)

    def _record_batch(self, jobs: list[SegmentJob], elapsed: float) -> None:
        self.metrics.batches.inc()
        self.metrics.batch_images.observe(len({job.image_key for job in jobs}))
        self.metrics.batch_rows.observe(sum(job.rows for job in jobs))
        self.metrics.stage_seconds.observe(elapsed, stage="model")
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * elapsed
        self._jobs_per_batch = 0.8 * self._jobs_per_batch + 0.2 * len(jobs)
        cache = self.predictor.text_cache
        lookups = cache.hits + cache.misses
        if lookups:
            self.metrics.text_cache_hit_ratio.set(cache.hits / lookups)

    def _execute(self, jobs: list[SegmentJob]) -> list[Segmentation | BaseException]:
        """On the model thread: run the batch; on failure split it and retry the halves."""
        try:
            return list(segment_batch(self.predictor, [job.request for job in jobs]))
        except Exception as exc:
            oom = isinstance(exc, torch.cuda.OutOfMemoryError)
            self.metrics.batch_failures.inc(reason="oom" if oom else "error")
            if oom and torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(jobs) == 1:
                log.exception("job failed", exc_info=exc)
                return [exc]
            half = len(jobs) // 2
            log.warning("batch of %d failed (%s); retrying in halves", len(jobs), exc)
            return self._execute(jobs[:half]) + self._execute(jobs[half:])
