"""Fixtures of the training tests: live progress lines for the long ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from training.run_log import RunLogger


@pytest.fixture(scope="module")
def live_progress(pytestconfig) -> Callable[[str, int], AbstractContextManager[None]]:
    """``with live_progress(name, every): ...`` prints "name: step N/T, loss L, S s" to the
    terminal every ``every`` training steps, even though pytest captures output (as its
    own live logging does): a long test is visibly working, not hung."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    terminal = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def say(line: str) -> None:
        if terminal is None:
            return
        with capture.global_and_fixture_disabled():
            terminal.write_line(line)

    @contextmanager
    def watch(name: str, every: int) -> Iterator[None]:
        started, original = time.perf_counter(), RunLogger.step

        def step(self: RunLogger, step: int, values: dict[str, float]) -> None:
            original(self, step, values)
            if self.enabled and step % every == 0:
                seconds = time.perf_counter() - started
                say(f"  {name}: step {step}, loss {values['loss']:.3f}, {seconds:.0f} s")

        RunLogger.step = step
        say("")
        try:
            yield
        finally:
            RunLogger.step = original

    return watch
