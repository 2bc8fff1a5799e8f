"""Admission and batch formation that keep goodput under overload. Pure logic, any clock.

The queue is not a buffer to fill. A job is admitted only if, by the cost model's
estimate of the work ahead of it (earliest deadline first) plus its own, it will finish
inside its deadline — and inside ``max_queue_wait_s`` of queueing, so a burst cannot build
a backlog that takes longer to drain than clients wait; otherwise it is refused at once
with an honest retry delay from the same estimate. Admitting a job with an earlier
deadline than queued ones must not push any of them past theirs.

Shedding has hysteresis: once the estimated queueing passes ``max_queue_wait_s`` the
scheduler refuses until it has drained to half of that, then admits again. Without it,
under sustained overload the gate would reopen for one job at a time, every few hundred
milliseconds, and a Retry-After could only ever say "a moment" (HTTP's is whole
seconds); with it, a refusal's delay is the real time until the gate reopens, and the
clients that come back then are admitted together.

Batches take the most urgent live jobs first (EDF), grow only while the estimated batch
time fits the most urgent job's remaining time (and the image/row limits), and jobs that
can no longer make their deadline even alone are dropped before they cost anything.

Compared with what serving stacks do by default: Triton's queue policy rejects or times
out by a fixed queue delay and a fixed batch size; Ray Serve's backpressure caps queued
requests by count; CoDel drops by sojourn time after the fact. Here the decision uses the
learned cost of *this* request on *this* device against *its* deadline, before it waits.

No asyncio and no wall clock inside: ``clock`` is injected, so the unit tests drive it by
hand (tests/service/test_scheduler.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from .cost import CostModel, Work, batch_work

#: While shedding, admission reopens once the estimated queueing is down to this fraction
#: of ``max_queue_wait_s``.
REOPEN_FRACTION = 0.5


@dataclass(frozen=True)
class Limits:
    """Batch and queue limits (see the ``CLIPSEG_*`` settings of the same names)."""

    max_batch_images: int = 32
    max_batch_rows: int = 256
    queue_size: int = 256
    max_queue_wait_s: float = 2.0


@dataclass(eq=False)
class Ticket:
    """The scheduler's record of one admitted job. ``payload`` is the caller's object."""

    payload: Any
    work: Work
    image_key: Hashable
    deadline: float
    admitted_at: float
    seq: int
    cancelled: bool = False
    queued: bool = True

    def __lt__(self, other: Ticket) -> bool:  # heap order: earliest deadline, then arrival
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class Rejected(Exception):
    """Not admitted. ``status`` 429 (retry after ``retry_after`` s) or 504 (the deadline
    cannot be met even on an idle server)."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.status, self.reason, self.message = status, reason, message
        self.retry_after = retry_after


@dataclass
class _Running:
    started: float
    predicted: float
    batch: list[Ticket]


