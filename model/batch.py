"""Segment many requests in one batch: the single code path of library and service.

Per batch: one text-encoder call per template (through the predictor's LRU cache), one
support-encoder call for every visual prompt, one backbone pass per distinct image, one
decoder pass over every (image, prompt) row, then each request's postprocessing at its
image's own size (still on the device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from .postprocess import Combine, mask_scores
from .text import Template

if TYPE_CHECKING:
    from .predictor import Predictor


@dataclass
class SegmentRequest:
    """One image and its prompts, ready for the device.

    pixels: float32 [3, S, S] normalised query image; size: (height, width) the masks come
        back at; image_key: identifies identical images so a batch runs each distinct
        image through the backbone once.
    prompts / negative_prompts: text prompts (the template is applied when encoding).
    supports: float32 [K, 3, S, S] engineered visual prompts -> one row, their k-shot
        mean; with a prompt (at most one) it is mixed as ``w*text + (1-w)*visual``,
        w = ``text_weight`` (0.5 when None). conditionals: float [N, D] ready
        conditioning vectors, one row each.
    threshold: None means the checkpoint's calibrated threshold.
    """

    pixels: torch.Tensor
    size: tuple[int, int]
    image_key: str
    prompts: list[str] = field(default_factory=list)
    negative_prompts: list[str] = field(default_factory=list)
    template: Template = Template.NONE
    supports: torch.Tensor | None = None
    text_weight: float | None = None
    conditionals: torch.Tensor | None = None
    threshold: float | None = None
    combine: Combine = Combine.NONE

    def __post_init__(self) -> None:
        if self.supports is not None and len(self.prompts) > 1:
            raise ValueError("a visual prompt mixes with at most one text prompt")

    @property
    def hybrid(self) -> bool:
        return self.supports is not None and bool(self.prompts)

    @property
    def text_rows(self) -> list[str]:
        """The prompts that become decoder rows of their own (not mixed into a visual row)."""
        return [] if self.supports is not None else list(self.prompts)

    @property
    def positive_rows(self) -> int:
        extra = 0 if self.conditionals is None else int(self.conditionals.shape[0])
        return len(self.text_rows) + (self.supports is not None) + extra

    @property
    def rows(self) -> int:
        """Decoder rows: positives, then negatives."""
        return self.positive_rows + len(self.negative_prompts)

    def labels(self) -> list[str]:
        """Names of the positive rows, in order."""
        names = list(self.text_rows)
        if self.supports is not None:
            names.append("visual")
        if self.conditionals is not None:
            names += [f"visual_{i}" for i in range(int(self.conditionals.shape[0]))]
        return names


@dataclass
class Segmentation:
    """Masks for one request, on the CPU.

    masks: bool [M, H, W] — one per positive row, or one for union/intersection.
    probabilities: float32 [M, H, W] in [0, 1] matching the masks (a row's own map, or
        the max/min over rows for union/intersection).
    scores: float32 [M], the max probability of each map. labels: [M] names.
    """

    masks: np.ndarray
    probabilities: np.ndarray
    scores: np.ndarray
    labels: list[str]
    threshold: float
    model_seconds: float = 0.0


def _text_lookup(predictor: Predictor, requests: list[SegmentRequest]) -> dict:
    """(template, phrase) -> embedding [D], one encoder call per template."""
    by_template: dict[Template, dict[str, None]] = {}
    for request in requests:
        phrases = by_template.setdefault(request.template, {})
        for phrase in (*request.prompts, *request.negative_prompts):
            phrases[phrase] = None
    lookup = {}
    for template, phrases in by_template.items():
        names = list(phrases)
        if names:
            vectors = predictor.text_embeddings(names, template)
            lookup.update({(template, n): v for n, v in zip(names, vectors, strict=True)})
    return lookup


def _visual_lookup(predictor: Predictor, requests: list[SegmentRequest]) -> dict:
    """request position -> k-shot mean support embedding [D], one encoder call in all."""
    with_supports = [(i, r.supports) for i, r in enumerate(requests) if r.supports is not None]
    if not with_supports:
        return {}
    embedded = predictor.support_embeddings(torch.cat([s for _, s in with_supports]))
    chunks = embedded.split([int(s.shape[0]) for _, s in with_supports])
    return {i: chunk.mean(0) for (i, _), chunk in zip(with_supports, chunks, strict=True)}


def _conditionals(
    predictor: Predictor, request: SegmentRequest, text: dict, visual: torch.Tensor | None
) -> torch.Tensor:
    """[rows, D] in the order of ``SegmentRequest.labels`` then the negatives."""
    rows = [text[request.template, p] for p in request.text_rows]
    if visual is not None:
        if request.hybrid:
            weight = 0.5 if request.text_weight is None else request.text_weight
            visual = predictor.hybrid(text[request.template, request.prompts[0]], visual, weight)
        rows.append(visual)
    if request.conditionals is not None:
        rows += list(request.conditionals.to(predictor.device, torch.float32))
    rows += [text[request.template, p] for p in request.negative_prompts]
    return torch.stack(rows)


def segment_batch(predictor: Predictor, requests: list[SegmentRequest]) -> list[Segmentation]:
    """Masks for every request, in order. Raises if any part of the batch fails."""
    start = time.perf_counter()
    text = _text_lookup(predictor, requests)
    visual = _visual_lookup(predictor, requests)
    image_ids: dict[str, int] = {}
    images: list[torch.Tensor] = []
    conds: list[torch.Tensor] = []
    index: list[int] = []
    for i, request in enumerate(requests):
        if request.positive_rows == 0:
            raise ValueError("a request needs at least one prompt, support or conditional")
        if request.image_key not in image_ids:
            image_ids[request.image_key] = len(images)
            images.append(request.pixels)
        rows = _conditionals(predictor, request, text, visual.get(i))
        conds.append(rows)
        index += [image_ids[request.image_key]] * rows.shape[0]
    logits = predictor.logits(
        torch.stack(images), torch.cat(conds), torch.tensor(index, dtype=torch.long)
    )
    results, offset = [], 0
    for request in requests:
        results.append(_postprocess(predictor, request, logits[offset : offset + request.rows]))
        offset += request.rows
    elapsed = time.perf_counter() - start
    for result in results:
        result.model_seconds = elapsed
    return results


def _postprocess(
    predictor: Predictor, request: SegmentRequest, logits: torch.Tensor
) -> Segmentation:
    positive, negative = logits[: request.positive_rows], logits[request.positive_rows :]
    threshold = predictor.config.threshold if request.threshold is None else request.threshold
    masks, probs = predictor.postprocess(
        positive, request.size, threshold=threshold, combine=request.combine,
        negative_logits=negative,
    )  # fmt: skip
    labels = request.labels()
    if request.combine is Combine.UNION:
        probs, labels = probs.max(0, keepdim=True).values, ["union"]
    elif request.combine is Combine.INTERSECTION:
        probs, labels = probs.min(0, keepdim=True).values, ["intersection"]
    return Segmentation(
        masks=masks.cpu().numpy(),
        probabilities=probs.cpu().numpy(),
        scores=mask_scores(probs).cpu().numpy(),
        labels=labels,
        threshold=threshold,
    )
