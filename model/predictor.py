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
It is ``collect(launch(plan))``: ``launch`` uploads the batch (pinned, non-blocking),
enqueues the model and the rendering and starts the copies back on a side stream;
``collect`` waits for those copies and builds the results. A server that calls ``launch``
for the next batch before ``collect``-ing the previous one keeps the GPU busy while the host
finishes (``service.batcher``); on a CPU both orders compute the same tensors.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image, JpegImagePlugin

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
from .compiled import BucketedTower
from .config import ClipSegConfig
from .device import autocast, cpu_bf16_support, resolve_device, resolve_dtype
from .device_decode import (
    DEVICE_MAX_PIXELS,
    DEVICE_MODES,
    DeferredJpeg,
    decode_on_device,
    device_decode_available,
)
from .errors import InvalidMaskError, InvalidPromptError
from .finish import finish_on_host
from .image_formats import ALLOWED_FORMATS, open_image, read_bytes
from .image_modes import SWAPPING_ORIENTATIONS, exif_orientation
from .onnx_model import LoadedOnnx, OnnxClipSeg
from .postprocess import DEFAULT_POST, Combine, PostProcess, Refine, check_size
from .render import RenderedMasks, render_masks
from .support import prepare_support_input
from .text import Template, parse_template, texts_per_phrase
from .text_cache import TextEmbeddingCache
from .transfer import HostCopy, Transfers
from .transforms import (
    DEFAULT_MAX_PIXELS,
    ImageInfo,
    decode_image,
    normalize_pixels,
    probe_image,
    to_guide_pixels,
    to_model_pixels,
)
from .weights.loader import LoadedModel, load_model


@dataclass(frozen=True)
class PreparedImage:
    """A query image ready for the model.

    pixels: uint8 [3, S, S] (the squashed RGB image, normalised on the device), or a
        ``DeferredJpeg`` when the predictor decodes JPEGs on its device.
    size: (height, width) of the original image after EXIF orientation — masks come back
        at this size.
    guide: the upright image at ``size``, uint8 [3, H, W], when asked for (refinement).
    """

    pixels: torch.Tensor | DeferredJpeg
    size: tuple[int, int]
    guide: torch.Tensor | None = None


@dataclass
class PendingBatch:
    """A launched batch (``Predictor.launch``): its results are on their way to the host.

    rendered: per request, the ``RenderedMasks`` (None: skipped) and its span; copy: every
    rendered tensor in order, travelling to the host.
    """

    rendered: list[tuple[RenderedMasks, RequestSpan] | None]
    copy: HostCopy


