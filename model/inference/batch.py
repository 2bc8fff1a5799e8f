"""What a batch is, as plain data: frozen requests and results, and the plan of a batch.

``plan_batch`` turns requests into a ``BatchPlan`` — the distinct images (one backbone
pass each), the distinct phrases per template (one text-encoder call per template), the
support sets (one vision-encoder call for all), and every decoder row with where its
conditioning vector comes from. It runs no model and touches no device; the
``Predictor`` executes plans (``Predictor.execute``). Dependencies point one way:
predictor -> batch.

This module imports torch (for tensor type and shape checks) and numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from clipseg_serve.model.errors import InvalidPromptError
from clipseg_serve.model.imaging.device_decode import DeferredJpeg
from clipseg_serve.model.masks.mask_ops import Instances, feather_alpha
from clipseg_serve.model.masks.postprocess import (
    BACKGROUND_PROMPT,
    DEFAULT_POST,
    Background,
    Combine,
    PostProcess,
    Refine,
    check_background,
    check_size,
    check_thresholds,
)
from clipseg_serve.model.network.text import Template, parse_template

__all__ = [
    "BatchPlan",
    "GivenRow",
    "RequestSpan",
    "SegmentRequest",
    "Segmentation",
    "TextRow",
    "VisualRow",
    "plan_batch",
]


def count_rows(positives: int, negatives: int, background: bool) -> int:
    """A request's decoder rows: its positives, its negatives and the background prompt's
    (``post.background=prompt``). The service's budget counts with it before decoding."""
    return positives + negatives + int(background)


def count_masks(positives: int, combine: Combine) -> int:
    """The masks a request answers with: one for a union or intersection of its prompts,
    else one per positive row."""
    return 1 if combine in (Combine.UNION, Combine.INTERSECTION) else positives


@dataclass(frozen=True)
class SegmentRequest:
    """One image and everything asked of it, ready for the device. Validated when built.

    pixels: the query image, uint8 [3, S, S] (``to_model_pixels``) or float32 normalised,
        or a ``DeferredJpeg`` to decode on the device in the batch. size: (height, width)
        the masks come back at. image_key: identifies identical images, so a batch runs
        each distinct image through the backbone once.
    prompts / negative_prompts: text prompts (``template`` is applied when encoding).
    supports: float32 [K, 3, S, S] engineered visual prompts -> one row, their k-shot
        mean; with a prompt (at most one) it is mixed as ``w*text + (1-w)*visual``,
        w = ``text_weight`` (0.5 when None). conditionals: float [N, D] ready
        conditioning vectors, one row each.
    threshold: in [0, 1], or one per positive row; None means the checkpoint's
        calibrated threshold.
    soft: also return each mask's probability map (8-bit).
    runs: also return each mask's COCO RLE run lengths, found on the device (for RLE
        answers: the host then only writes the counts string).
    post: the post-processing steps (``model.masks.postprocess.PostProcess``).
    guide: the image at ``size``, uint8 [3, H, W] (or [1, H, W]); needed when
        ``post.refine`` is not none (``Predictor.prepare_image(..., guide=True)``).
    """

    pixels: torch.Tensor | DeferredJpeg
    size: tuple[int, int]
    image_key: str
    prompts: tuple[str, ...] = ()
    negative_prompts: tuple[str, ...] = ()
    template: Template = Template.NONE
    supports: torch.Tensor | None = None
    text_weight: float | None = None
    conditionals: torch.Tensor | None = None
    threshold: float | tuple[float, ...] | None = None
    combine: Combine = Combine.NONE
    soft: bool = False
    runs: bool = False
    post: PostProcess = DEFAULT_POST
    guide: torch.Tensor | None = None

    def __post_init__(self) -> None:
        # Accept lists and strings from callers; store the canonical immutable forms.
        object.__setattr__(self, "prompts", tuple(self.prompts))
        object.__setattr__(self, "negative_prompts", tuple(self.negative_prompts))
        object.__setattr__(self, "template", parse_template(self.template))
        object.__setattr__(self, "combine", Combine(self.combine))
        object.__setattr__(self, "size", check_size(self.size))
        if self.threshold is not None:
            object.__setattr__(self, "threshold", check_thresholds(self.threshold))
        _check_request(self)

    @property
    def hybrid(self) -> bool:
        return self.supports is not None and bool(self.prompts)

    @property
    def text_rows(self) -> tuple[str, ...]:
        """The prompts that become decoder rows of their own (not mixed into a visual row)."""
        return () if self.supports is not None else self.prompts

    @property
    def positive_rows(self) -> int:
        given = 0 if self.conditionals is None else int(self.conditionals.shape[0])
        return len(self.text_rows) + (self.supports is not None) + given

    @property
    def background_row(self) -> bool:
        """Whether a hidden ``BACKGROUND_PROMPT`` row follows the negatives."""
        return self.post.background is Background.PROMPT

    @property
    def rows(self) -> int:
        """Decoder rows: positives, then negatives, then the background prompt's."""
        return count_rows(self.positive_rows, len(self.negative_prompts), self.background_row)

    @property
    def mask_count(self) -> int:
        """Masks in the answer: one for union/intersection, else one per positive row."""
        return count_masks(self.positive_rows, self.combine)

    @property
    def output_pixels(self) -> int:
        height, width = self.size
        return height * width

    def labels(self) -> tuple[str, ...]:
        """Names of the answer's masks, in order."""
        if self.combine is Combine.UNION:
            return ("union",)
        if self.combine is Combine.INTERSECTION:
            return ("intersection",)
        names = list(self.text_rows)
        if self.supports is not None:
            names.append("visual")
        if self.conditionals is not None:
            names += [f"visual_{i}" for i in range(int(self.conditionals.shape[0]))]
        return tuple(names)


