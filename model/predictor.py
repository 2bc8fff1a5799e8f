"""The inference API: images and prompts in, masks at the image's own size out.

Work is split by where it runs, so a server can put each part on the right thread:

* CPU, per request: ``prepare_image`` (decode, orient, resize, normalise) and
  ``prepare_support`` (visual-prompt engineering of a support image + mask).
* Device, batched: ``text_embeddings`` (LRU-cached, one encoder call for all misses),
  ``support_embeddings``, ``logits`` (one backbone pass per image, decoder per prompt)
  and ``render`` (sigmoid, bilinear upsample, threshold, combine, one band of rows at a
  time; 1 bit per mask pixel leaves the device).

``execute`` runs a ``model.batch.BatchPlan`` through them — the one code path of the
service's batches and of ``segment``, which chains everything for library and CLI users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batch import (
    BatchPlan,
    RequestSpan,
    Segmentation,
    SegmentRequest,
    TextRow,
    VisualRow,
    plan_batch,
)
from .clipseg import ClipSeg
from .config import ClipSegConfig
from .device import autocast, resolve_device, resolve_dtype
from .errors import InvalidMaskError, InvalidPromptError
from .postprocess import Combine
from .render import render_masks
from .support import prepare_support_input
from .text import Template, parse_template
from .text_cache import TextEmbeddingCache
from .transforms import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    decode_image,
    probe_image,
    to_model_input,
)
from .weights.loader import LoadedModel, load_model


@dataclass(frozen=True)
class PreparedImage:
    """A query image ready for the model.

    pixels: float32 [3, S, S], ImageNet-normalised, on the CPU.
    size: (height, width) of the original image after EXIF orientation — masks come back
        at this size.
    """

    pixels: torch.Tensor
    size: tuple[int, int]


class Predictor:
    """Runs a ``ClipSeg`` model on one device in inference mode.

    Args:
        model: the module (moved to ``device``; kept in fp32, autocast does the rest).
        device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bf16/fp16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16".
        text_cache_size: number of (template, phrase) embeddings kept.
        max_pixels: decompression-bomb guard for decoded images.
    """

    def __init__(
        self,
        model: ClipSeg,
        *,
        device: str = "auto",
        dtype: str = "auto",
        text_cache_size: int = 1024,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        loaded: LoadedModel | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.model = model.to(self.device).eval()
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.max_pixels = max_pixels
        self.loaded = loaded

    @classmethod
    def from_source(
        cls,
        source: str,
        *,
        variant: str | None = None,
        backbone: str = "openai",
        **kwargs,
    ) -> Predictor:
        """Load weights from any source ``load_model`` understands and wrap them."""
        loaded = load_model(source, variant=variant, backbone=backbone)
        return cls(loaded.model, loaded=loaded, **kwargs)

    @property
    def config(self) -> ClipSegConfig:
        return self.model.config

    # ------------------------------------------------------------------ CPU side
    def probe_image(self, source) -> ImageInfo:
        """Format, size and mode from the header (no pixels decoded; same guards)."""
        return probe_image(source, max_pixels=self.max_pixels)

    def prepare_image(self, source) -> PreparedImage:
        """Decode any image (bytes, path, PIL) into model input; see ``PreparedImage``."""
        cfg = self.config
        decoded = decode_image(source, max_pixels=self.max_pixels, draft_size=cfg.input_size)
        pixels = to_model_input(decoded.image, cfg.input_size, cfg.mean, cfg.std)
        width, height = decoded.original_size
        return PreparedImage(pixels, (height, width))

    def prepare_support(self, image, mask) -> torch.Tensor:
        """Engineer one visual prompt: support image + mask -> float32 [3, S, S] (CPU).

        The mask (nonzero = object) must have the support image's size; the image is
        decoded reduced toward the model size, like a query (``model.support``).
        """
        return prepare_support_input(image, mask, self.config, max_pixels=self.max_pixels)

    # --------------------------------------------------------------- device side
    def _inference(self):
        return autocast(self.device, self.dtype)

    def text_embeddings(
        self, prompts: Sequence[str], template: Template | str = Template.NONE
    ) -> torch.Tensor:
        """Conditioning vectors for text prompts: float32 [N, D] on the device.

        Cached per (template, phrase); all misses go through one padded-to-longest batch.
        """
        mode = parse_template(template)
        keys = [(mode.value, " ".join(str(p).split())) for p in prompts]
        return self.text_cache.get(keys, lambda missing: self._encode_phrases(missing, mode))

    def _encode_phrases(self, keys: list[tuple[str, str]], mode: Template) -> torch.Tensor:
        with torch.inference_mode(), self._inference():
            return self.model.embed_phrases([phrase for _, phrase in keys], mode)

    def support_embeddings(self, supports: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings of engineered supports: [K, 3, S, S] -> float32 [K, D]."""
        with torch.inference_mode(), self._inference():
            return self.model.embed_images(supports.to(self.device)).float()

    def visual_embedding(self, supports: Sequence[tuple[object, object]]) -> torch.Tensor:
        """k-shot conditioning: mean of the support embeddings -> float32 [D]."""
        if not supports:
            raise InvalidMaskError("at least one support image + mask is needed")
        batch = torch.stack([self.prepare_support(image, mask) for image, mask in supports])
        return self.support_embeddings(batch).mean(0)

    @staticmethod
    def hybrid(text: torch.Tensor, visual: torch.Tensor, text_weight: float) -> torch.Tensor:
        """``w * text + (1 - w) * visual`` (CLIPSeg was trained with such mixes)."""
        if not 0.0 <= text_weight <= 1.0:
            raise InvalidPromptError(f"text_weight {text_weight} is not in [0, 1]")
        return text_weight * text + (1.0 - text_weight) * visual

    def logits(
        self,
        images: torch.Tensor,
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One backbone pass per image, the decoder per row: float32 [P, S, S].

        images [B, 3, S, S]; conditionals [P, D]; image_index [P] (None: P == B).
        """
        with torch.inference_mode(), self._inference():
            index = None if image_index is None else image_index.to(self.device)
            out = self.model(images.to(self.device), conditionals.to(self.device), index)
        return out.float()

    def resolve_threshold(self, threshold: float | None) -> float:
        """``threshold``, or the checkpoint's calibrated one when None."""
        return self.config.threshold if threshold is None else float(threshold)

    def render(
        self,
        logits: torch.Tensor,
        size: tuple[int, int],
        *,
        threshold: float | None = None,
        combine: Combine | str = Combine.NONE,
        negative_logits: torch.Tensor | None = None,
        soft: bool = False,
        labels: Sequence[str] | None = None,
        runs: bool = False,
    ) -> Segmentation:
        """Logits [P, S, S] (+ negatives [N, S, S]) -> masks at ``size`` (height, width).

        Sigmoid, bilinear upsample, then threshold — never the other way round — one band
        of rows at a time on the device (``model.render``); the host receives bit-packed
        masks, scores, areas, boxes and, with ``soft``, 8-bit probability maps; with
        ``runs``, each mask's COCO RLE run lengths (found on the device).
        """
        threshold = self.resolve_threshold(threshold)
        combine = Combine(combine)
        with torch.inference_mode():
            rendered = render_masks(
                logits, size, threshold, combine, negative_logits, soft=soft, runs=runs
            )
        count = int(rendered.scores.shape[0])
        return Segmentation(
            packed_masks=rendered.packed.cpu().numpy(),
            size=(int(size[0]), int(size[1])),
            scores=rendered.scores.cpu().numpy(),
            areas=rendered.areas.cpu().numpy(),
            boxes=rendered.boxes.cpu().numpy(),
            labels=tuple(labels) if labels is not None else tuple(str(i) for i in range(count)),
            threshold=threshold,
            soft=None if rendered.soft is None else rendered.soft.cpu().numpy(),
            runs=None if rendered.runs is None else _host_runs(rendered.runs),
        )

    # ------------------------------------------------------------------- batches
    def execute(
        self, plan: BatchPlan, keep: Callable[[int], bool] | None = None
    ) -> list[Segmentation | None]:
        """Run a plan: text and support encoders once each, the backbone once per distinct
        image, the decoder over every row, then each request's masks.

        ``keep(i)`` is asked just before request ``i``'s masks are rendered; False skips
        them (its client left) and yields None in its place. Raises if any part fails.
        """
        conditionals = self._row_conditionals(plan)
        index = torch.tensor(plan.row_image, dtype=torch.long)
        logits = self.logits(torch.stack(plan.images), conditionals, index)
        results: list[Segmentation | None] = []
        for i, span in enumerate(plan.spans):
            if keep is not None and not keep(i):
                results.append(None)
                continue
            results.append(self._render_span(logits, span))
        return results

    def segment_batch(
        self, requests: Sequence[SegmentRequest], keep: Callable[[int], bool] | None = None
    ) -> list[Segmentation | None]:
        """``execute(plan_batch(requests), keep)``."""
        return self.execute(plan_batch(requests), keep)

    def _row_conditionals(self, plan: BatchPlan) -> torch.Tensor:
        """[rows, D] on the device, one conditioning vector per planned row."""
        text = {
            (template, phrase): vector
            for template, phrases in plan.phrases.items()
            for phrase, vector in zip(phrases, self.text_embeddings(phrases, template), strict=True)
        }
        visual: list[torch.Tensor] = []
        if plan.supports:
            embedded = self.support_embeddings(torch.cat(plan.supports))
            sizes = [int(s.shape[0]) for s in plan.supports]
            visual = [chunk.mean(0) for chunk in embedded.split(sizes)]
        rows = []
        for row in plan.rows:
            if isinstance(row, TextRow):
                rows.append(text[row.template, row.phrase])
            elif isinstance(row, VisualRow):
                vector = visual[row.support]
                if row.phrase is not None:
                    vector = self.hybrid(text[row.template, row.phrase], vector, row.weight)
                rows.append(vector)
            else:
                given = plan.conditionals[row.request][row.index]
                rows.append(given.to(self.device, torch.float32))
        return torch.stack(rows)

    def _render_span(self, logits: torch.Tensor, span: RequestSpan) -> Segmentation:
        rows = logits[span.start : span.stop]
        return self.render(
            rows[: span.positives],
            span.size,
            threshold=span.threshold,
            combine=span.combine,
            negative_logits=rows[span.positives :] if span.negatives else None,
            soft=span.soft,
            labels=span.labels,
            runs=span.runs,
        )

    # ----------------------------------------------------------------- end to end
    def segment(
        self,
        image,
        prompts: Sequence[str] = (),
        *,
        conditionals: torch.Tensor | None = None,
        negative_prompts: Sequence[str] = (),
        template: Template | str = Template.NONE,
        threshold: float | None = None,
        combine: Combine | str = Combine.NONE,
        soft: bool = False,
    ) -> Segmentation:
        """Segment one image for text ``prompts`` and/or given ``conditionals`` [N, D].

        Returns masks at the image's original size (see ``Segmentation``; ``soft`` adds
        8-bit probability maps) through the same code path as the service's batches.
        """
        if not prompts and conditionals is None:
            raise InvalidPromptError("give at least one prompt or conditioning vector")
        prepared = self.prepare_image(image)
        request = SegmentRequest(
            pixels=prepared.pixels,
            size=prepared.size,
            image_key="image",
            prompts=tuple(prompts),
            negative_prompts=tuple(negative_prompts),
            template=parse_template(template),
            conditionals=None if conditionals is None else conditionals.reshape(
                -1, conditionals.shape[-1]
            ),
            threshold=threshold,
            combine=Combine(combine),
            soft=soft,
        )  # fmt: skip
        result = self.segment_batch([request])[0]
        assert result is not None  # nothing was skipped
        return result

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict[str, int]:
        """Text-cache counters: hits, misses, entries, capacity."""
        return self.text_cache.stats()

    def clear_text_cache(self) -> None:
        self.text_cache.clear()

    def describe(self) -> dict[str, Any]:
        """What is loaded where: variant, threshold, input size, weights, device, dtype."""
        loaded = self.loaded
        return {
            "variant": self.config.variant,
            "threshold": self.config.threshold,
            "input_size": self.config.input_size,
            "weights": {
                "source": loaded.source if loaded else "custom",
                "kind": loaded.kind if loaded else "custom",
                "files": [str(f) for f in loaded.files] if loaded else [],
            },
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }


def _host_runs(runs: list[torch.Tensor]) -> tuple:
    """Device run-length tensors -> numpy int64 arrays, in one copy to the host."""
    if len(runs) == 1:
        return (runs[0].cpu().numpy(),)
    flat = torch.cat(runs).cpu().numpy()
    return tuple(np.split(flat, np.cumsum([int(r.shape[0]) for r in runs[:-1]])))
