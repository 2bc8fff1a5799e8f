"""The post-processing form fields both endpoints share, as one FastAPI dependency.

The fields map one to one onto ``model.masks.postprocess.PostProcess`` (the library's and the
CLI's spelling of the same steps); their ranges are checked by FastAPI (422 naming the
field) and the combinations that cannot mean anything by ``check_answer``. The bounds are
the library's constants, so a form that passes FastAPI builds a ``PostProcess``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Form

from clipseg_serve.model.masks.postprocess import (
    MAX_EPS,
    MAX_MIN_AREA,
    MAX_MORPHOLOGY_PX,
    MAX_PAMR_ITERATIONS,
    MAX_RADIUS,
    MIN_EPS,
    PostProcess,
    Refine,
)
from clipseg_serve.service.errors import ApiError

__all__ = ["PostFields", "check_answer", "post_fields"]

Pixels = Annotated[int, Form(ge=0, le=MAX_MORPHOLOGY_PX)]


@dataclass(frozen=True)
class PostFields:
    """The parsed fields: the steps, and the polygon tolerance (an output option)."""

    post: PostProcess
    polygon_tolerance: float


def post_fields(
    refine: Annotated[
        Literal["none", "guided", "pamr"],
        Form(
            description="how the 352x352 prediction reaches the image's size: none "
            "(bilinear, the reference), guided (fast guided filter on the full-size image: "
            "edges follow the image), pamr (pixel-adaptive affinity refinement, then guided)"
        ),
    ] = "none",
    refine_radius: Annotated[
        int | None,
        Form(
            ge=1,
            le=MAX_RADIUS,
            description="guided filter window radius in image pixels; default half a token "
            "of the model's patch grid (the long side / 44 for ViT-B/16). A radius past the "
            "image's long side - 1 is that one (its windows already cover the whole image)",
        ),
    ] = None,
    refine_eps: Annotated[
        float,
        Form(
            ge=MIN_EPS,
            le=MAX_EPS,
            description="guided filter regularisation (colour variance, 0-1 units): larger "
            f"keeps only strong edges; at least {MIN_EPS:g}, the smallest float32 resolves",
        ),
    ] = 1e-3,
    pamr_iterations: Annotated[
        int,
        Form(ge=1, le=MAX_PAMR_ITERATIONS, description="refine=pamr: affinity propagation steps"),
    ] = 10,
    min_area: Annotated[
        int,
        Form(
            ge=0,
            le=MAX_MIN_AREA,
            description="drop connected pieces of fewer pixels (after threshold)",
        ),
    ] = 0,
    fill_holes: Annotated[
        bool, Form(description="fill holes (background not connected to the border)")
    ] = False,
    erode: Annotated[Pixels, Form(description="shrink masks by a disc of this radius (px)")] = 0,
    dilate: Annotated[
        Pixels, Form(description="grow masks by a disc of this radius (px), after erode")
    ] = 0,
    feather: Annotated[
        Pixels,
        Form(
            description="soft edge for compositing: mask PNGs become 8-bit alpha mattes "
            "ramping over this many pixels across the edge (format=png, png_bits=8)"
        ),
    ] = 0,
    instances: Annotated[
        bool,
        Form(
            description="one entry per connected piece of each mask (score, bbox, area), "
            "best first, at most CLIPSEG_MAX_INSTANCES per mask"
        ),
    ] = False,
    polygon_tolerance: Annotated[
        float,
        Form(ge=0.0, le=100.0, description="format=polygon: simplification tolerance in px"),
    ] = 1.0,
) -> PostFields:
    """The shared fields as a ``PostFields`` (``max_instances`` is set by the route)."""
    try:
        post = PostProcess(
            refine=Refine(refine),
            radius=refine_radius,
            eps=refine_eps,
            pamr_iterations=pamr_iterations,
            min_area=min_area,
            fill_holes=fill_holes,
            erode=erode,
            dilate=dilate,
            feather=feather,
            instances=instances,
        )
    except ValueError as exc:
        # The form's bounds are the library's, so this is only a net: a check the library
        # gains later is still a 422, never a 500.
        raise ApiError(422, "invalid_field", f"post-processing: {exc}") from None
    return PostFields(post, polygon_tolerance)


def check_answer(post: PostProcess, fmt: str, png_bits: int, soft: bool) -> None:
    """422 for post-processing that the requested answer cannot carry."""
    if post.feather:
        if fmt != "png":
            _invalid(f"feather makes alpha mattes, which format={fmt} cannot hold; use png")
        if png_bits != 8:
            _invalid("feather makes 8-bit alpha mattes; use png_bits=8")
    if post.instances and soft:
        _invalid("soft maps are per prompt, not per instance: use soft or instances")


def _invalid(message: str) -> None:
    raise ApiError(422, "invalid_field", message)
