"""Before the queue: a validated form becomes an admitted job.

Each request: read the uploads' headers (threadpool) and check the request's cost against
the per-request limits (413), the scheduler (429 before any pixel is decoded) and the
memory budget; decode (threadpool) into one frozen ``SegmentRequest``; admit it by the
cost model's estimate (413/422: not even an idle server would meet the deadline; 429: the
queue would not); wait for the batch (504 past the deadline, 499 if the client left);
then ``service.answer`` encodes the result.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from fastapi import Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clipseg_serve.model.inference.batch import Segmentation, SegmentRequest
from clipseg_serve.model.inference.preparation import PreparedImage
from clipseg_serve.model.masks.postprocess import Refine
from clipseg_serve.model.network.text import Template
from clipseg_serve.service import codec
from clipseg_serve.service.answer import Answer, Marks, respond
from clipseg_serve.service.budget import ImageHeader, RequestShape, check_limits
from clipseg_serve.service.deadline import asked_timeout, request_deadline
from clipseg_serve.service.errors import ApiError
from clipseg_serve.service.jobs import Cost, SegmentJob
from clipseg_serve.service.state import ServiceState, get_state

#: The prompts whose texts the model may have to encode, and their template.
Texts = tuple[tuple[str, ...], Template]
#: Builds the frozen request once the images are decoded.
MakeRequest = Callable[[PreparedImage, str, torch.Tensor | None], SegmentRequest]


@dataclass(frozen=True)
class Started:
    """When the endpoint took the request: ``perf`` (perf_counter, for Server-Timing),
    ``arrived`` (monotonic, for the scheduler) and its ``deadline`` (monotonic)."""

    perf: float
    arrived: float
    deadline: float


def start(request: Request) -> tuple[ServiceState, Started]:
    """The state and the request's start; 503 unless ready."""
    perf, now = time.perf_counter(), time.monotonic()
    state = get_state(request)
    state.require_ready()
    deadline = request_deadline(request, state.settings.request_timeout_s, now)
    return state, Started(perf, now, deadline)


def check_prompts(
    state: ServiceState, prompts: tuple[str, ...], negatives: tuple[str, ...]
) -> None:
    """422 for too many prompts, an empty one or one too long."""
    limits = state.settings
    if len(prompts) + len(negatives) > limits.max_prompts:
        raise ApiError(
            422,
            "too_many_prompts",
            f"{len(prompts) + len(negatives)} prompts; at most {limits.max_prompts} per request",
        )
    for text in (*prompts, *negatives):
        if not text.strip():
            raise ApiError(422, "invalid_prompt", "prompts must not be empty")
        if len(text) > limits.max_prompt_chars:
            raise ApiError(
                422,
                "prompt_too_long",
                f"a prompt has {len(text)} characters; at most {limits.max_prompt_chars}",
            )


async def read_upload(upload: UploadFile, field: str) -> bytes:
    """The upload's bytes; 415 unless its content type is an image's."""
    codec.check_content_type(upload.content_type, field)
    return await upload.read()


async def probe(state: ServiceState, uploads: list[tuple[bytes, str]]) -> list[ImageHeader]:
    """The headers of every upload, read in one threadpool call."""
    predictor, _ = state.require_ready()
    return await run_in_threadpool(codec.probe, predictor, uploads)


async def serve(
    request: Request,
    shape: RequestShape,
    texts: Texts,
    uploads: tuple[bytes, list[tuple[bytes, bytes]]],
    make: MakeRequest,
    answer: Answer,
    started: Started,
) -> Response:
    """Budget, decode, queue, encode: the path shared by both endpoints."""
    t0, deadline = started.perf, started.deadline
    query, pairs = uploads
    state = get_state(request)
    predictor, batcher = state.require_ready()
    size = predictor.config.input_size
    nbytes = check_limits(state.settings, shape, size, answer.format)
    guide = shape.post.refine is not Refine.NONE
    cost = Cost(
        shape.work(predictor.texts_to_encode(*texts), predictor.config.grid_size),
        shape.host_work(size, answer.format),
        codec.image_key(query, guide),
        asked_timeout(request),
    )
    batcher.check(cost, deadline, started.arrived)  # refuse before decoding anything
    estimates = batcher.estimate(cost)  # before its batch teaches the model
    reservation = state.memory.reserve(nbytes)
    try:
        prepared, key = await run_in_threadpool(codec.prepare_query, predictor, query, guide)
        supports = None
        if pairs:
            supports = await run_in_threadpool(codec.prepare_supports, predictor, pairs)
        job = SegmentJob(make(prepared, key, supports), deadline, cost, started.arrived)
        decoded = time.perf_counter()
        result = await wait_for_result(request, state, job)
        marks = Marks(t0, decoded, time.perf_counter(), job.model_seconds)
        return await respond(request, state, result, answer, marks, deadline, cost, estimates)
    finally:
        reservation.release()


async def wait_for_result(request: Request, state: ServiceState, job: SegmentJob) -> Segmentation:
    """Admit the job and await its result; 504 past its deadline, 499 if the client left.
    Either way the job is abandoned, so it is never computed."""
    _, batcher = state.require_ready()
    future = batcher.submit(job)

    async def client_gone() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    watcher: asyncio.Future = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait(
            {future, watcher},
            timeout=max(0.0, job.deadline - time.monotonic()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        watcher.cancel()
    if future in done:
        return future.result()
    batcher.abandon(job)
    future.cancel()
    if watcher in done:
        state.metrics.rejected.labels(reason="disconnected").inc()
        raise ApiError(499, "client_closed_request", "the client closed the connection")
    state.metrics.rejected.labels(reason="deadline").inc()
    raise ApiError(504, "deadline_exceeded", "the request did not finish before its deadline")
