"""The device side of inference: encoders, the backbone and decoder, rendering, and
running whole batch plans.

``execute`` runs a ``BatchPlan`` — the one code path of the service's batches and of
``Predictor.segment``. It is ``collect(launch(plan))``: ``launch`` uploads the batch
(pinned, non-blocking), enqueues the model and the rendering and starts the copies back on
a side stream; ``collect`` waits for those copies and builds the results. A server that
calls ``launch`` for the next batch before ``collect``-ing the previous one keeps the GPU
busy while the host finishes (``service.batcher``); on a CPU both orders compute the same
tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.device import autocast
from clipseg_serve.model.errors import InvalidPromptError
from clipseg_serve.model.imaging.device_decode import DeferredJpeg, decode_on_device
from clipseg_serve.model.imaging.transforms import normalize_pixels
from clipseg_serve.model.inference.backend import Backend
from clipseg_serve.model.inference.batch import (
    BatchPlan,
    RequestSpan,
    Segmentation,
    TextRow,
    VisualRow,
)
from clipseg_serve.model.inference.finish import finish_on_host
from clipseg_serve.model.inference.text_cache import TextEmbeddingCache
from clipseg_serve.model.inference.transfer import HostCopy, Transfers
from clipseg_serve.model.masks.postprocess import Refine
from clipseg_serve.model.masks.render import RenderedMasks, render_masks
from clipseg_serve.model.network.compiled import BucketedTower
from clipseg_serve.model.network.text import Template, parse_template, texts_per_phrase

#: A plan's request index -> whether to render it (False: its client left).
Keep = Callable[[int], bool]


@dataclass
class PendingBatch:
    """A launched batch (``Engine.launch``): its results are on their way to the host.

    rendered: per request, the ``RenderedMasks`` (None: skipped) and its span; copy: every
    rendered tensor in order, travelling to the host.
    """

    rendered: list[tuple[RenderedMasks, RequestSpan] | None]
    copy: HostCopy


def hybrid(text: torch.Tensor, visual: torch.Tensor, text_weight: float) -> torch.Tensor:
    """``w * text + (1 - w) * visual`` (CLIPSeg was trained with such mixes)."""
    if not 0.0 <= text_weight <= 1.0:
        raise InvalidPromptError(f"text_weight {text_weight} is not in [0, 1]")
    return text_weight * text + (1.0 - text_weight) * visual


class Engine:
    """Runs a ``Backend`` on ``device`` at ``dtype`` (autocast; float32 for backends with
    a fixed precision), with a text-embedding cache.

    cpu_pixels: decodes one JPEG on the CPU, uint8 [3, S, S] (device decoding's fallback).
    """

    def __init__(
        self,
        model: Backend,
        device: torch.device,
        dtype: torch.dtype,
        text_cache: TextEmbeddingCache,
        cpu_pixels: Callable[[bytes], torch.Tensor],
    ) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.text_cache = text_cache
        self.transfers = Transfers(device)
        self._cpu_pixels = cpu_pixels

    @property
    def config(self) -> ClipSegConfig:
        return self.model.config

    def _inference(self):
        return autocast(self.device, self.dtype)

    def warm_up(self) -> None:
        """Compile the vision tower's buckets now (no-op when eager)."""
        tower = self.model.compiled_tower
        if not isinstance(tower, BucketedTower):
            return
        size = self.config.input_size
        blank = torch.zeros((1, 3, size, size), dtype=torch.uint8)
        with torch.inference_mode():
            pixels = self._normalised(self.transfers.to_device(blank))
            with self._inference():
                tower.warm_up(pixels)

    # ------------------------------------------------------------------ encoders
    def text_embeddings(
        self, prompts: Sequence[str], template: Template | str = Template.NONE
    ) -> torch.Tensor:
        """Conditioning vectors for text prompts: float32 [N, D] on the device.

        Cached per (template, phrase); all misses go through one padded-to-longest batch.
        """
        mode = parse_template(template)
        keys = _text_keys(prompts, mode)
        return self.text_cache.get(keys, lambda missing: self._encode_phrases(missing, mode))

    def texts_to_encode(self, prompts: Sequence[str], template: Template | str) -> int:
        """Texts the encoder would run for ``prompts`` now: those not cached, times the
        template's texts per phrase (a read of the cache; safe from any thread)."""
        mode = parse_template(template)
        return self.text_cache.missing(_text_keys(prompts, mode)) * texts_per_phrase(mode)

    def _encode_phrases(self, keys: list[tuple[str, str]], mode: Template) -> torch.Tensor:
        with torch.inference_mode(), self._inference():
            return self.model.embed_phrases([phrase for _, phrase in keys], mode)

    def support_embeddings(self, supports: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings of engineered supports: [K, 3, S, S] -> float32 [K, D]."""
        with torch.inference_mode(), self._inference():
            return self.model.embed_images(supports.to(self.device)).float()

    # ------------------------------------------------------------------- network
    def logits(
        self,
        images: torch.Tensor,
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One backbone pass per image, the decoder per row: float32 [P, S, S].

        images [B, 3, S, S]: uint8 pixels (``to_model_pixels``; normalised on the device)
        or float32 already normalised; conditionals [P, D]; image_index [P] (None: P == B).
        """
        with torch.inference_mode():
            pixels = self._normalised(self.transfers.to_device(images))
            with self._inference():
                index = None if image_index is None else image_index.to(self.device)
                out = self.model(pixels, conditionals.to(self.device), index)
        return out.float()

    def _normalised(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> normalised float32 (on their device); float passes through."""
        if images.dtype != torch.uint8:
            return images
        return normalize_pixels(images, self.config.mean, self.config.std)

    def resolve_threshold(
        self, threshold: float | tuple[float, ...] | None
    ) -> float | tuple[float, ...]:
        """``threshold`` (one, or one per prompt), or the checkpoint's calibrated one."""
        if threshold is None:
            return self.config.threshold
        return tuple(threshold) if isinstance(threshold, tuple) else float(threshold)

    # ------------------------------------------------------------------- batches
    def execute(self, plan: BatchPlan, keep: Keep | None = None) -> list[Segmentation | None]:
        """Run a plan: text and support encoders once each, the backbone once per distinct
        image, the decoder over every row, then each request's masks.

        ``keep(i)`` is asked just before request ``i``'s masks are rendered; False skips
        them (its client left) and yields None in its place. Raises if any part fails.
        """
        return self.collect(self.launch(plan, keep))

    def launch(self, plan: BatchPlan, keep: Keep | None = None) -> PendingBatch:
        """Upload, compute and render a plan, and start the copies back; see ``execute``.

        On CUDA this returns once the work is enqueued (up to the host syncs rendering
        needs), the inputs having gone up on the upload stream; on a CPU it computes.
        """
        with torch.inference_mode():
            images = self._batch_images(plan.images)
            conditionals = self._row_conditionals(plan)
            index = torch.tensor(plan.row_image, dtype=torch.long)
            logits = self.logits(images, conditionals, index)
            rendered: list[tuple[RenderedMasks, RequestSpan] | None] = []
            for i, span in enumerate(plan.spans):
                if keep is not None and not keep(i):
                    rendered.append(None)
                    continue
                rows = logits[span.start : span.stop]
                rendered.append((self.render_span(rows, span), span))
            flat = [t for item in rendered if item is not None for t in _tensors(item[0])]
            return PendingBatch(rendered, self.transfers.to_host(flat))

    def collect(self, pending: PendingBatch) -> list[Segmentation | None]:
        """Wait for a launched batch's copies; its results in request order (None: skipped)."""
        host = iter(pending.copy.wait())
        results: list[Segmentation | None] = []
        for item in pending.rendered:
            if item is None:
                results.append(None)
                continue
            rendered, span = item
            own = [next(host) for _ in _tensors(rendered)]
            results.append(self._segmentation(_host_rendered(rendered, own), span))
        return results

    def render_alone(self, rows: torch.Tensor, span: RequestSpan) -> Segmentation:
        """One request's rows of logits -> its ``Segmentation`` (rendered, copied back and
        finished on the host)."""
        rendered = self.render_span(rows, span)
        copy = self.transfers.to_host(_tensors(rendered))
        return self._segmentation(_host_rendered(rendered, copy.wait()), span)

    def _batch_images(self, items: Sequence[torch.Tensor | DeferredJpeg]) -> torch.Tensor:
        """The plan's images on the device, [B, 3, S, S]: uint8 when every one is 8-bit
        (normalised later, on the device), else normalised float32.

        Deferred JPEGs are decoded there in one call; CPU tensors go up in one pinned copy.
        """
        size = self.config.input_size
        deferred = [x for x in items if isinstance(x, DeferredJpeg)]
        decoded = iter(decode_on_device(deferred, size, self.device, self._cpu_pixels))
        tensors = [next(decoded) if isinstance(x, DeferredJpeg) else x for x in items]
        if all(t.dtype == torch.uint8 for t in tensors):
            if all(t.device.type == "cpu" for t in tensors):
                return self.transfers.to_device(torch.stack(tensors))
            return torch.stack([self.transfers.to_device(t) for t in tensors])
        cfg = self.config
        floats = [
            normalize_pixels(t, cfg.mean, cfg.std) if t.dtype == torch.uint8 else t.float()
            for t in tensors
        ]
        return torch.stack([self.transfers.to_device(t) for t in floats])

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
                    vector = hybrid(text[row.template, row.phrase], vector, row.weight)
                rows.append(vector)
            else:
                given = plan.conditionals[row.request][row.index]
                rows.append(given.to(self.device, torch.float32))
        return torch.stack(rows)

    def render_span(self, rows: torch.Tensor, span: RequestSpan) -> RenderedMasks:
        """A request's rows of logits (positives, negatives, then the background prompt's)
        -> its masks, on the device."""
        post = span.post
        negatives = rows[span.positives : span.positives + span.negatives]
        guide = None
        if post.refine is not Refine.NONE and span.guide is not None:
            guide = self.transfers.to_device(span.guide)
        with torch.inference_mode():
            return render_masks(
                rows[: span.positives],
                span.size,
                self.resolve_threshold(span.threshold),
                span.combine,
                negatives if span.negatives else None,
                # Instances are scored by the maps; reshaped masks need runs made afresh.
                soft=span.soft or post.instances,
                runs=span.runs and not post.reshapes,
                post=post,
                guide=guide,
                background_logits=rows[-1:] if span.background else None,
                grid=self.config.grid_size,
            )

    def _segmentation(self, rendered: RenderedMasks, span: RequestSpan) -> Segmentation:
        """Host-side ``RenderedMasks`` -> the request's ``Segmentation``."""
        count = int(rendered.scores.shape[0])
        labels = span.labels or tuple(str(i) for i in range(count))
        threshold = None if span.background else self.resolve_threshold(span.threshold)
        result = Segmentation(
            packed_masks=rendered.packed.numpy(),
            size=(int(span.size[0]), int(span.size[1])),
            scores=rendered.scores.numpy(),
            areas=rendered.areas.numpy(),
            boxes=rendered.boxes.numpy(),
            labels=tuple(labels),
            threshold=threshold,
            soft=None if rendered.soft is None else rendered.soft.numpy(),
            runs=None if rendered.runs is None else tuple(r.numpy() for r in rendered.runs),
        )
        return finish_on_host(result, span.post, keep_soft=span.soft)


def _text_keys(prompts: Sequence[str], mode: Template) -> list[tuple[str, str]]:
    """The text cache's keys: (template, the phrase with its whitespace collapsed)."""
    return [(mode.value, " ".join(str(p).split())) for p in prompts]


def _tensors(rendered: RenderedMasks) -> list[torch.Tensor]:
    """Every tensor of ``rendered`` in a fixed order (``_host_rendered`` reads it back)."""
    out = [rendered.packed, rendered.scores, rendered.areas, rendered.boxes]
    if rendered.soft is not None:
        out.append(rendered.soft)
    return out + list(rendered.runs or ())


def _host_rendered(rendered: RenderedMasks, host: list[torch.Tensor]) -> RenderedMasks:
    """``rendered`` with its tensors replaced by their host copies (same order)."""
    packed, scores, areas, boxes, *rest = host
    soft = rest.pop(0) if rendered.soft is not None else None
    runs = rest if rendered.runs is not None else None
    return RenderedMasks(packed, scores, areas, boxes, soft, runs=runs)
