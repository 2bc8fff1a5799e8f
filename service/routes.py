"""The segmentation endpoints: validate, decode (threadpool), queue, encode (threadpool)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from model.batch import Segmentation, SegmentRequest
from model.postprocess import Combine
from model.predictor import Predictor
from model.text import Template

from . import codec
from .errors import ApiError
from .jobs import SegmentJob
from .schemas import ERROR_RESPONSES, SegmentResponse
from .state import ServiceState, get_state

router = APIRouter()

Threshold = Annotated[
    float | None,
    Form(ge=0.0, le=1.0, description="mask threshold; default: the checkpoint's calibrated one"),
]
Format = Annotated[
    Literal["png", "rle"],
    Form(description="png: a PNG per mask (the raw body when there is one mask); rle: COCO RLE"),
]
Soft = Annotated[bool, Form(description="also return each probability map as an 8-bit PNG")]
PNG_OR_JSON = {
    200: {
        "description": "One mask + format=png: the PNG itself. Otherwise JSON.",
        "content": {"image/png": {}, "application/json": {}},
        "model": SegmentResponse,
    },
    **ERROR_RESPONSES,
}


def _check_prompts(state: ServiceState, prompts: list[str], negatives: list[str]) -> None:
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


async def _query_job(
    predictor: Predictor, image: UploadFile, threshold: float | None
) -> SegmentJob:
    """Read and decode the query image (threadpool) into a job without prompts yet."""
    data = await _read(image, "image")
    prepared, key = await run_in_threadpool(codec.prepare_query, predictor, data)
    request = SegmentRequest(prepared.pixels, prepared.size, key, threshold=threshold)
    return SegmentJob(request)


async def _wait(request: Request, job: SegmentJob, future: asyncio.Future) -> Segmentation:
    """The job's result; 504 past its deadline. A client that hangs up cancels the job."""

    async def client_gone() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.05)

    watcher = asyncio.ensure_future(client_gone())
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
    future.cancel()  # the batcher drops cancelled jobs before compute
    if watcher in done:
        get_state(request).metrics.rejected.inc(reason="disconnected")
        raise ApiError(499, "client_closed_request", "the client closed the connection")
    get_state(request).metrics.rejected.inc(reason="deadline")
    raise ApiError(504, "deadline_exceeded", "the request did not finish before its deadline")


async def _segment(request: Request, job: SegmentJob, fmt: str, soft: bool, t0: float) -> Response:
    state = get_state(request)
    _, batcher = state.require_ready()
    decoded = time.perf_counter()
    job.deadline = time.monotonic() + state.settings.request_timeout_s - (decoded - t0)
    result = await _wait(request, job, batcher.submit(job))
    done = time.perf_counter()
    single_png = len(result.labels) == 1 and fmt == "png" and not soft and _accepts_png(request)
    if single_png:
        body = await run_in_threadpool(codec.single_png, result)
    else:
        entries = await run_in_threadpool(codec.mask_entries, result, fmt, soft)
    encoded = time.perf_counter()
    timings = {
        "decode": decoded - t0,
        "queue_and_model": done - decoded,
        "model": result.model_seconds,
        "encode": encoded - done,
        "total": encoded - t0,
    }
    metrics = state.metrics
    metrics.stage_seconds.observe(timings["decode"], stage="decode")
    metrics.stage_seconds.observe(timings["encode"], stage="encode")
    metrics.stage_seconds.observe(timings["total"], stage="total")
    server_timing = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timings.items())
    headers = {"Server-Timing": server_timing}
    if single_png:
        headers["X-Mask-Score"] = f"{float(result.scores[0]):.6f}"
        headers["X-Mask-Threshold"] = str(result.threshold)
        return Response(body, media_type="image/png", headers=headers)
    height, width = job.request.size
    payload = {
        "width": width,
        "height": height,
        "masks": entries,
        "timings_ms": {k: round(v * 1000, 3) for k, v in timings.items()},
    }
    return JSONResponse(payload, headers=headers)


def _accepts_png(request: Request) -> bool:
    """Raw PNG unless the client asked for JSON and not PNG."""
    accept = request.headers.get("accept", "*/*").lower()
    return "image/png" in accept or "application/json" not in accept


@router.post(
    "/segment/text",
    summary="Segment an image from text prompts",
    responses=PNG_OR_JSON,
    response_model=None,
)
async def segment_text(
    request: Request,
    image: Annotated[UploadFile, File(description="the image to segment")],
    prompt: Annotated[list[str], Form(description="text prompt; repeat for several masks")],
    negative_prompt: Annotated[
        list[str] | None, Form(description="remove what matches; repeatable")
    ] = None,
    combine: Annotated[
        Literal["none", "union", "intersection", "argmax"],
        Form(description="none: a mask per prompt; union/intersection: one; argmax: exclusive"),
    ] = "none",
    threshold: Threshold = None,
    template: Annotated[
        Literal["none", "photo", "ensemble"],
        Form(description="none: raw phrase; photo: 'a photo of a {}.'; ensemble: 9 templates"),
    ] = "none",
    format: Format = "png",
    soft: Soft = False,
) -> Response:
    t0 = time.perf_counter()
    state = get_state(request)
    predictor, _ = state.require_ready()
    negatives = list(negative_prompt or [])
    _check_prompts(state, prompt, negatives)
    job = await _query_job(predictor, image, threshold)
    query = job.request
    query.prompts, query.negative_prompts = list(prompt), negatives
    query.template, query.combine = Template(template), Combine(combine)
    return await _segment(request, job, format, soft, t0)


@router.post(
    "/segment/visual",
    summary="Segment an image from support image(s) with masks (one-shot / k-shot)",
    responses=PNG_OR_JSON,
    response_model=None,
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
    prompt: Annotated[str | None, Form(description="optional text for a hybrid prompt")] = None,
    text_weight: Annotated[
        float | None, Form(ge=0.0, le=1.0, description="hybrid: w*text + (1-w)*visual")
    ] = None,
    threshold: Threshold = None,
    format: Format = "png",
    soft: Soft = False,
) -> Response:
    t0 = time.perf_counter()
    state = get_state(request)
    predictor, _ = state.require_ready()
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
    prompts = [prompt] if prompt is not None else []
    _check_prompts(state, prompts, [])
    job = await _query_job(predictor, image, threshold)
    pairs = [
        (await _read(img, "support_image"), await _read(mask, "support_mask"))
        for img, mask in zip(support_image, support_mask, strict=True)
    ]
    job.request.supports = await run_in_threadpool(codec.prepare_supports, predictor, pairs)
    job.request.prompts, job.request.text_weight = prompts, text_weight
    return await _segment(request, job, format, soft, t0)
