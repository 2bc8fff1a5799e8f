"""After the queue: a request's masks encoded in the format it asked for, with its
timings (``Server-Timing``) and the host time that teaches the host cost model."""

from __future__ import annotations

import time
from dataclasses import dataclass

from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from clipseg_serve.model.inference.batch import Segmentation
from clipseg_serve.service import accept, codec
from clipseg_serve.service.encode_limits import EncodeLimits
from clipseg_serve.service.errors import ApiError
from clipseg_serve.service.jobs import Cost, Estimates
from clipseg_serve.service.state import ServiceState


@dataclass(frozen=True)
class Answer:
    """How the masks are sent: ``format`` (png | rle | polygon), the PNGs' bits per pixel
    and the polygons' tolerance."""

    format: str
    png_bits: int = 8
    polygon_tolerance: float = 1.0


@dataclass(frozen=True)
class Marks:
    """A request's progress (``time.perf_counter`` values): taken by the endpoint,
    decoded, its batch done; and its batch's model seconds."""

    started: float
    decoded: float
    done: float
    model_seconds: float


async def respond(
    request: Request,
    state: ServiceState,
    result: Segmentation,
    answer: Answer,
    marks: Marks,
    deadline: float,
    cost: Cost,
    estimates: Estimates,
) -> Response:
    """Encode the answer in the threadpool: inside the deadline (504 once it passes) and
    the polygon vertex cap (413), both checked as the masks are encoded. ``estimates``:
    what admission expected (reported in Server-Timing; the host time measured here
    teaches the host cost model)."""
    t0, decoded, done = marks.started, marks.decoded, marks.done
    single_png = (
        len(result.labels) == 1
        and answer.format == "png"
        and result.soft is None
        and result.instances is None
        and _accepts_png(request)
    )
    limits = EncodeLimits(deadline, state.settings.max_polygon_vertices)
    try:
        if single_png:
            body = await run_in_threadpool(codec.single_png, result, answer.png_bits, limits)
        else:
            body = await run_in_threadpool(
                codec.json_body, result, answer.format, answer.png_bits,
                answer.polygon_tolerance, limits,
            )  # fmt: skip
    except ApiError as exc:
        if exc.status == 504:
            state.metrics.rejected.labels(reason="deadline").inc()
        raise
    encoded = time.perf_counter()
    _, batcher = state.require_ready()
    batcher.observe_host(cost.host, (decoded - t0) + (encoded - done))
    timings = {
        "decode": decoded - t0,
        "queue_and_model": done - decoded,
        "model": marks.model_seconds,
        "estimate": estimates.model,
        "encode": encoded - done,
        "estimate_host": estimates.host,
        "total": encoded - t0,
    }
    for stage in ("decode", "encode", "total"):
        state.metrics.stage_seconds.labels(stage=stage).observe(timings[stage])
    server_timing = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timings.items())
    headers = {"Server-Timing": server_timing}
    if single_png:
        headers["X-Mask-Score"] = f"{float(result.scores[0]):.6f}"
        headers["X-Mask-Threshold"] = str(result.mask_threshold(0))
        return Response(body, media_type="image/png", headers=headers)
    timings_ms = {k: round(v * 1000, 3) for k, v in timings.items()}
    body = codec.with_field(body, "timings_ms", timings_ms)
    return Response(body, media_type="application/json", headers=headers)


def _accepts_png(request: Request) -> bool:
    """Raw PNG when ``Accept`` allows it (q > 0) at least as much as JSON.

    A tie goes to PNG, the single mask's own representation (``*/*``, no header). When
    neither is acceptable the answer is JSON: every answer of this API, errors included,
    can be JSON, and a 406 would only make the client ask again.
    """
    ranges = accept.parse_accept(request.headers.get("accept"))
    png = accept.quality(ranges, "image/png")
    return png > 0 and png >= accept.quality(ranges, "application/json")
