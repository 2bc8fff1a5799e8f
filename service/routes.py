"""The segmentation endpoints.

Each request: validate the form; read the image headers (threadpool) and check the
request's cost against the per-request limits (413), the scheduler (429 before any pixel
is decoded) and the memory budget; decode (threadpool) into one frozen
``SegmentRequest``; admit it by the cost model's estimate (413/422: not even an idle server
would meet the deadline; 429: the queue would not); wait for the batch
(504 past the deadline, 499 if the client left); encode (threadpool).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from clipseg_serve.model.inference.batch import Segmentation, SegmentRequest
from clipseg_serve.model.inference.predictor import PreparedImage
from clipseg_serve.model.masks.postprocess import (
    BACKGROUND_PROMPT,
    Background,
    Combine,
    PostProcess,
    Refine,
    check_background,
    check_thresholds,
)
from clipseg_serve.model.network.text import Template
from clipseg_serve.service import accept, codec
from clipseg_serve.service.budget import ImageHeader, RequestShape, check_limits, shape_of
from clipseg_serve.service.encode_limits import EncodeLimits
from clipseg_serve.service.errors import ApiError
from clipseg_serve.service.jobs import Cost, SegmentJob
from clipseg_serve.service.post_form import PostFields, check_answer, post_fields
from clipseg_serve.service.schemas import ERROR_RESPONSES, SegmentResponse
from clipseg_serve.service.state import ServiceState, get_state

router = APIRouter()

#: The versioned paths are the documented ones; the unversioned ones (the first release's)
#: stay as deprecated aliases served by the same functions, so they answer identically.
API_PREFIX = "/v1"

#: Request header asking for a shorter deadline than the server's, in seconds.
DEADLINE_HEADER = "X-Request-Timeout"
#: Every path of the segmentation endpoints (versioned and the deprecated aliases).
SEGMENT_PATHS = frozenset(
    f"{prefix}/segment/{kind}" for prefix in (API_PREFIX, "") for kind in ("text", "visual")
)

Threshold = Annotated[
    float | None,
    Form(ge=0.0, le=1.0, description="mask threshold; default: the checkpoint's calibrated one"),
]
Thresholds = Annotated[
    list[Annotated[float, Form(ge=0.0, le=1.0)]] | None,
    Form(
        description="mask threshold: one for every prompt, or repeated once per prompt (in "
        "their order); default: the checkpoint's calibrated one"
    ),
]
Format = Annotated[
    Literal["png", "rle", "polygon"],
    Form(
        description="png: a PNG per mask (the raw body when there is one mask); rle: COCO "
        "RLE; polygon: COCO polygon lists (holes keyholed in; see polygon_tolerance)"
    ),
]
Post = Annotated[PostFields, Depends(post_fields)]
Soft = Annotated[bool, Form(description="also return each probability map as an 8-bit PNG")]


class PngBits(enum.IntEnum):
    """Bits per pixel of mask PNGs (an IntEnum: form fields arrive as text, "1" or "8")."""

    EIGHT = 8
    ONE = 1


PngBitsField = Annotated[
    PngBits,
    Form(
        description="bits per pixel of mask PNGs: 8 (grayscale 0/255) or 1 (1-bit grayscale: "
        "the same mask at an eighth of the bytes to compress; Pillow opens it in mode '1')"
    ),
]


@dataclass(frozen=True)
class Answer:
    """How the masks are sent: ``format`` (png | rle | polygon), the PNGs' bits per pixel
    and the polygons' tolerance."""

    format: str
    png_bits: int = 8
    polygon_tolerance: float = 1.0


PNG_OR_JSON = {
    200: {
        "description": "One mask + format=png: the PNG itself. Otherwise JSON.",
        "content": {"image/png": {}, "application/json": {}},
        "model": SegmentResponse,
    },
    **ERROR_RESPONSES,
}
#: The prompts whose texts the model may have to encode, and their template.
Texts = tuple[tuple[str, ...], Template]
#: Builds the frozen request once the images are decoded.
MakeRequest = Callable[[PreparedImage, str, torch.Tensor | None], SegmentRequest]


