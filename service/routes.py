"""The segmentation endpoints: their forms, validated field by field.

A request flows one way: the form is checked here, ``service.intake`` budgets, decodes
and queues it, ``service.answer`` encodes the result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
from collections.abc import Iterator
from typing import Annotated, Literal

import torch
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import Response

from clipseg_serve.model.inference.batch import SegmentRequest
from clipseg_serve.model.inference.predictor import PreparedImage
from clipseg_serve.model.masks.postprocess import (
    BACKGROUND_PROMPT,
    Background,
    Combine,
    PostProcess,
    check_background,
    check_thresholds,
)
from clipseg_serve.model.network.text import Template
from clipseg_serve.service.answer import Answer
from clipseg_serve.service.budget import shape_of
from clipseg_serve.service.errors import ApiError
from clipseg_serve.service.intake import check_prompts, probe, read_upload, serve, start
from clipseg_serve.service.paths import API_PREFIX, alias_of
from clipseg_serve.service.post_form import PostFields, check_answer, post_fields
from clipseg_serve.service.schemas import ERROR_RESPONSES, SegmentResponse
from clipseg_serve.service.state import ServiceState

router = APIRouter()

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


PNG_OR_JSON = {
    200: {
        "description": "One mask + format=png: the PNG itself. Otherwise JSON.",
        "content": {"image/png": {}, "application/json": {}},
        "model": SegmentResponse,
    },
    **ERROR_RESPONSES,
}


TEXT_SUMMARY = "Segment an image from text prompts"
VISUAL_SUMMARY = "Segment an image from support image(s) with masks (one-shot / k-shot)"


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
    state, started = start(request)
    prompts, negatives = tuple(prompt), tuple(negative_prompt or ())
    check_prompts(state, prompts, negatives)
    mode = Combine(combine)
    post = _with_settings(state, fields, background=background, factor=background_factor)
    with _invalid_field():  # before any pixel is decoded
        thresholds = check_thresholds(threshold, len(prompts)) if threshold else None
        check_background(post, mode, thresholds)
    check_answer(post, format, int(png_bits), soft)
    data = await read_upload(image, "image")
    (header,) = await probe(state, [(data, "image")])
    shape = shape_of(
        header,
        prompts=len(prompts),
        negatives=len(negatives),
        visual=False,
        combine=mode,
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
    return await serve(request, shape, texts, (data, []), make, answer, started)


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
    state, started = start(request)
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
    check_prompts(state, prompts, ())
    data = await read_upload(image, "image")
    pairs = [
        (await read_upload(img, "support_image"), await read_upload(mask, "support_mask"))
        for img, mask in zip(support_image, support_mask, strict=True)
    ]
    uploads = [(data, "image")]
    for img, mask in pairs:
        uploads += [(img, "support_image"), (mask, "support_mask")]
    header, *rest = await probe(state, uploads)
    # Image and mask both decode: size each support by the larger of the two.
    support_headers = [
        max(rest[i], rest[i + 1], key=lambda h: h.pixels) for i in range(0, len(rest), 2)
    ]
    shape = shape_of(
        header, prompts=1, negatives=0, visual=True, combine=Combine.NONE, soft=soft,
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
    return await serve(request, shape, texts, (data, pairs), make, answer, started)


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