class Predictor:
    """Runs a ``ClipSeg`` model on one device in inference mode.

    Args:
        model: the module (moved to ``device``; kept in fp32, autocast does the rest), or an
            ``OnnxClipSeg`` (the onnx backend: ONNX Runtime runs the graphs at the
            precision it was loaded with; everything around the model is the same).
        device: "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
        dtype: "auto" (bf16/fp16 on CUDA; bf16 on CPUs with native bf16, else fp32),
            "float32", "bfloat16", "float16"; for an ``OnnxClipSeg``, "auto" or its own
            precision ("float32" / "int8").
        text_cache_size: number of (template, phrase) embeddings kept.
        max_pixels: decompression-bomb guard for decoded images.
        decode: where query JPEGs are decoded: "cpu" (Pillow, at libjpeg's draft scale),
            "device" (in the batch, on the model's device: nvJPEG on CUDA; see
            ``model.device_decode``) or "auto" (device on CUDA when available, else cpu).
        compile_buckets: batch sizes to ``torch.compile`` the vision tower for (padded up
            to the next; ``model.compiled``); call ``warm_up`` before serving. None: eager.
        compile_backend: torch.compile's backend ("inductor"; "eager" traces only).
        owns_model: the module is this predictor's alone (``from_source``): bf16 weights
            and compilation change it in place instead of in a copy.

    On CUDA with bf16 the weights themselves are cast to bf16 (autocast still keeps
    softmax and layer norms in fp32): no per-call weight casts, half the memory traffic.
    """

    def __init__(
        self,
        model: ClipSeg | OnnxClipSeg,
        *,
        device: str = "auto",
        dtype: str = "auto",
        text_cache_size: int = 1024,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        loaded: LoadedModel | LoadedOnnx | None = None,
        decode: str = "cpu",
        compile_buckets: Sequence[int] | None = None,
        compile_backend: str = "inductor",
        owns_model: bool = False,
    ) -> None:
        self.backend = "onnx" if isinstance(model, OnnxClipSeg) else "torch"
        if isinstance(model, OnnxClipSeg):
            _check_onnx_arguments(model, dtype, compile_buckets)
            if device == "auto":
                device = str(model.device)  # its providers were chosen for that device
        self.device = resolve_device(device)
        # The onnx backend's precision is in its graphs: no autocast around them.
        self.dtype = resolve_dtype(dtype, self.device) if self.backend == "torch" else torch.float32
        bf16_weights = self.device.type == "cuda" and self.dtype == torch.bfloat16
        if (bf16_weights or compile_buckets) and not owns_model:
            # A caller's module (perhaps shared with an fp32 predictor) keeps its dtype and
            # its eager tower: this predictor changes a copy of its own.
            model = copy.deepcopy(model)
        self.model = model.to(self.device).eval()
        if bf16_weights:
            self.model.to(torch.bfloat16)
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.max_pixels = max_pixels
        self.loaded = loaded
        self.decode = _resolve_decode(decode, self.device)
        self.transfers = Transfers(self.device)
        if compile_buckets:
            self.model.compiled_tower = BucketedTower(
                self.model.image_features,
                compile_buckets,
                functools.partial(torch.compile, backend=compile_backend),
            )

    def warm_up(self) -> None:
        """Compile the vision tower's buckets now (no-op when eager); blocking, minutes on
        a GPU: the service runs it on the model thread before /readyz turns 200."""
        tower = self.model.compiled_tower
        if not isinstance(tower, BucketedTower):
            return
        size = self.config.input_size
        blank = torch.zeros((1, 3, size, size), dtype=torch.uint8)
        with torch.inference_mode():
            pixels = self._normalised(self.transfers.to_device(blank))
            with self._inference():
                tower.warm_up(pixels)

    @classmethod
    def from_source(
        cls,
        source: str,
        *,
        variant: str | None = None,
        backbone: str = "openai",
        backend: str = "torch",
        **kwargs,
    ) -> Predictor:
        """Load weights from any source ``load_model`` understands and wrap them.

        ``backend``: "torch", or "onnx" (ONNX Runtime; ``source`` may also be a
        ``clipseg-export`` folder, and other sources are exported at load: see
        ``model.onnx_source``).
        """
        if backend == "onnx":
            from .onnx_source import load_onnx, resolve_onnx_device

            device = resolve_onnx_device(kwargs.get("device", "auto"))
            onnx = load_onnx(
                source,
                dtype=kwargs.get("dtype", "auto"),
                device=device,
                variant=variant,
                backbone=backbone,
            )
            kwargs |= {"dtype": onnx.model.precision, "device": str(device)}
            return cls(onnx.model, loaded=onnx, owns_model=True, **kwargs)
        if backend != "torch":
            raise ValueError(f"unknown backend {backend!r}; use torch or onnx")
        loaded = load_model(source, variant=variant, backbone=backbone)
        return cls(loaded.model, loaded=loaded, owns_model=True, **kwargs)

    @property
    def config(self) -> ClipSegConfig:
        return self.model.config

    # ------------------------------------------------------------------ CPU side
    def probe_image(self, source) -> ImageInfo:
        """Format, size and mode from the header (no pixels decoded; same guards)."""
        return probe_image(source, max_pixels=self.max_pixels)

    def prepare_image(self, source, *, guide: bool = False) -> PreparedImage:
        """Decode any image (bytes, path, PIL) into model input; see ``PreparedImage``.

        With device decoding, an RGB or grayscale JPEG (bytes or path) only has its header
        checked here (the same guards as ``decode_image``); it is decoded in the batch.
        ``guide``: also keep the full-size image, for refinement (decoded in full on the
        CPU, where a JPEG otherwise decodes at a reduced draft scale).
        """
        if self.decode == "device" and not guide and not isinstance(source, Image.Image):
            deferred = self._defer_jpeg(read_bytes(source))
            if deferred is not None:
                return deferred
        cfg = self.config
        draft = None if guide else cfg.input_size
        decoded = decode_image(source, max_pixels=self.max_pixels, draft_size=draft)
        width, height = decoded.original_size
        pixels = to_model_pixels(decoded.image, cfg.input_size)
        full = to_guide_pixels(decoded.image) if guide else None
        return PreparedImage(pixels, (height, width), full)

    def _defer_jpeg(self, data: bytes) -> PreparedImage | None:
        """A ``DeferredJpeg`` for an RGB/grayscale JPEG of at most ``DEVICE_MAX_PIXELS``
        whose header passes the guards; None: decode it on the CPU."""
        header = open_image(data, max_pixels=self.max_pixels, formats=ALLOWED_FORMATS)
        if (
            not isinstance(header, JpegImagePlugin.JpegImageFile)
            or header.mode not in DEVICE_MODES
            or header.width * header.height > DEVICE_MAX_PIXELS
        ):
            return None
        orientation = exif_orientation(header)
        width, height = header.size
        if orientation in SWAPPING_ORIENTATIONS:
            width, height = height, width
        return PreparedImage(DeferredJpeg(data, orientation), (height, width))

    def _cpu_pixels(self, data: bytes) -> torch.Tensor:
        """The CPU path for one image: uint8 [3, S, S] (device decoding's fallback)."""
        size = self.config.input_size
        decoded = decode_image(data, max_pixels=self.max_pixels, draft_size=size)
        return to_model_pixels(decoded.image, size)

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
        post: PostProcess | None = None,
        guide: torch.Tensor | None = None,
        background_logits: torch.Tensor | None = None,
    ) -> Segmentation:
        """Logits [P, S, S] (+ negatives [N, S, S]) -> masks at ``size`` (height, width).

        Sigmoid, upsample (bilinear, or refined with ``post.refine`` and the uint8
        [C, H, W] ``guide``), then threshold — never the other way round — one band of
        rows at a time on the device (``model.render``), then ``post``'s host steps
        (``model.finish``); the host receives bit-packed masks, scores, areas, boxes and,
        with ``soft``, 8-bit probability maps; with ``runs``, each mask's COCO RLE run
        lengths. ``background_logits`` [1, S, S]: the background prompt's row, for
        ``post.background=prompt``.
        """
        post = post or DEFAULT_POST
        span = RequestSpan(
            start=0,
            positives=int(logits.shape[0]),
            negatives=0 if negative_logits is None else int(negative_logits.shape[0]),
            size=check_size(size),
            threshold=threshold,
            combine=Combine(combine),
            soft=soft,
            labels=tuple(labels) if labels is not None else (),
            runs=runs,
            post=post,
            guide=guide,
        )
        extra = [t for t in (negative_logits, background_logits) if t is not None]
        rows = torch.cat([logits, *extra]) if extra else logits
        rendered = self._render_span(rows, span)
        copy = self.transfers.to_host(_tensors(rendered))
        return self._segmentation(_host_rendered(rendered, copy.wait()), span)

    # ------------------------------------------------------------------- batches
    def execute(
        self, plan: BatchPlan, keep: Callable[[int], bool] | None = None
    ) -> list[Segmentation | None]:
        """Run a plan: text and support encoders once each, the backbone once per distinct
        image, the decoder over every row, then each request's masks.

        ``keep(i)`` is asked just before request ``i``'s masks are rendered; False skips
        them (its client left) and yields None in its place. Raises if any part fails.
        ``collect(launch(plan, keep))``.
        """
        return self.collect(self.launch(plan, keep))

    def launch(self, plan: BatchPlan, keep: Callable[[int], bool] | None = None) -> PendingBatch:
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
                rendered.append((self._render_span(rows, span), span))
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

    def _render_span(self, rows: torch.Tensor, span: RequestSpan) -> RenderedMasks:
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

    # ----------------------------------------------------------------- end to end
    def segment(
        self,
        image,
        prompts: Sequence[str] = (),
        *,
        conditionals: torch.Tensor | None = None,
        negative_prompts: Sequence[str] = (),
        template: Template | str = Template.NONE,
        threshold: float | Sequence[float] | None = None,
        combine: Combine | str = Combine.NONE,
        soft: bool = False,
        post: PostProcess | None = None,
    ) -> Segmentation:
        """Segment one image for text ``prompts`` and/or given ``conditionals`` [N, D].

        Returns masks at the image's original size (see ``Segmentation``; ``soft`` adds
        8-bit probability maps) through the same code path as the service's batches.
        ``threshold``: one, or one per prompt; ``post``: refinement and post-processing
        (``model.postprocess.PostProcess``).
        """
        if not prompts and conditionals is None:
            raise InvalidPromptError("give at least one prompt or conditioning vector")
        post = post or DEFAULT_POST
        refine = post.refine is not Refine.NONE
        prepared = self.prepare_image(image, guide=refine)
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
            # SegmentRequest checks it and keeps a float, or a tuple for several
            threshold=threshold if threshold is None or isinstance(threshold, float | int)
            else tuple(threshold),
            combine=Combine(combine),
            soft=soft,
            post=post,
            guide=prepared.guide,
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
            "backend": self.backend,
            "device": str(self.device),
            "dtype": self.precision,
            # What ``dtype=auto`` looks for on a CPU: AMX or AVX-512 BF16, or null.
            "cpu_bf16": cpu_bf16_support(),
            "decode": self.decode,
            "compiled_batch_sizes": list(getattr(self.model.compiled_tower, "buckets", ())),
            **(self._onnx_description() if isinstance(self.model, OnnxClipSeg) else {}),
        }

    def _onnx_description(self) -> dict[str, Any]:
        """The onnx backend's providers, and whether it runs int8 here and why (the
        kernel class, the int8 format, the reason: ``model.int8_checks``)."""
        decision = getattr(self.loaded, "int8", None)
        return {
            "providers": self.model.providers,
            "int8": decision.as_dict() if decision is not None else None,
        }

    @property
    def precision(self) -> str:
        """The model's arithmetic: "float32", "bfloat16", "float16" or (onnx) "int8"."""
        if isinstance(self.model, OnnxClipSeg):
            return self.model.precision
        return str(self.dtype).removeprefix("torch.")


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


def _check_onnx_arguments(
    model: OnnxClipSeg, dtype: str, compile_buckets: Sequence[int] | None
) -> None:
    """What an ``OnnxClipSeg`` cannot do: another precision than its own, torch.compile."""
    if dtype not in ("auto", model.precision):
        raise ValueError(
            f"this ONNX model runs {model.precision}; load the export with "
            f"precision={dtype!r} for that (dtype is auto or {model.precision!r} here)"
        )
    if compile_buckets:
        raise ValueError("compile_buckets is for the torch backend (ONNX Runtime compiles its own)")


def _resolve_decode(decode: str, device: torch.device) -> str:
    """ "cpu" or "device" for a ``decode`` argument of cpu | device | auto."""
    if decode not in ("cpu", "device", "auto"):
        raise ValueError(f"unknown decode {decode!r}; use cpu, device or auto")
    if decode == "auto":
        use = device.type == "cuda" and device_decode_available(device)
        return "device" if use else "cpu"
    if decode == "device" and not device_decode_available(device):
        raise ValueError(f"JPEG decoding on {device} is not available in this build")
    return decode
