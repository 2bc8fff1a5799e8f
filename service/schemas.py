"""Response models: they document the JSON in the OpenAPI schema (with examples)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class Rle(BaseModel):
    size: list[int] = Field(description="[height, width]", examples=[[480, 640]])
    counts: str = Field(description="COCO compressed RLE (column-major)", examples=["e]Q1..."])


class MaskEntry(BaseModel):
    prompt: str = Field(description="the prompt, 'visual', 'union' or 'intersection'")
    score: float = Field(
        description="max probability in the mask's probability map (instances: the mean "
        "probability inside the piece)"
    )
    area: int = Field(description="foreground pixels")
    bbox: list[int] = Field(description="[x, y, width, height] of the foreground")
    threshold: float | list[float] | None = Field(
        description="the threshold used: per-prompt ones for a union/intersection of prompts "
        "with their own; null with background=prompt"
    )
    instance: int | None = Field(None, description="instances=true: the piece's rank, 0 = best")
    max_score: float | None = Field(None, description="instances=true: max probability inside")
    rle: Rle | None = None
    png: str | None = Field(
        None, description="base64 PNG: mode L 0/255 (png_bits=8), mode 1, or an alpha matte"
    )
    feather: int | None = Field(None, description="feather=N: png is an alpha matte of width N")
    segmentation: list[list[float]] | None = Field(
        None, description="format=polygon: COCO polygons, [x1, y1, x2, y2, ...] each"
    )
    soft_png: str | None = Field(None, description="base64 8-bit probability PNG (soft=true)")


class DroppedInstances(BaseModel):
    prompt: str
    dropped: int = Field(description="pieces beyond CLIPSEG_MAX_INSTANCES, not returned")


class SegmentResponse(BaseModel):
    width: int
    height: int
    masks: list[MaskEntry]
    instances_dropped: list[DroppedInstances] | None = Field(
        None, description="instances=true: per mask, the pieces left out"
    )
    timings_ms: dict[str, float] = Field(
        description="decode, queue_and_model, model, encode, total",
        examples=[{"decode": 4.1, "queue_and_model": 21.0, "model": 15.2, "encode": 1.3}],
    )


class ErrorDetail(BaseModel):
    code: str = Field(examples=["invalid_field"])
    message: str = Field(examples=["threshold: Input should be less than or equal to 1"])


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "undecodable image",
        401: "missing or invalid API key (when keys are configured)",
        413: "upload or image too large",
        415: "unsupported media type",
        422: "invalid fields",
        429: "queue full; see Retry-After",
        503: "model not ready / shutting down",
        504: "deadline exceeded",
    }.items()
}
