"""Hypothesis settings shared by the property tests (tests/model, tests/service)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

__all__ = ["examples"]


def examples(count: int) -> settings:
    """Settings for a property test of ``count`` examples: deterministic (``derandomize``:
    the same examples on every run, so CI never flakes on a new one), no example database
    (nothing written under ``.hypothesis/``), no per-example deadline (a PAMR example on a
    300x300 image takes a few hundred ms on a loaded 2-core machine), and fixtures shared
    by every example of a test (the server, the predictor) allowed."""
    return settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