def _check_request(request: SegmentRequest) -> None:
    if isinstance(request.pixels, DeferredJpeg):
        pass  # header checked by Predictor.prepare_image; decoded in the batch
    elif request.pixels.ndim != 3 or request.pixels.shape[0] != 3:
        raise ValueError(f"pixels must be [3, S, S], got {tuple(request.pixels.shape)}")
    if request.supports is not None:
        if request.supports.ndim != 4 or request.supports.shape[0] < 1:
            raise ValueError(f"supports must be [K, 3, S, S], got {tuple(request.supports.shape)}")
        if len(request.prompts) > 1:
            raise InvalidPromptError("a visual prompt mixes with at most one text prompt")
    if request.conditionals is not None and request.conditionals.ndim != 2:
        raise ValueError(f"conditionals must be [N, D], got {tuple(request.conditionals.shape)}")
    if request.text_weight is not None:
        if not request.hybrid:
            raise InvalidPromptError("text_weight needs a support and a prompt (a hybrid)")
        if not 0.0 <= request.text_weight <= 1.0:
            raise InvalidPromptError(f"text_weight {request.text_weight} is not in [0, 1]")
    if request.positive_rows == 0:
        raise InvalidPromptError("a request needs at least one prompt, support or conditional")
    _check_post(request)


def _check_post(request: SegmentRequest) -> None:
    """The thresholds and post-processing steps fit the request (its prompts, combine and
    guide)."""
    post = request.post
    try:
        if isinstance(request.threshold, tuple):  # one per prompt (one alone is a float)
            check_thresholds(request.threshold, request.positive_rows)
        check_background(post, request.combine, request.threshold)
    except ValueError as exc:
        raise InvalidPromptError(str(exc)) from None
    if post.refine is Refine.NONE:
        return
    guide = request.guide
    if guide is None:
        raise ValueError(f"refine={post.refine.value} needs the full-size image as guide")
    height, width = request.size
    if (
        guide.dtype != torch.uint8
        or guide.ndim != 3
        or guide.shape[0] not in (1, 3)
        or tuple(guide.shape[1:]) != (height, width)
    ):
        raise ValueError(
            f"guide must be uint8 [3 or 1, {height}, {width}], got {guide.dtype} "
            f"{tuple(guide.shape)}"
        )


@dataclass(frozen=True)
class Segmentation:
    """One request's masks, on the CPU, compact: 1 bit per mask pixel.

    packed_masks: uint8 [M, H, ceil(W / 8)], each row ``np.packbits``-ed along the width.
    size: (H, W). scores: float32 [M], the max probability of each mask's map (for
    union/intersection the map is the per-pixel max/min over the prompts). areas: int64
    [M]. boxes: int64 [M, 4] ``[x, y, w, h]`` (zeros when empty). labels: M names.
    soft: uint8 [M, H, W] ``round(p * 255)`` of each map when the request asked for it.
    runs: M int64 [R_m] run lengths when the request asked for them: COCO's uncompressed
    counts (column-major, starting with background), what ``encode_rle`` would derive.
    threshold: the threshold used (one per positive row when the request gave several;
    None with ``background=prompt``, which has none). instances: per mask, its connected
    components (``model.masks.mask_ops.Instances``) when the request asked for them.
    feather: the width of the alpha ramp of ``alpha`` (0: hard masks).
    """

    packed_masks: np.ndarray
    size: tuple[int, int]
    scores: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    labels: tuple[str, ...]
    threshold: float | tuple[float, ...] | None
    soft: np.ndarray | None = None
    runs: tuple[np.ndarray, ...] | None = None
    instances: tuple[Instances, ...] | None = None
    feather: int = 0

    def mask(self, index: int) -> np.ndarray:
        """bool [H, W]: mask ``index`` unpacked (one at a time keeps memory low)."""
        width = self.size[1]
        return np.unpackbits(self.packed_masks[index], axis=-1, count=width).view(bool)

    @property
    def masks(self) -> np.ndarray:
        """bool [M, H, W], every mask unpacked (M * H * W bytes)."""
        width = self.size[1]
        return np.unpackbits(self.packed_masks, axis=-1, count=width).view(bool)

    def mask_threshold(self, index: int) -> float | list[float] | None:
        """The threshold behind mask ``index``: one number, or the per-prompt list behind
        the one mask of a union/intersection of prompts with thresholds of their own."""
        if not isinstance(self.threshold, tuple):
            return self.threshold
        if len(self.labels) == 1 and len(self.threshold) > 1:
            return list(self.threshold)
        return self.threshold[index]

    def alpha(self, index: int, instance: int | None = None) -> np.ndarray:
        """uint8 [H, W] alpha matte of mask ``index`` (or of one of its instances), its
        edge feathered over ``feather`` pixels (``model.masks.mask_ops.feather_alpha``)."""
        if instance is None:
            mask = self.mask(index)
        else:
            assert self.instances is not None
            mask = self.instances[index].mask(instance)
        return feather_alpha(mask, self.feather)


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class TextRow:
    """A row conditioned on a phrase's text embedding."""

    template: Template
    phrase: str


