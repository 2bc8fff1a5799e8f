"""The inference API: images and prompts in, masks at the image's own size out.

A facade over two parts, split by where they run so a server can put each on the right
thread:

* CPU, per request (``model.inference.preparation``): ``prepare_image`` (decode, orient,
  resize) and ``prepare_support`` (visual-prompt engineering of a support image + mask).
* Device, batched (``model.inference.engine``): ``text_embeddings`` (LRU-cached),
  ``support_embeddings``, ``logits`` (one backbone pass per image, decoder per prompt),
  rendering, and whole batch plans: ``execute`` = ``collect(launch(plan))``.

``segment`` chains everything for library and CLI users through the service's own code
path. Which network runs — a torch ``ClipSeg`` or an ONNX Runtime ``OnnxClipSeg`` — is the
``Backend`` it was given (``load_predictor`` chooses one from a weights source).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.device import cpu_bf16_support, resolve_device, resolve_dtype
from clipseg_serve.model.errors import InvalidMaskError, InvalidPromptError
from clipseg_serve.model.imaging.device_decode import device_decode_available
from clipseg_serve.model.imaging.transforms import DEFAULT_MAX_PIXELS, ImageInfo
from clipseg_serve.model.inference.backend import Backend, Provenance
from clipseg_serve.model.inference.batch import (
    BatchPlan,
    RequestSpan,
    Segmentation,
    SegmentRequest,
    plan_batch,
)
from clipseg_serve.model.inference.engine import Engine, Keep, PendingBatch, hybrid
from clipseg_serve.model.inference.preparation import ImagePreparer, PreparedImage
from clipseg_serve.model.inference.text_cache import TextEmbeddingCache
from clipseg_serve.model.masks.postprocess import (
    DEFAULT_POST,
    Combine,
    PostProcess,
    Refine,
    check_size,
)
from clipseg_serve.model.network.compiled import BucketedTower
from clipseg_serve.model.network.text import Template, parse_template

__all__ = ["PendingBatch", "Predictor", "PreparedImage"]


class Predictor:
    """Runs a CLIPSeg ``Backend`` on one device in inference mode.

    Args:
        model: a ``ClipSeg`` (moved to ``device``; kept in fp32, autocast does the rest)
            or an ``OnnxClipSeg`` (ONNX Runtime runs the graphs at the precision it was
            loaded with; everything around the model is the same).
        device: "auto" (CUDA if present; a backend's own device if it has one), "cpu",
            "cuda", "cuda:1", ...
        dtype: "auto" (bf16/fp16 on CUDA; bf16 on CPUs with native bf16, else fp32),
            "float32", "bfloat16", "float16"; for a backend with a fixed precision, "auto"
            or that precision.
        text_cache_size: number of (template, phrase) embeddings kept.
        max_pixels: decompression-bomb guard for decoded images.
        loaded: where the model came from (for ``describe``).
        decode: where query JPEGs are decoded: "cpu" (Pillow, at libjpeg's draft scale),
            "device" (in the batch, on the model's device: nvJPEG on CUDA; see
            ``model.imaging.device_decode``) or "auto" (device on CUDA when available).
        compile_buckets: batch sizes to ``torch.compile`` the vision tower for (padded up
            to the next; ``model.network.compiled``); call ``warm_up`` before serving.
            None: eager.
        compile_backend: torch.compile's backend ("inductor"; "eager" traces only).
        owns_model: the module is this predictor's alone (``load_predictor``): bf16
            weights and compilation change it in place instead of in a copy.

    On CUDA with bf16 the weights themselves are cast to bf16 (autocast still keeps
    softmax and layer norms in fp32): no per-call weight casts, half the memory traffic.
    """

    def __init__(
        self,
        model: Backend,
        *,
        device: str = "auto",
        dtype: str = "auto",
        text_cache_size: int = 1024,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        loaded: Provenance | None = None,
        decode: str = "cpu",
        compile_buckets: Sequence[int] | None = None,
        compile_backend: str = "inductor",
        owns_model: bool = False,
    ) -> None:
        self.backend = model.backend_name
        fixed = model.fixed_precision
        if fixed is not None:
            _check_fixed_precision(fixed, dtype, compile_buckets)
        if device == "auto" and model.home_device is not None:
            device = str(model.home_device)
        self.device = resolve_device(device)
        # A fixed precision lives in the backend: no autocast around it.
        self.dtype = resolve_dtype(dtype, self.device) if fixed is None else torch.float32
        bf16_weights = self.device.type == "cuda" and self.dtype == torch.bfloat16
        if (bf16_weights or compile_buckets) and not owns_model:
            # A caller's module (perhaps shared with an fp32 predictor) keeps its dtype and
            # its eager tower: this predictor changes a copy of its own.
            model = copy.deepcopy(model)
        self.model: Backend = model.to(self.device).eval()
        if bf16_weights:
            self.model.to(torch.bfloat16)
        if compile_buckets:
            self.model.compiled_tower = BucketedTower(
                self.model.image_features,
                compile_buckets,
                functools.partial(torch.compile, backend=compile_backend),
            )
        self.max_pixels = max_pixels
        self.loaded = loaded
        self.decode = _resolve_decode(decode, self.device)
        self.text_cache = TextEmbeddingCache(text_cache_size)
        self.preparer = ImagePreparer(self.config, max_pixels, self.decode)
        self.engine = Engine(
            self.model, self.device, self.dtype, self.text_cache, self.preparer.cpu_pixels
        )

    def warm_up(self) -> None:
        """Compile the vision tower's buckets now (no-op when eager); blocking, minutes on
        a GPU: the service runs it on the model thread before /readyz turns 200."""
        self.engine.warm_up()

    @property
    def config(self) -> ClipSegConfig:
        return self.model.config

    # ------------------------------------------------------------------ CPU side
    def probe_image(self, source) -> ImageInfo:
        """Format, size and mode from the header (no pixels decoded; same guards)."""
        return self.preparer.probe(source)

    def prepare_image(self, source, *, guide: bool = False) -> PreparedImage:
        """Decode any image (bytes, path, PIL) into model input (``PreparedImage``);
        ``guide``: also keep the full-size upright image, for refinement."""
        return self.preparer.image(source, guide=guide)

    def prepare_support(self, image, mask) -> torch.Tensor:
        """Engineer one visual prompt: support image + mask -> float32 [3, S, S] (CPU)."""
        return self.preparer.support(image, mask)

    # --------------------------------------------------------------- device side
    def text_embeddings(
        self, prompts: Sequence[str], template: Template | str = Template.NONE
    ) -> torch.Tensor:
        """Conditioning vectors for text prompts: float32 [N, D] on the device (cached)."""
        return self.engine.text_embeddings(prompts, template)

    def texts_to_encode(self, prompts: Sequence[str], template: Template | str) -> int:
        """Texts the encoder would run for ``prompts`` now (a read of the cache)."""
        return self.engine.texts_to_encode(prompts, template)

    def support_embeddings(self, supports: torch.Tensor) -> torch.Tensor:
        """CLIP embeddings of engineered supports: [K, 3, S, S] -> float32 [K, D]."""
        return self.engine.support_embeddings(supports)

    def visual_embedding(self, supports: Sequence[tuple[object, object]]) -> torch.Tensor:
        """k-shot conditioning: mean of the support embeddings -> float32 [D]."""
        if not supports:
            raise InvalidMaskError("at least one support image + mask is needed")
        batch = torch.stack([self.prepare_support(image, mask) for image, mask in supports])
        return self.support_embeddings(batch).mean(0)

    hybrid = staticmethod(hybrid)

    def logits(
        self,
        images: torch.Tensor,
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """images [B, 3, S, S] (uint8 or normalised float32), conditionals [P, D],
        image_index [P] (None: P == B) -> float32 logits [P, S, S]."""
        return self.engine.logits(images, conditionals, image_index)

    def resolve_threshold(
        self, threshold: float | tuple[float, ...] | None
    ) -> float | tuple[float, ...]:
        """``threshold`` (one, or one per prompt), or the checkpoint's calibrated one."""
        return self.engine.resolve_threshold(threshold)

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
        rows at a time on the device (``model.masks.render``), then ``post``'s host steps
        (``model.inference.finish``). ``soft`` adds 8-bit probability maps, ``runs`` each
        mask's COCO RLE run lengths. ``background_logits`` [1, S, S]: the background
        prompt's row, for ``post.background=prompt``.
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
        return self.engine.render_alone(rows, span)

    # ------------------------------------------------------------------- batches
    def execute(self, plan: BatchPlan, keep: Keep | None = None) -> list[Segmentation | None]:
        """Run a plan: ``collect(launch(plan, keep))``; ``keep(i)`` False skips request
        ``i`` (None in its place)."""
        return self.collect(self.launch(plan, keep))

    def launch(self, plan: BatchPlan, keep: Keep | None = None) -> PendingBatch:
        """Start a plan on the device (``Engine.launch``); ``collect`` its results."""
        return self.engine.launch(plan, keep)

    def collect(self, pending: PendingBatch) -> list[Segmentation | None]:
        """Wait for a launched batch; its results in request order (None: skipped)."""
        return self.engine.collect(pending)

    def segment_batch(
        self, requests: Sequence[SegmentRequest], keep: Keep | None = None
    ) -> list[Segmentation | None]:
        """``execute(plan_batch(requests), keep)``."""
        return self.execute(plan_batch(requests), keep)

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
        (``PostProcess``).
        """
        if not prompts and conditionals is None:
            raise InvalidPromptError("give at least one prompt or conditioning vector")
        post = post or DEFAULT_POST
        prepared = self.prepare_image(image, guide=post.refine is not Refine.NONE)
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
            threshold=threshold,  # SegmentRequest keeps check_thresholds' normal form
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
            **self.model.description(),
        }

    @property
    def precision(self) -> str:
        """The model's arithmetic: "float32", "bfloat16", "float16" or (onnx) "int8"."""
        return self.model.fixed_precision or str(self.dtype).removeprefix("torch.")


def _check_fixed_precision(
    precision: str, dtype: str, compile_buckets: Sequence[int] | None
) -> None:
    """What a backend with its own precision (ONNX) cannot do: another precision,
    torch.compile."""
    if dtype not in ("auto", precision):
        raise ValueError(
            f"this ONNX model runs {precision}; load the export with "
            f"precision={dtype!r} for that (dtype is auto or {precision!r} here)"
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
