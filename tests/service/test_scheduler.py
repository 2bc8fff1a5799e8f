"""The scheduler and its cost model on a fake clock: admission, ordering, batch sizing."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from clipseg_serve.service.cost import TERMS, CostModel, Work, batch_work
from clipseg_serve.service.scheduler import (
    BURST_WINDOW_S,
    QUIET_S,
    QUIET_TARGETS,
    SETTLED_MIN_S,
    Limits,
    Rejected,
    Scheduler,
)

# 0.1 s per batch + 1 s per image; margin = 2 x the initial 10% error = 20%.
PRIOR = (0.1, 1.0) + (0.0,) * (len(TERMS) - 2)
GROW = 1.2
ONE = Work(images=1, rows=1)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def scheduler(**limits) -> tuple[Scheduler, Clock]:
    clock = Clock()
    defaults = {"max_batch_images": 8, "queue_size": 100, "max_queue_wait_s": 10.0}
    return Scheduler(CostModel(PRIOR), Limits(**{**defaults, **limits}), clock), clock


def admit(s: Scheduler, clock: Clock, name: str, timeout: float = 30.0, key: str | None = None):
    return s.admit(name, ONE, clock.now + timeout, key or name)


def run_batch(s: Scheduler, clock: Clock) -> list[str]:
    """Start the next batch, let its predicted time pass, finish it: its payloads."""
    batch, _ = s.next_batch()
    clock.now += s.cost.predict(Scheduler.batch_work(batch)) if batch else 0.0
    s.finish(batch, None)
    return [t.payload for t in batch]


def test_a_burst_that_fits_its_deadlines_is_queued_whole():
    """Eight distinct images at once (8.1 s of work on this 'device') and twelve prompts
    for one image: every job is admitted, though each is many times a 2 s queue."""
    s, clock = scheduler()
    for i in range(8):
        admit(s, clock, f"image {i}")
    assert s.depth == 8 and not s.standing
    assert s.backlog_seconds() == pytest.approx(8.1)
    assert len(run_batch(s, clock)) == 8
    for i in range(12):
        s.admit(f"prompt {i}", ONE, clock.now + 30, "one image")
    assert s.depth == 12
    # One backbone pass for all twelve: the queue holds 1.1 s, not 12 s.
    assert s.backlog_seconds() == pytest.approx(1.1)


def test_a_burst_counts_by_arrival_not_by_when_its_members_were_decoded():
    """Eight images arrive at once; decoding admits them 0.3 s apart. All eight are one
    burst: the last finds 7.1 s ahead, more than the settled bound, and is still queued."""
    s, clock = scheduler(max_queue_wait_s=20.0)
    arrived = clock.now
    for i in range(8):
        s.admit(f"image {i}", ONE, arrived + 30, f"image {i}", arrived=arrived)
        clock.now += 0.3
    assert s.depth == 8 and not s.standing


@pytest.mark.parametrize("per_image", [1.0, 0.2])
def test_the_onset_of_an_overload_queues_only_what_arrived_in_the_burst_window(per_image):
    """An open loop at 10x this device's capacity hits an idle server with a 20 s burst
    bound. Only the window's arrivals may queue long — also when the first batches end
    inside the window and take the whole queue with them (the device is still behind:
    no new burst) — then the settled bound applies, the first refusal turns the queue
    standing, and no admitted job waits anywhere near the 20 s a burst may."""
    prior = (0.1 * per_image, per_image) + (0.0,) * (len(TERMS) - 2)
    clock = Clock()
    limits = Limits(max_batch_images=32, queue_size=1000, max_queue_wait_s=20.0)
    s = Scheduler(CostModel(prior), limits, clock)
    job = 1.1 * per_image
    interval = job / 10
    admitted: list[float] = []
    waits: list[float] = []
    start = clock.now
    for step in range(int(30 / interval)):
        clock.now = start + interval * step
        try:
            waits.append(s.backlog_seconds())
            s.admit(f"j{step}", ONE, clock.now + 30, f"j{step}")
            admitted.append(clock.now - start)
        except Rejected:
            pass
        if s._running is None or s._running_left(clock.now) == 0.0:
            s.finish(s._running.batch if s._running else [], None)
            s.next_batch()
    in_window = [t for t in admitted if t <= BURST_WINDOW_S]
    assert len(in_window) == int(BURST_WINDOW_S / interval) + 1
    assert s.standing
    settled = max(SETTLED_MIN_S, 4 * job)
    # The worst wait: the window's jobs plus one settled bound, not the burst bound.
    assert max(waits) <= len(in_window) * job + settled + 1e-9 < 20.0
    assert len(admitted) >= 0.8 * 30 / job  # the device stayed busy


def test_a_sustained_overload_turns_the_queue_standing_and_keeps_it_short():
    s, clock = scheduler(max_queue_wait_s=5.0)
    admitted = 0
    with pytest.raises(Rejected) as refused:
        for i in range(20):
            admit(s, clock, f"j{i}")
            admitted += 1
    # The sixth job would find 5.1 s ahead (+0.1 per batch of 8) > 5 s: the burst bound.
    assert admitted == 5 and refused.value.reason == "overloaded"
    assert s.standing
    target = s.target()
    assert target == pytest.approx(1.5 * 1.1)  # one and a half typical jobs
    # Its retry delay: until the queue has drained to the target.
    assert refused.value.retry_after == pytest.approx(5.1 - target)
    s.next_batch()  # the five jobs start: 5.1 s
    arrivals = 0
    while True:  # an arrival every 0.25 s: refused until the queue is down to the target
        clock.now += 0.25
        arrivals += 1
        try:
            admit(s, clock, f"arrival {arrivals}")
            break
        except Rejected as busy:
            assert busy.retry_after == pytest.approx(s.backlog_seconds() - target)
    assert s.backlog_seconds() - 1.1 <= target  # the running batch's rest, then this job
    assert arrivals >= (5.1 - target) / 0.25
    with pytest.raises(Rejected) as short:
        admit(s, clock, "queued behind it")
    assert short.value.retry_after == pytest.approx(s.backlog_seconds() - target)
    # Under a steady stream the queue never holds more than the target plus one job.
    served = 0
    for step in range(200):
        clock.now += 0.05
        with contextlib.suppress(Rejected):
            admit(s, clock, f"stream {step}")
        assert s.backlog_seconds() <= target + 1.1 + 1e-9
        if s._running is None or s._running_left(clock.now) == 0.0:
            s.finish(s._running.batch if s._running else [], None)
            served += len(s.next_batch()[0])
    assert served >= 8  # ~10 s of a 1.1 s-per-job device: it stayed busy


def test_standing_ends_after_a_quiet_spell():
    s, clock = scheduler(max_queue_wait_s=2.0)
    for i in range(3):
        with contextlib.suppress(Rejected):
            admit(s, clock, f"j{i}")
    assert s.standing
    run_batch(s, clock)
    clock.now += QUIET_S + QUIET_TARGETS * s.target()  # nothing refused since
    for i in range(2):
        admit(s, clock, f"burst {i}")  # 2.2 s ahead of the second: a burst again
    assert not s.standing


def test_closed_loop_clients_are_served_without_refusals():
    """Four clients, each sending its next request when its answer arrives: the queue is
    bounded by the clients, not a standing overload; nobody gets a 429."""
    s, clock = scheduler(max_batch_images=2)
    waiting = [f"client {i}" for i in range(4)]
    for cycle in range(50):
        for name in waiting:
            admit(s, clock, f"{name} #{cycle}")
        waiting = [payload.split(" #")[0] for payload in run_batch(s, clock)]
    assert not s.standing


def test_a_deadline_the_backlog_cannot_meet_is_429_and_one_nothing_can_meet_is_504():
    s, clock = scheduler(max_queue_wait_s=20.0)
    for i in range(8):
        admit(s, clock, f"j{i}", timeout=10.0)  # 8.1 s of work queued, all due first
    with pytest.raises(Rejected) as busy:
        admit(s, clock, "short", timeout=10.0)
    assert busy.value.status == 429
    # Needs (8.1 + 1.1) * 1.2 s, has 10 s: retry once the excess has drained.
    assert busy.value.retry_after == pytest.approx((8.1 + 1.1) * GROW - 10.0)
    assert not s.standing  # an impatient client, not an overload
    with pytest.raises(Rejected) as never:
        admit(s, clock, "impossible", timeout=1.0)  # 1.1 s * 1.2 > 1 s even when idle
    assert never.value.status == 504 and never.value.reason == "deadline_unreachable"
    assert "1.32 s of model time" in never.value.message  # the estimate with its margin


def test_a_short_deadline_gets_ahead_by_edf_even_while_standing():
    s, clock = scheduler(max_queue_wait_s=1.0)
    admit(s, clock, "a")
    with pytest.raises(Rejected):
        admit(s, clock, "b")  # 1.1 s ahead > 1 s: standing from now on
    assert s.standing
    urgent = admit(s, clock, "urgent", timeout=2.0)  # nothing is due before it
    batch, _ = s.next_batch()
    assert batch[0] is urgent


def test_queue_size_caps_the_count():
    s, clock = scheduler(queue_size=2)
    admit(s, clock, "a")
    admit(s, clock, "b")
    with pytest.raises(Rejected) as full:
        admit(s, clock, "c")
    assert full.value.reason == "queue_full" and full.value.retry_after > 0


def test_check_refuses_like_admit_but_queues_nothing():
    s, clock = scheduler(max_queue_wait_s=0.5)
    s.check(ONE, clock.now + 30)
    assert s.depth == 0
    admit(s, clock, "a")
    with pytest.raises(Rejected):
        s.check(ONE, clock.now + 30)
    assert s.depth == 1


def test_earliest_deadline_first():
    s, clock = scheduler(max_batch_images=1)
    admit(s, clock, "late", timeout=30)
    admit(s, clock, "early", timeout=10)
    admit(s, clock, "middle", timeout=20)
    order = []
    for _ in range(3):
        batch, _ = s.next_batch()
        order += [t.payload for t in batch]
        s.finish(batch, None)
    assert order == ["early", "middle", "late"]


def test_batches_are_sized_by_the_most_urgent_slack():
    s, clock = scheduler()
    admit(s, clock, "urgent", timeout=3.0)
    for i in range(5):
        admit(s, clock, f"j{i}")
    batch, dropped = s.next_batch()
    # (0.1 + n) * 1.2 <= 3 s -> at most 2 images, so "urgent" is not delayed past 3 s.
    assert [t.payload for t in batch] == ["urgent", "j0"] and not dropped
    s.finish(batch, None)
    batch, _ = s.next_batch()
    assert len(batch) == 4  # no urgent job now: limited by 30 s of slack, not by 2


def test_shared_images_count_once_and_limits_apply():
    s, clock = scheduler(max_batch_images=2)
    for name in ("a", "b", "c"):
        s.admit(name, ONE, clock.now + 30, "same image")
    s.admit("d", ONE, clock.now + 30, "other")
    s.admit("e", ONE, clock.now + 30, "third")
    batch, _ = s.next_batch()
    assert [t.payload for t in batch] == ["a", "b", "c", "d"]
    assert Scheduler.batch_work(batch) == Work(images=2, rows=4)


def test_jobs_that_cannot_make_it_are_dropped_before_compute():
    s, clock = scheduler(max_batch_images=1)
    admit(s, clock, "first")
    admit(s, clock, "doomed", timeout=2.5)
    admit(s, clock, "fine")
    batch, dropped = s.next_batch()
    assert [t.payload for t in batch] == ["doomed"]  # earliest deadline first
    s.finish(batch, None)
    admit(s, clock, "tight", timeout=2.0)
    clock.now += 1.5  # 0.5 s left, the job needs 1.1 s: hopeless
    batch, dropped = s.next_batch()
    assert [t.payload for t in dropped] == ["tight"]
    assert [t.payload for t in batch] == ["first"]
    assert s.depth == 1


def test_cancelled_jobs_free_their_place_and_are_never_batched():
    s, clock = scheduler(max_queue_wait_s=2.5)
    a = admit(s, clock, "a")
    admit(s, clock, "b")
    with pytest.raises(Rejected):
        admit(s, clock, "c")
        admit(s, clock, "d")
    s.cancel(a)
    assert s.depth == 2
    batch, _ = s.next_batch()
    assert "a" not in [t.payload for t in batch]


def test_an_early_deadline_may_not_push_admitted_jobs_past_theirs():
    s, clock = scheduler(max_batch_images=1)
    admit(s, clock, "a", timeout=2.7)  # needs 1.1 s * 1.2 = 1.32 s
    admit(s, clock, "b", timeout=2.8)  # finishes at ~2.5 s with a ahead of it
    with pytest.raises(Rejected) as refused:
        admit(s, clock, "cutting in", timeout=2.65)
    assert refused.value.status == 429


def test_the_running_batch_counts_until_it_should_be_done():
    s, clock = scheduler()
    admit(s, clock, "a")
    s.next_batch()  # predicted 1.1 s
    assert s.backlog_seconds() == pytest.approx(1.1)
    clock.now += 0.6
    assert s.backlog_seconds() == pytest.approx(0.5)
    clock.now += 5
    assert s.backlog_seconds() == 0.0


def test_finish_teaches_the_cost_model():
    s, clock = scheduler()
    for _ in range(20):
        admit(s, clock, "x")
        batch, _ = s.next_batch()
        s.finish(batch, 2.0)  # the device is ~2x slower than the prior says
    assert s.cost.predict(ONE) == pytest.approx(2.0, rel=0.05)


# ---------------------------------------------------------------------- cost model
def test_cost_model_follows_a_device_that_is_uniformly_slower():
    model = CostModel(PRIOR)
    for _ in range(40):
        model.observe(Work(images=2, rows=3), 2 * 2.1)
    assert model.predict(Work(images=5)) == pytest.approx(2 * 5.1, rel=0.05)


def test_cost_model_corrects_the_term_that_dominates_and_keeps_the_others():
    prior = np.zeros(len(TERMS))
    prior[TERMS.index("per_batch")] = 0.1
    prior[TERMS.index("per_image")] = 1.0
    prior[TERMS.index("per_pamr_mp")] = 0.01  # the calibration got PAMR 10x too cheap
    model = CostModel(tuple(prior))
    pamr = Work(images=1, rows=1, pamr_mp=100.0)  # truly 0.1 s/MP: 10 s + 1.1 s
    plain = Work(images=1, rows=1)
    for _ in range(60):
        model.observe(pamr, 11.1)
        model.observe(plain, 1.1)
    assert model.predict(pamr) == pytest.approx(11.1, rel=0.1)
    assert model.predict(plain) == pytest.approx(1.1, rel=0.1)


def test_unexercised_terms_keep_the_prior_and_coefficients_stay_non_negative():
    prior = (0.01, 0.5, 0.01, 0.0, 0.7) + (0.02,) * (len(TERMS) - 5)
    model = CostModel(prior)
    for _ in range(50):
        model.observe(Work(images=1, rows=1), 0.01)  # cheaper than the prior: pushes down
    coef = model.coefficients
    assert coef["per_support"] == pytest.approx(0.7)  # never seen a support
    assert all(v >= 0 for v in coef.values())
    assert model.predict(Work(images=1, rows=1)) == pytest.approx(0.01, rel=0.25)


def test_one_stalled_batch_does_not_make_everything_look_unaffordable():
    model = CostModel(PRIOR)
    for _ in range(10):
        model.observe(ONE, 1.1)
    model.observe(ONE, 60.0)  # a batch that hung for a minute
    assert model.predict(ONE) < 1.5


def test_observe_returns_estimate_over_actual():
    model = CostModel(PRIOR)
    assert model.observe(ONE, 2.2) == pytest.approx(0.5)
    assert model.observe(Work(), 1.0) is None or model.observe(Work(), 1.0) > 0


def test_batch_work_counts_shared_images_once():
    parts = [(ONE, "a"), (ONE, "a"), (Work(images=1, rows=3, supports=2), "b")]
    assert batch_work(parts) == Work(images=2, rows=5, supports=2)


def test_bad_priors_are_refused():
    with pytest.raises(ValueError):
        CostModel((1, 2, 3))
    with pytest.raises(ValueError):
        CostModel((0.1, -1) + (0.0,) * (len(TERMS) - 2))