def request_deadline(request: Request, state: ServiceState, start: float) -> float:
    """The request's deadline (monotonic): the server's timeout, or less if asked."""
    asked = asked_timeout(request)
    timeout = state.settings.request_timeout_s
    return start + (timeout if asked is None else min(timeout, asked))


def asked_timeout(request: Request) -> float | None:
    """The client's ``X-Request-Timeout`` in seconds (None when not sent); 422 when it is
    not a positive number."""
    raw = request.headers.get(DEADLINE_HEADER)
    if raw is None:
        return None
    try:
        asked = float(raw)
    except ValueError:
        asked = math.nan
    if not math.isfinite(asked) or asked <= 0:
        raise ApiError(
            422,
            "invalid_header",
            f"{DEADLINE_HEADER} must be a positive number of seconds, got {raw[:40]!r}",
        )
    return asked


def _check_prompts(
    state: ServiceState, prompts: tuple[str, ...], negatives: tuple[str, ...]
) -> None:
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


async def _read(upload: UploadFile, field: str) -> bytes:
    codec.check_content_type(upload.content_type, field)
    return await upload.read()


async def _wait(request: Request, state: ServiceState, job: SegmentJob) -> Segmentation:
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


async def _serve(
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
    estimates = batcher.estimate(cost)  # as admission sees it, before its batch is learned
    reservation = state.memory.reserve(nbytes)
    try:
        prepared, key = await run_in_threadpool(codec.prepare_query, predictor, query, guide)
        supports = None
        if pairs:
            supports = await run_in_threadpool(codec.prepare_supports, predictor, pairs)
        job = SegmentJob(make(prepared, key, supports), deadline, cost, started.arrived)
        decoded = time.perf_counter()
        result = await _wait(request, state, job)
        done = time.perf_counter()
        marks = (t0, decoded, done, job.model_seconds)
        return await _respond(request, state, result, answer, marks, deadline, (cost, estimates))
    finally:
        reservation.release()


async def _respond(
    request: Request,
    state: ServiceState,
    result: Segmentation,
    answer: Answer,
    marks: tuple[float, float, float, float],
    deadline: float,
    costs: tuple[Cost, tuple[float, float]],
) -> Response:
    """Encode the answer in the threadpool: inside the deadline (504 once it passes) and
    the polygon vertex cap (413), both checked as the masks are encoded. ``costs``: the
    request's cost and the (model, host) seconds estimated at admission (reported in
    Server-Timing; the host time measured here teaches the host model)."""
    t0, decoded, done, model_seconds = marks
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
    cost, (estimate, estimate_host) = costs
    _, batcher = state.require_ready()
    batcher.observe_host(cost.host, (decoded - t0) + (encoded - done))
    timings = {
        "decode": decoded - t0,
        "queue_and_model": done - decoded,
        "model": model_seconds,
        "estimate": estimate,
        "encode": encoded - done,
        "estimate_host": estimate_host,
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


async def _probe(state: ServiceState, uploads: list[tuple[bytes, str]]) -> list[ImageHeader]:
    """The headers of every upload, read in one threadpool call."""
    predictor, _ = state.require_ready()
    return await run_in_threadpool(codec.probe, predictor, uploads)


@dataclass(frozen=True)
class Started:
    """When the endpoint took the request: ``perf`` (perf_counter, for Server-Timing),
    ``arrived`` (monotonic, for the scheduler) and its ``deadline`` (monotonic)."""

    perf: float
    arrived: float
    deadline: float


def _start(request: Request) -> tuple[ServiceState, Started]:
    """The state and the request's start; 503 unless ready."""
    perf, now = time.perf_counter(), time.monotonic()
    state = get_state(request)
    state.require_ready()
    return state, Started(perf, now, request_deadline(request, state, now))


TEXT_SUMMARY = "Segment an image from text prompts"
VISUAL_SUMMARY = "Segment an image from support image(s) with masks (one-shot / k-shot)"


def alias_of(path: str) -> str:
    """The summary suffix of a deprecated unversioned alias."""
    return f" (deprecated alias of {path}, same answers)"


@router.post(
    f"{API_PREFIX}/segment/text", summary=TEXT_SUMMARY, responses=PNG_OR_JSON, response_model=None
)
@router.post(
    "/segment/text",
    summary=TEXT_SUMMARY + alias_of(f"{API_PREFIX}/segment/text"),
    responses=PNG_OR_JSON,
    response_model=None,
    deprecated=True,
)
async def segment_text(
    request: Request,
    image: Annotated[UploadFile, File(description="the image to segment")],
    prompt: Annotated[list[str], Form(description="text prompt; repeat for several masks")],
    fields: Post,
    negative_prompt: Annotated[
        list[str] | None, Form(description="remove what matches; repeatable")
    ] = None,
    combine: Annotated[
        Literal["none", "union", "intersection", "argmax"],
        Form(description="none: a mask per prompt; union/intersection: one; argmax: exclusive"),
    ] = "none",
    threshold: Thresholds = None,
    template: Annotated[
        Literal["none", "photo", "ensemble"],
        Form(description="none: raw phrase; photo: 'a photo of a {}.'; ensemble: 9 templates"),
    ] = "none",
    format: Format = "png",
    soft: Soft = False,
    png_bits: PngBitsField = PngBits.EIGHT,
    background: Annotated[
        Literal["threshold", "prompt"],
        Form(
            description="combine=argmax: the background's score is the threshold, or "
            "background_factor x the probability of the prompt 'background' (CLIPSeg's "
            "multi-label evaluation; then no threshold is used)"
        ),
    ] = "threshold",
    background_factor: Annotated[
        float, Form(gt=0.0, le=100.0, description="background=prompt: its multiplier")
    ] = 3.0,
) -> Response:
    state, started = _start(request)
    prompts, negatives = tuple(prompt), tuple(negative_prompt or ())
    _check_prompts(state, prompts, negatives)
    mode = Combine(combine)
    post = _with_settings(state, fields, background=background, factor=background_factor)
    with _invalid_field():  # before any pixel is decoded
        thresholds = _thresholds(threshold, len(prompts))
        check_background(post, mode, thresholds)
    check_answer(post, format, int(png_bits), soft)
    data = await _read(image, "image")
    (header,) = await _probe(state, [(data, "image")])
    shape = shape_of(
        header,
        prompts=len(prompts),
        negatives=len(negatives),
        visual=False,
        combine_one=mode in (Combine.UNION, Combine.INTERSECTION),
        soft=soft,
        post=post,
    )

    def make(prepared: PreparedImage, key: str, _: torch.Tensor | None) -> SegmentRequest:
        return SegmentRequest(
            prepared.pixels,
            prepared.size,
            key,
            prompts=prompts,
            negative_prompts=negatives,
            template=Template(template),
            threshold=thresholds,
            combine=mode,
            soft=soft,
            runs=format == "rle",
            post=post,
            guide=prepared.guide,
        )

    answer = Answer(format, int(png_bits), fields.polygon_tolerance)
    background_row = (BACKGROUND_PROMPT,) if post.background is Background.PROMPT else ()
    texts = ((*prompts, *negatives, *background_row), Template(template))
    return await _serve(request, shape, texts, (data, []), make, answer, started)


@router.post(
    f"{API_PREFIX}/segment/visual",
    summary=VISUAL_SUMMARY,
    responses=PNG_OR_JSON,
    response_model=None,
)
@router.post(
    "/segment/visual",
    summary=VISUAL_SUMMARY + alias_of(f"{API_PREFIX}/segment/visual"),
    responses=PNG_OR_JSON,
    response_model=None,
    deprecated=True,
)
async def segment_visual(
    request: Request,
    image: Annotated[UploadFile, File(description="the image to segment")],
    support_image: Annotated[
        list[UploadFile], File(description="an example image; repeat for k-shot")
    ],
    support_mask: Annotated[
        list[UploadFile],
        File(description="its mask (nonzero = object), same size as its support image"),
    ],
    fields: Post,
    prompt: Annotated[str | None, Form(description="optional text for a hybrid prompt")] = None,
    text_weight: Annotated[
        float | None, Form(ge=0.0, le=1.0, description="hybrid: w*text + (1-w)*visual")
    ] = None,
    threshold: Threshold = None,
    format: Format = "png",
    soft: Soft = False,
    png_bits: PngBitsField = PngBits.EIGHT,
) -> Response:
    state, started = _start(request)
    post = _with_settings(state, fields)
    check_answer(post, format, int(png_bits), soft)
    if len(support_image) != len(support_mask):
        raise ApiError(
            422,
            "support_mismatch",
            f"{len(support_image)} support images but {len(support_mask)} masks; pair them",
        )
    if len(support_image) > state.settings.max_supports:
        raise ApiError(
            422, "too_many_supports", f"at most {state.settings.max_supports} support images"
        )
    if text_weight is not None and prompt is None:
        raise ApiError(422, "invalid_field", "text_weight needs a prompt")
    prompts = (prompt,) if prompt is not None else ()
    _check_prompts(state, prompts, ())
    data = await _read(image, "image")
    pairs = [
        (await _read(img, "support_image"), await _read(mask, "support_mask"))
        for img, mask in zip(support_image, support_mask, strict=True)
    ]
    uploads = [(data, "image")]
    for img, mask in pairs:
        uploads += [(img, "support_image"), (mask, "support_mask")]
    header, *rest = await _probe(state, uploads)
    # Image and mask both decode: size each support by the larger of the two.
    support_headers = [
        max(rest[i], rest[i + 1], key=lambda h: h.pixels) for i in range(0, len(rest), 2)
    ]
    shape = shape_of(
        header, prompts=1, negatives=0, visual=True, combine_one=True, soft=soft,
        supports=support_headers, post=post,
    )  # fmt: skip

    def make(prepared: PreparedImage, key: str, supports: torch.Tensor | None) -> SegmentRequest:
        return SegmentRequest(
            prepared.pixels,
            prepared.size,
            key,
            prompts=prompts,
            supports=supports,
            text_weight=text_weight,
            threshold=threshold,
            soft=soft,
            runs=format == "rle",
            post=post,
            guide=prepared.guide,
        )

    answer = Answer(format, int(png_bits), fields.polygon_tolerance)
    texts = (prompts, Template.NONE)
    return await _serve(request, shape, texts, (data, pairs), make, answer, started)


def _thresholds(values: list[float] | None, prompts: int) -> float | tuple[float, ...] | None:
    """None, one threshold for every prompt, or one per prompt (``check_thresholds``)."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    checked = check_thresholds(values, prompts)
    assert isinstance(checked, tuple)
    return checked


@contextlib.contextmanager
def _invalid_field() -> Iterator[None]:
    """The library's ValueError from a field check, as a 422 ``invalid_field``."""
    try:
        yield
    except ValueError as exc:
        raise ApiError(422, "invalid_field", str(exc)) from None


def _with_settings(
    state: ServiceState,
    fields: PostFields,
    *,
    background: str = "threshold",
    factor: float = 3.0,
) -> PostProcess:
    """The request's steps with the server's instance cap and the background choice."""
    return dataclasses.replace(
        fields.post,
        max_instances=state.settings.max_instances,
        background=Background(background),
        background_factor=factor,
    )
