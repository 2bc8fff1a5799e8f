"""Per-stage CPU time inside a benchmark server: thread CPU clocks around each stage.

``install(app)`` wraps the functions each request stage runs in (module attributes looked
up at call time, so the service code is unchanged) with ``time.thread_time`` deltas, summed
per stage, and adds ``GET /bench/cpu`` returning the sums, the call counts and the
process's CPU time (``time.process_time``). Thread CPU time is what the stage itself
burned on its own thread, whatever else runs meanwhile — except for the async multipart
parser, whose delta on the event-loop thread also counts any coroutine that ran while it
awaited the body (small with one request at a time, as ``bench/host_path.py`` sends).

Stages: ``parse`` (starlette's multipart parser), ``probe`` (header read), ``decode``
(``decode_image``: bytes -> reduced RGB), ``query`` (all of ``codec.prepare_query``:
decode + resize + content hash), ``launch`` (``Predictor.launch`` on the model thread:
upload, normalise, model calls, render/threshold/pack, copies back started), ``collect``
(``Predictor.collect``: wait for the copies, build the results), ``encode`` (RLE/PNG
bodies). Only for benchmarks: ``bench/null_server.py --stage-cpu``.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from starlette.formparsers import MultiPartParser

from clipseg_serve.model.inference import preparation
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service import codec

_lock = threading.Lock()
_seconds: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)


def _add(stage: str, seconds: float) -> None:
    with _lock:
        _seconds[stage] += seconds
        _calls[stage] += 1


def timed(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (sync) with its thread CPU time added to ``stage``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(stage, time.thread_time() - start)

    return wrapper


def timed_async(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a coroutine function) with its event-loop thread CPU time added to ``stage``."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return await fn(*args, **kwargs)
        finally:
            _add(stage, time.thread_time() - start)

    return wrapper


def install(app: FastAPI) -> None:
    """Wrap the stages (process-wide) and add ``GET /bench/cpu`` to ``app``."""
    MultiPartParser.parse = timed_async("parse", MultiPartParser.parse)  # type: ignore[method-assign]
    codec.probe = timed("probe", codec.probe)
    codec.prepare_query = timed("query", codec.prepare_query)
    codec.mask_entries = timed("encode", codec.mask_entries)
    codec.single_png = timed("encode", codec.single_png)
    preparation.decode_image = timed("decode", preparation.decode_image)
    # The worker calls execute (plain) or launch + collect (pipelined); execute is
    # collect(launch()), so wrapping the two parts counts either path once.
    for name in ("launch", "collect"):
        method = getattr(Predictor, name)
        setattr(Predictor, name, timed(name, method))

    @app.get("/bench/cpu", include_in_schema=False)
    async def cpu() -> dict:
        with _lock:
            return {
                "process": time.process_time(),
                "seconds": dict(_seconds),
                "calls": dict(_calls),
            }