@dataclass
class Scheduler:
    """EDF queue with cost-based admission. Not thread-safe: use it from one thread (the
    event loop); only the cost model is shared with the model thread."""

    cost: CostModel
    limits: Limits = field(default_factory=Limits)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._heap: list[Ticket] = []
        self._seq = itertools.count()
        self._queued = 0
        self._queued_work = Work()
        self._latest_deadline = -math.inf
        self._running: _Running | None = None
        self._shedding = False

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Jobs waiting (admitted, not cancelled, not yet in a batch)."""
        return self._queued

    def first_admitted_at(self) -> float | None:
        """When the job at the head of the queue (the next batch's first) was admitted."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].admitted_at if self._heap else None

    def backlog_seconds(self) -> float:
        """Estimated seconds until the model is free: running batch + everything queued."""
        return self._running_left(self.clock()) + self._drain_seconds(self._queued_work)

    def margin(self) -> float:
        """Relative safety margin on estimates, from the model's recent prediction error."""
        return min(0.5, max(0.05, 2.0 * self.cost.relative_error))

    # --------------------------------------------------------------- admission
    def check(self, work: Work, deadline: float) -> None:
        """Raise ``Rejected`` if a job like this would not be admitted now (queues nothing).

        Lets the caller refuse before spending CPU on decoding the upload.
        """
        self._assess(work, deadline, self.clock())

    def admit(self, payload: Any, work: Work, deadline: float, image_key: Hashable) -> Ticket:
        """Queue a job, or raise ``Rejected``."""
        now = self.clock()
        self._assess(work, deadline, now)
        ticket = Ticket(payload, work, image_key, deadline, now, next(self._seq))
        heapq.heappush(self._heap, ticket)
        self._queued += 1
        self._queued_work = self._queued_work + work
        self._latest_deadline = max(self._latest_deadline, deadline)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Its client is gone or its request timed out: it no longer counts as work."""
        if ticket.queued and not ticket.cancelled:
            self._dequeue(ticket)
        ticket.cancelled = True

    def _assess(self, work: Work, deadline: float, now: float) -> None:
        own = self.cost.predict(work)
        grow = 1.0 + self.margin()
        if own * grow > deadline - now:
            raise Rejected(
                504,
                "deadline_unreachable",
                f"this request needs about {own:.2f} s of model time on this server, more "
                f"than its deadline allows ({max(0.0, deadline - now):.2f} s)",
                retry_after=0.0,
            )
        shedding = self._shedding_delay(now)
        ahead, later = self._split(deadline)
        wait = self._running_left(now) + self._drain_seconds(ahead)
        late = (wait + own) * grow - (deadline - now)
        if self._queued >= self.limits.queue_size:
            retry = max(shedding, late, self._running_left(now) or own)
            raise self._busy("queue_full", f"{self._queued} requests are queued", retry)
        if shedding > 0.0 and shedding >= late:
            why = f"shedding load until the queued work is below {self._reopen_at():.2f} s"
            raise self._busy("overloaded", why, shedding)
        if late > 0.0:
            why = (
                f"about {wait:.2f} s of work is ahead of it, {deadline - now:.2f} s to its deadline"
            )
            raise self._busy("overloaded", why, late)
        if later and not self._later_jobs_keep_their_deadlines(work, deadline, now):
            delay = self.cost.marginal(work) * grow
            raise self._busy("overloaded", "it would delay admitted requests", delay)

    def _shedding_delay(self, now: float) -> float:
        """Seconds until the gate reopens (0 when it is open), updating the shedding state
        from the whole backlog: it closes past ``max_queue_wait_s`` and reopens at half."""
        backlog = self._running_left(now) + self._drain_seconds(self._queued_work)
        reopen = self._reopen_at()
        if self._shedding and backlog <= reopen:
            self._shedding = False
        elif not self._shedding and backlog > self.limits.max_queue_wait_s:
            self._shedding = True
        return backlog - reopen if self._shedding else 0.0

    def _reopen_at(self) -> float:
        return self.limits.max_queue_wait_s * REOPEN_FRACTION

    @staticmethod
    def _busy(reason: str, why: str, retry: float) -> Rejected:
        return Rejected(
            429,
            reason,
            f"the server is at capacity ({why}); retry in {retry:.2f} s",
            retry_after=retry,
        )

    def _split(self, deadline: float) -> tuple[Work, bool]:
        """(work queued ahead of a job with ``deadline`` in EDF order, whether any is after)."""
        if deadline >= self._latest_deadline:
            return self._queued_work, False
        ahead, later = Work(), False
        for ticket in self._heap:
            if ticket.cancelled:
                continue
            if ticket.deadline <= deadline:
                ahead = ahead + ticket.work
            else:
                later = True
        return ahead, later

    def _later_jobs_keep_their_deadlines(self, work: Work, deadline: float, now: float) -> bool:
        """Would every queued job with a later deadline still finish in time with ``work``
        served before it? Walks the queue in EDF order (only for early-deadline jobs)."""
        grow = 1.0 + self.margin()
        extra = self.cost.marginal(work)
        running = self._running_left(now)
        done = Work()
        for ticket in sorted(t for t in self._heap if not t.cancelled):
            done = done + ticket.work
            if ticket.deadline <= deadline:
                continue
            finish = now + (running + self._drain_seconds(done) + extra) * grow
            if finish > ticket.deadline:
                return False
        return True

    # ------------------------------------------------------------ batch forming
    def next_batch(self) -> tuple[list[Ticket], list[Ticket]]:
        """(the next batch, jobs dropped because they can no longer make their deadline).

        The batch is empty only when nothing live is queued.
        """
        now = self.clock()
        dropped = self._drop_hopeless(now)
        if not self._heap:
            return [], dropped
        budget = self._heap[0].deadline - now
        batch: list[Ticket] = []
        keys: set[Hashable] = set()
        work = Work()
        while self._heap:
            ticket = self._heap[0]
            if ticket.cancelled:
                heapq.heappop(self._heap)
                continue
            images = len(keys | {ticket.image_key})
            grown = work + ticket.work
            if batch and not self._fits(grown, images, budget):
                break
            heapq.heappop(self._heap)
            self._dequeue(ticket)
            batch.append(ticket)
            keys.add(ticket.image_key)
            work = grown
        self._running = _Running(now, self.cost.predict(self.batch_work(batch)), batch)
        return batch, dropped

    def _fits(self, work: Work, images: int, budget: float) -> bool:
        limits = self.limits
        if images > limits.max_batch_images or work.rows > limits.max_batch_rows:
            return False
        batch = Work(images, work.rows, work.megapixels, work.supports)
        return self.cost.predict(batch) * (1.0 + self.margin()) <= budget

    def _drop_hopeless(self, now: float) -> list[Ticket]:
        """Pop jobs at the head that cannot finish by their deadline even alone."""
        dropped = []
        while self._heap:
            ticket = self._heap[0]
            if not ticket.cancelled and now + self.cost.predict(ticket.work) <= ticket.deadline:
                break
            heapq.heappop(self._heap)
            if not ticket.cancelled:
                self._dequeue(ticket)
                dropped.append(ticket)
        return dropped

    @staticmethod
    def batch_work(batch: list[Ticket]) -> Work:
        """The work of a batch of tickets (shared images counted once)."""
        return batch_work((ticket.work, ticket.image_key) for ticket in batch)

    def finish(self, batch: list[Ticket], seconds: float | None) -> None:
        """The batch is over; ``seconds`` it took (None if it failed: nothing to learn).

        A pipelined worker finishes a batch after the next one has started: only the
        batch's own running estimate is cleared.
        """
        if self._running is not None and self._running.batch is batch:
            self._running = None
        if seconds is not None and batch:
            self.cost.observe(self.batch_work(batch), seconds)

    # ---------------------------------------------------------------- helpers
    def _dequeue(self, ticket: Ticket) -> None:
        ticket.queued = False
        self._queued -= 1
        self._queued_work = self._queued_work - ticket.work
        if self._queued == 0:
            # Exact zero again (no float drift), and no stale latest deadline.
            self._queued_work = Work()
            self._latest_deadline = -math.inf

    def _running_left(self, now: float) -> float:
        if self._running is None:
            return 0.0
        return max(0.0, self._running.started + self._running.predicted - now)

    def _drain_seconds(self, work: Work) -> float:
        """Seconds to compute queued ``work``: its marginal cost plus one per-batch cost
        per ``max_batch_images`` images."""
        if work.images <= 0 and work.rows <= 0:
            return 0.0
        batches = max(1.0, math.ceil(work.images / self.limits.max_batch_images))
        return self.cost.predict(work, batches=batches)
