"""The scheduler and its cost model on a fake clock: admission, ordering, batch sizing."""

from __future__ import annotations

import random

import numpy as np
import pytest

from service.cost import TERMS, CostModel, Work, batch_work
from service.scheduler import Limits, Rejected, Scheduler

# 0.1 s per batch + 1 s per image; margin = 2 x the initial 10% error = 20%.
PRIOR = (0.1, 1.0, 0.0, 0.0, 0.0)
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


def test_admits_while_the_backlog_fits_then_refuses_with_an_honest_retry_after():
    s, clock = scheduler(max_queue_wait_s=3.0)
    admitted = 0
    with pytest.raises(Rejected) as refused:
        for i in range(10):
            admit(s, clock, f"j{i}")
            admitted += 1
    # Each queued job adds 1 s of work (+0.1 s per batch of up to 8 images): the fourth
    # job would wait 3.1 s for the three ahead of it, more than 3 s.
    assert admitted == 3
    error = refused.value
    assert error.status == 429 and error.reason == "overloaded"
    assert s.backlog_seconds() == pytest.approx(3.1)
    # Shedding reopens once the queue is down to half of 3 s: in 1.6 s.
    assert error.retry_after == pytest.approx(1.6)
    s.next_batch()  # the 3 jobs start; the model is busy for their predicted 3.1 s
    clock.now += 1.0  # 2.1 s left: under 3 s, but still above the reopening point
    with pytest.raises(Rejected) as still:
        admit(s, clock, "too soon")
    assert still.value.retry_after == pytest.approx(0.6)
    clock.now += still.value.retry_after + 0.01  # drained to 1.5 s: admitted again
    admit(s, clock, "later")
    admit(s, clock, "and the next one too")  # 2.6 s <= 3 s: the gate stays open


def test_a_deadline_the_backlog_cannot_meet_is_429_and_one_nothing_can_meet_is_504():
    s, clock = scheduler()
    for i in range(8):
        admit(s, clock, f"j{i}", timeout=10.0)  # 8.1 s of work queued, all due first
    with pytest.raises(Rejected) as busy:
        admit(s, clock, "short", timeout=10.0)
    assert busy.value.status == 429
    # Needs (8.1 + 1.1) * 1.2 s, has 10 s: retry once the excess has drained.
    assert busy.value.retry_after == pytest.approx((8.1 + 1.1) * GROW - 10.0)
    with pytest.raises(Rejected) as never:
        admit(s, clock, "impossible", timeout=1.0)  # 1.1 s * 1.2 > 1 s even when idle
    assert never.value.status == 504 and never.value.reason == "deadline_unreachable"


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
def test_cost_model_learns_each_term_from_varied_batches():
    rng = random.Random(0)
    true = np.array([0.05, 0.45, 0.02, 0.03, 0.6])
    model = CostModel((0.01, 0.1, 0.01, 0.01, 0.1))
    errors = []
    for i in range(200):
        work = Work(rng.randint(1, 4), rng.randint(1, 8), rng.random() * 3, rng.randint(0, 2))
        seconds = float(true @ work.features()) * (1 + rng.gauss(0, 0.02))
        if i > 30:
            errors.append(abs(model.predict(work) - seconds) / seconds)
        model.observe(work, seconds)
    assert np.mean(errors) < 0.05
    learned = np.array([model.coefficients[t] for t in TERMS])
    assert np.abs(learned[1:] - true[1:]).max() < 0.1  # per image/row/megapixel/support


def test_unexercised_terms_keep_the_prior_and_coefficients_stay_non_negative():
    model = CostModel((0.01, 0.5, 0.01, 0.02, 0.7))
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
    assert model.predict(ONE) < 2.0


def test_batch_work_counts_shared_images_once():
    parts = [(ONE, "a"), (ONE, "a"), (Work(images=1, rows=3, supports=2), "b")]
    assert batch_work(parts) == Work(images=2, rows=5, supports=2)


def test_bad_priors_are_refused():
    with pytest.raises(ValueError):
        CostModel((1, 2, 3))
    with pytest.raises(ValueError):
        CostModel((0.1, -1, 0, 0, 0))


def test_shedding_is_a_property_of_the_whole_queue():
    """While shedding, every job is refused until the backlog is down to half of the
    queueing limit — an early-deadline job with nothing ahead of it does not reopen it."""
    s, clock = scheduler(max_queue_wait_s=3.0)
    for name in ("a", "b", "c"):
        admit(s, clock, name)
    with pytest.raises(Rejected):
        admit(s, clock, "trips the gate")  # backlog 3.1 s > 3 s
    with pytest.raises(Rejected) as urgent:
        admit(s, clock, "urgent", timeout=5.0)  # EDF would put it first: still refused
    assert urgent.value.retry_after == pytest.approx(3.1 - 1.5)
    with pytest.raises(Rejected):
        admit(s, clock, "normal")
    assert s.depth == 3
