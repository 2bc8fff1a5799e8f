"""Admission and batch formation: bursts welcome, standing queues not. Pure logic, any clock.

A job is admitted when, by the cost model's estimate, it and every admitted job still
finish inside their deadlines in earliest-deadline-first order, counting what the worker
will really do: queued jobs that share an image share its backbone pass (a burst of
prompts for one picture costs one image, not twelve). Otherwise it is refused at once
(429) with an honest retry delay from the same estimate.

A queue that a burst builds and that drains is good; a queue that stands because demand
exceeds capacity only adds latency (CoDel's distinction; Facebook's "adaptive LIFO +
CoDel" switches to short queue timeouts once the queue has not been empty for a while).
Here the two modes are:

* **burst** (the normal state): a burst is what arrives at once. A job that finds the
  device caught up (nothing queued, at most one typical request's work still running)
  opens a burst window of ``BURST_WINDOW_S``; a job that arrived inside it
  may wait up to ``max_queue_wait_s`` (default: most of the request timeout) as long as
  the deadlines hold, so twelve prompts or eight images sent at once to an idle CPU
  server are all queued and served. A later arrival may wait up to the *settled* bound,
  a few typical requests (``SETTLED_REQUESTS``, at least ``SETTLED_MIN_S``): enough that
  a few clients in a closed loop are never refused, too little for the first second of
  an overload to build a long queue that everyone after it waits behind (CoDel likewise
  tolerates a queue above its target only for one ``interval``).
* **standing**: entered when that is not enough — a job is refused because the queue
  ahead of it passed its bound (the burst's or the settled one), or missed a deadline it
  had plenty of time for (at least ``max_queue_wait_s``): demand has outrun the device.
  Then a job is admitted only while the work ahead of it is at most the *target*, one and
  a half typical requests' time (at least ``MIN_TARGET_S``): the next batch, of one or
  two requests, is decoded and queued before the device frees (goodput), and a request
  that arrives after the load stops waits for at most about two requests (recovery).
  The mode ends once no job has been refused for the queue's length for ``QUIET_S`` (or
  ``QUIET_TARGETS`` targets, if longer).

A refusal's retry delay is the time until the queue will have drained enough to admit it.
Clients that need an answer sooner say so with a shorter deadline and get ahead by EDF,
in either mode, as long as no admitted job is pushed past its own deadline.

Batches take the most urgent live jobs first (EDF), grow only while the estimated batch
time fits the most urgent job's remaining time (and the image/row limits), and jobs that
can no longer make their deadline even alone are dropped before they cost anything.

Compared with what serving stacks do: Triton's queue policy rejects or times out by a
fixed queue delay and batch size; Ray Serve's back-pressure caps queued requests by
count; CoDel drops by measured sojourn after the fact. Here the decision uses the learned
cost of *this* request on *this* device against *its* deadline, before it waits.

No asyncio and no wall clock inside: ``clock`` is injected, so the unit tests drive it by
hand (tests/service/test_scheduler.py).
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any

from clipseg_serve.service.cost import CostModel, Work, batch_work

#: The standing queue's target: at least this many seconds of work ahead of a new job
#: (a fast device's batch must still be able to form), else ``TARGET_REQUESTS`` typical
#: requests' worth. Less than one request leaves the device idle while the next admitted
#: job is still being decoded; at one, every batch holds one request, and the per-batch
#: cost is never shared (2-core CPU, full-size model: batches of one serve ~85 % of what
#: batches of four do, of two ~95 %). More than two would make a request arriving after
#: an overload wait behind more than two others.
MIN_TARGET_S = 0.1
TARGET_REQUESTS = 1.5
#: Standing mode ends after this long without a refusal for the queue's length (or
#: ``QUIET_TARGETS`` targets, if longer).
QUIET_S = 1.0
QUIET_TARGETS = 4.0
#: Weight of the newest admitted job in the typical request's time.
TYPICAL_WEIGHT = 0.2
#: Jobs that arrive within this many seconds of the one that found the device caught up
#: are one burst: they may queue up to ``max_queue_wait_s``.
BURST_WINDOW_S = 0.5
#: Outside a burst window a job may find at most this many typical requests' work ahead
#: of it (at least ``SETTLED_MIN_S``), and never more than ``max_queue_wait_s``.
SETTLED_REQUESTS = 4.0
SETTLED_MIN_S = 2.0


@dataclass(frozen=True)
class Limits:
    """Batch and queue limits (see the ``CLIPSEG_*`` settings of the same names)."""

    max_batch_images: int = 32
    max_batch_rows: int = 256
    queue_size: int = 256
    max_queue_wait_s: float = 20.0


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
    cannot be met any more: the time left is shorter than the job alone needs)."""

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
        self._queued_work = Work()  # summed over queued jobs; images are counted in _keys
        self._keys: Counter[Hashable] = Counter()  # queued jobs per image
        self._latest_deadline = -math.inf
        self._running: _Running | None = None
        self._standing = False
        self._last_refusal = -math.inf  # clock() of the last refusal for the queue's length
        self._typical: float | None = None  # seconds of a typical admitted job, alone
        self._burst_opened = -math.inf  # arrival of the job that last opened a burst window

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Jobs waiting (admitted, not cancelled, not yet in a batch)."""
        return self._queued

    @property
    def standing(self) -> bool:
        """Whether the queue is held at the target (a sustained overload was seen)."""
        return self._standing

    def first_admitted_at(self) -> float | None:
        """When the job at the head of the queue (the next batch's first) was admitted."""
        while self._heap and self._heap[0].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0].admitted_at if self._heap else None

    def backlog_seconds(self) -> float:
        """Estimated seconds until the model is free: running batch + everything queued."""
        queued = self._queued_work.with_images(len(self._keys))
        return self._running_left(self.clock()) + self._drain_seconds(queued)

    def margin(self) -> float:
        """Relative safety margin on estimates, from the model's recent prediction error."""
        return min(0.5, max(0.05, 2.0 * self.cost.relative_error))

    def target(self) -> float:
        """Seconds of work a new job may find ahead of it while the queue is standing."""
        typical = self._typical or 0.0
        return max(MIN_TARGET_S, TARGET_REQUESTS * typical)

    def settled(self) -> float:
        """Seconds of work a job that arrived outside a burst window may find ahead of it."""
        typical = self._typical or 0.0
        bound = max(SETTLED_MIN_S, SETTLED_REQUESTS * typical)
        return min(self.limits.max_queue_wait_s, bound)

    def alone_seconds(self, work: Work) -> float:
        """Estimated seconds of model time for ``work`` on an idle server, margin included."""
        return self.cost.predict(work) * (1.0 + self.margin())

    # --------------------------------------------------------------- admission
    def check(
        self, work: Work, deadline: float, image_key: Hashable = None, arrived: float | None = None
    ) -> None:
        """Raise ``Rejected`` if a job like this would not be admitted now (queues nothing).

        Lets the caller refuse before spending CPU on decoding the upload. ``arrived``: when
        its request arrived (``clock()`` time; default now).
        """
        now = self.clock()
        self._assess(work, deadline, image_key, now, self._arrival(arrived, now))

    def admit(
        self,
        payload: Any,
        work: Work,
        deadline: float,
        image_key: Hashable,
        arrived: float | None = None,
    ) -> Ticket:
        """Queue a job, or raise ``Rejected``. ``arrived``: when its request arrived
        (``clock()`` time; default now): decoding between arrival and admission does not
        push a burst's late members out of its window."""
        now = self.clock()
        arrival = self._arrival(arrived, now)
        own = self._assess(work, deadline, image_key, now, arrival)
        if self._caught_up(now):
            self._burst_opened = arrival
        ticket = Ticket(payload, work, image_key, deadline, now, next(self._seq))
        heapq.heappush(self._heap, ticket)
        self._queued += 1
        self._queued_work = self._queued_work + work
        self._keys[image_key] += 1
        self._latest_deadline = max(self._latest_deadline, deadline)
        typical = self._typical
        self._typical = own if typical is None else typical + TYPICAL_WEIGHT * (own - typical)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Its client is gone or its request timed out: it no longer counts as work."""
        if ticket.queued and not ticket.cancelled:
            self._dequeue(ticket)
        ticket.cancelled = True

    @staticmethod
    def _arrival(arrived: float | None, now: float) -> float:
        return now if arrived is None else min(arrived, now)

    def _caught_up(self, now: float) -> bool:
        """Nothing queued and at most a typical request's work running. A batch that took
        the whole queue leaves it empty but the device behind: that opens no new burst."""
        return self._queued == 0 and self._running_left(now) <= (self._typical or 0.0)

    def _wait_limit(self, arrival: float, now: float) -> float:
        """Seconds of work a job that arrived at ``arrival`` may find ahead of it."""
        if self._standing:
            return self.target()
        opened = arrival if self._caught_up(now) else self._burst_opened
        if arrival - opened <= BURST_WINDOW_S:
            return self.limits.max_queue_wait_s
        return self.settled()

    def _assess(
        self, work: Work, deadline: float, key: Hashable, now: float, arrival: float
    ) -> float:
        """Refuse (``Rejected``) or return the job's own estimated seconds, alone."""
        own = self.cost.predict(work)
        grow = 1.0 + self.margin()
        left = deadline - now
        if own * grow > left:
            raise Rejected(
                504,
                "deadline_unreachable",
                f"this request needs about {own * grow:.2f} s of model time on this server "
                f"(with a {100 * (grow - 1):.0f} % margin) and has {max(0.0, left):.2f} s "
                "left before its deadline",
                retry_after=0.0,
            )
        self._update_mode(now)
        joins = self._keys[key] > 0 if key is not None else False
        added = work.with_images(0.0) if joins else work  # its image is queued already
        ahead, later = self._split(deadline)
        wait = self._running_left(now) + self._drain_seconds(ahead)
        late = (wait + self.cost.predict(added)) * grow - left
        if self._queued >= self.limits.queue_size:
            self._refused_for_length(now)
            retry = max(late, self._running_left(now) or own)
            raise self._busy("queue_full", f"{self._queued} requests are queued", retry)
        limit = self._wait_limit(arrival, now)
        if wait > limit:
            self._refused_for_length(now)
            why = f"about {wait:.2f} s of work is ahead of it"
            raise self._busy("overloaded", why, max(late, wait - self.target()))
        if late > 0.0:
            if left >= self.limits.max_queue_wait_s:
                self._refused_for_length(now)  # it had time to spare: demand is too high
            why = f"about {wait:.2f} s of work is ahead of it, {left:.2f} s to its deadline"
            raise self._busy("overloaded", why, late)
        if later and not self._later_jobs_keep_their_deadlines(added, deadline, now):
            delay = self.cost.marginal(added) * grow
            raise self._busy("overloaded", "it would delay admitted requests", delay)
        return own

    def _update_mode(self, now: float) -> None:
        """Leave standing mode after a quiet spell (no refusal for the queue's length)."""
        quiet = max(QUIET_S, QUIET_TARGETS * self.target())
        if self._standing and now - self._last_refusal > quiet:
            self._standing = False

    def _refused_for_length(self, now: float) -> None:
        self._standing = True
        self._last_refusal = now

    @staticmethod
    def _busy(reason: str, why: str, retry: float) -> Rejected:
        return Rejected(
            429,
            reason,
            f"the server is at capacity ({why}); retry in {retry:.2f} s",
            retry_after=retry,
        )

    def _split(self, deadline: float) -> tuple[Work, bool]:
        """(work queued ahead of a job with ``deadline`` in EDF order, shared images
        counted once; whether any queued job is due after it)."""
        if deadline >= self._latest_deadline:
            return self._queued_work.with_images(len(self._keys)), False
        tickets = [t for t in self._heap if not t.cancelled]
        ahead = [t for t in tickets if t.deadline <= deadline]
        return _work_of(ahead), len(ahead) < len(tickets)

    def _later_jobs_keep_their_deadlines(self, added: Work, deadline: float, now: float) -> bool:
        """Would every queued job with a later deadline still finish in time with ``added``
        served before it? Walks the queue in EDF order (only for early-deadline jobs)."""
        grow = 1.0 + self.margin()
        extra = self.cost.marginal(added)
        running = self._running_left(now)
        done: list[Ticket] = []
        for ticket in sorted(t for t in self._heap if not t.cancelled):
            done.append(ticket)
            if ticket.deadline <= deadline:
                continue
            finish = now + (running + self._drain_seconds(_work_of(done)) + extra) * grow
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
        return self.cost.predict(work.with_images(images)) * (1.0 + self.margin()) <= budget

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

    def finish(self, batch: list[Ticket], seconds: float | None) -> float | None:
        """The batch is over; ``seconds`` it took (None if it failed: nothing to learn).
        Returns the cost model's predicted / actual for it (None when nothing was learned).

        A pipelined worker finishes a batch after the next one has started: only the
        batch's own running estimate is cleared.
        """
        if self._running is not None and self._running.batch is batch:
            self._running = None
        if seconds is not None and batch:
            return self.cost.observe(self.batch_work(batch), seconds)
        return None

    # ---------------------------------------------------------------- helpers
    def _dequeue(self, ticket: Ticket) -> None:
        ticket.queued = False
        self._queued -= 1
        self._queued_work = self._queued_work - ticket.work
        self._keys[ticket.image_key] -= 1
        if self._keys[ticket.image_key] <= 0:
            del self._keys[ticket.image_key]
        if self._queued == 0:
            # Exact zero again (no float drift), and no stale latest deadline.
            self._queued_work = Work()
            self._latest_deadline = -math.inf

    def _running_left(self, now: float) -> float:
        if self._running is None:
            return 0.0
        return max(0.0, self._running.started + self._running.predicted - now)

    def _drain_seconds(self, work: Work) -> float:
        """Seconds to compute queued ``work`` (images already counted once each): its
        marginal cost plus one per-batch cost per ``max_batch_images`` images."""
        if work.images <= 0 and work.rows <= 0:
            return 0.0
        batches = max(1.0, math.ceil(work.images / self.limits.max_batch_images))
        return self.cost.predict(work, batches=batches)


def _work_of(tickets: Iterable[Ticket]) -> Work:
    return batch_work((ticket.work, ticket.image_key) for ticket in tickets)