@dataclass(frozen=True)
class VisualRow:
    """A row conditioned on support set ``support`` (k-shot mean), optionally mixed with a
    phrase: ``weight * text + (1 - weight) * visual``."""

    support: int
    phrase: str | None = None
    template: Template = Template.NONE
    weight: float = 0.5


@dataclass(frozen=True)
class GivenRow:
    """A row conditioned on ``conditionals[index]`` of request ``request``."""

    request: int
    index: int


Row = TextRow | VisualRow | GivenRow


@dataclass(frozen=True)
class RequestSpan:
    """Where a request's rows are in the batch, and how to turn them into its answer."""

    start: int
    positives: int
    negatives: int
    size: tuple[int, int]
    threshold: float | None
    combine: Combine
    soft: bool
    labels: tuple[str, ...]
    runs: bool = False
    post: PostProcess = DEFAULT_POST
    guide: torch.Tensor | None = None

    @property
    def background(self) -> bool:
        """Whether the span's last row is the background prompt's."""
        return self.post.background is Background.PROMPT

    @property
    def stop(self) -> int:
        return self.start + self.positives + self.negatives + self.background


@dataclass(frozen=True)
class BatchPlan:
    """Everything a batch computes, deduplicated.

    images: distinct query images (``SegmentRequest.pixels``). phrases: distinct phrases per
    template. supports: one [K, 3, S, S] support set per visual request. conditionals:
    the requests' given vectors (by request position). rows: every decoder row in request
    order; row_image: the image index of each row. spans: one per request.
    """

    images: tuple[torch.Tensor | DeferredJpeg, ...]
    phrases: dict[Template, tuple[str, ...]]
    supports: tuple[torch.Tensor, ...]
    conditionals: dict[int, torch.Tensor]
    rows: tuple[Row, ...]
    row_image: tuple[int, ...]
    spans: tuple[RequestSpan, ...]


def plan_batch(requests: Sequence[SegmentRequest]) -> BatchPlan:
    """The plan of a batch of requests (pure: no model, no device work)."""
    image_ids: dict[str, int] = {}
    images: list[torch.Tensor] = []
    phrases: dict[Template, dict[str, None]] = {}
    supports: list[torch.Tensor] = []
    conditionals: dict[int, torch.Tensor] = {}
    rows: list[Row] = []
    row_image: list[int] = []
    spans: list[RequestSpan] = []
    for position, request in enumerate(requests):
        if request.image_key not in image_ids:
            image_ids[request.image_key] = len(images)
            images.append(request.pixels)
        own = phrases.setdefault(request.template, {})
        for phrase in (*request.prompts, *request.negative_prompts):
            own[phrase] = None
        start = len(rows)
        rows += [TextRow(request.template, p) for p in request.text_rows]
        if request.supports is not None:
            rows.append(_visual_row(request, len(supports)))
            supports.append(request.supports)
        if request.conditionals is not None:
            conditionals[position] = request.conditionals
            rows += [GivenRow(position, i) for i in range(int(request.conditionals.shape[0]))]
        rows += [TextRow(request.template, p) for p in request.negative_prompts]
        if request.background_row:
            own[BACKGROUND_PROMPT] = None
            rows.append(TextRow(request.template, BACKGROUND_PROMPT))
        row_image += [image_ids[request.image_key]] * (len(rows) - start)
        spans.append(_span(request, start))
    return BatchPlan(
        images=tuple(images),
        phrases={t: tuple(names) for t, names in phrases.items() if names},
        supports=tuple(supports),
        conditionals=conditionals,
        rows=tuple(rows),
        row_image=tuple(row_image),
        spans=tuple(spans),
    )


def _visual_row(request: SegmentRequest, support: int) -> VisualRow:
    if not request.hybrid:
        return VisualRow(support)
    weight = 0.5 if request.text_weight is None else request.text_weight
    return VisualRow(support, request.prompts[0], request.template, weight)


def _span(request: SegmentRequest, start: int) -> RequestSpan:
    return RequestSpan(
        start=start,
        positives=request.positive_rows,
        negatives=len(request.negative_prompts),
        size=request.size,
        threshold=request.threshold,
        combine=request.combine,
        soft=request.soft,
        labels=request.labels(),
        runs=request.runs,
        post=request.post,
        guide=request.guide,
    )
