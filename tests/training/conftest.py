"""Fixtures of the training tests: live progress lines for the long ones, and one short
training run that several modules use."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from clipseg_serve.training.run_log import RunLogger
from clipseg_serve.training.train import main as train_main


@pytest.fixture(scope="session")
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


QUICK = ["--init", "random:tiny", "--dataset", "synthetic", "--num-workers", "0"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, live_progress) -> Path:
    """A short CPU run on synthetic shapes with the tiny model (half a minute or more on a
    busy machine: it reports its steps live); shared by the modules that need trained
    weights."""
    output = tmp_path_factory.mktemp("run")
    args = [*QUICK, "--steps", "600", "--batch-size", "16", "--lr", "3e-3",
            "--eval-every", "300", "--eval-samples", "150", "--checkpoint-every", "300",
            "--num-workers", "1", "--log-every", "100", "--output", str(output)]  # fmt: skip
    with warnings.catch_warnings(), live_progress("training fixture (600 steps)", every=100):
        warnings.simplefilter("ignore")
        assert train_main(args) == 0
    return output
