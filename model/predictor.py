"""The inference API: images and prompts in, masks at the image's own size out.

Work is split by where it runs, so a server can put each part on the right thread:

* CPU, per request: ``prepare_image`` (decode, orient, resize, normalise) and
  ``prepare_support`` (visual-prompt engineering of a support image + mask).
* Device, batched: ``text_embeddings`` (LRU-cached, one encoder call for all misses),
  ``support_embeddings``, ``logits`` (one backbone pass per image, decoder per prompt)
  and ``postprocess`` (sigmoid, bilinear upsample, threshold, combine).

``segment`` chains them for library and CLI users.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .batch import Segmentation, SegmentRequest, segment_batch
from .clipseg import ClipSeg
from .config import ClipSegConfig
from .device import autocast, resolve_device, resolve_dtype
from .errors import InvalidMaskError, InvalidPromptError
from .postprocess import Combine, combine_masks, probabilities_at_size
from .text import Template, parse_template
from .text_cache import TextEmbeddingCache
from .transforms import (
    DEFAULT_MAX_PIXELS,
    decode_image,
    load_mask,
    to_model_input,
)
from .visual_prompt import engineer_support_image
from .weights.loader import LoadedModel, load_model

#: Longest/shortest side ratio accepted for support images (see ``prepare_support``).
MAX_SUPPORT_ASPECT = 16


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
    def prepare_image(self, source) -> PreparedImage:
        """Decode any image (bytes, path, PIL) into model input; see ``PreparedImage``."""
        cfg = self.config
        decoded = decode_image(source, max_pixels=self.max_pixels, draft_size=cfg.input_size)
        pixels = to_model_input(decoded.image, cfg.input_size, cfg.mean, cfg.std)
        width, height = decoded.original_size
        return PreparedImage(pixels, (height, width))

    def prepare_support(self, image, mask) -> torch.Tensor:
        """Engineer one visual prompt: support image + mask -> float32 [3, S, S] (CPU).

        The mask (nonzero = object) must have the support image's size.
        """
        decoded = decode_image(image, max_pixels=self.max_pixels)
        mask_array = load_mask(mask, max_pixels=self.max_pixels)
        width, height = decoded.original_size
        if mask_array.shape != (height, width):
            raise InvalidMaskError(
                f"support mask is {mask_array.shape[1]}x{mask_array.shape[0]} but its image is "
                f"{width}x{height}; they must have the same size"
            )
        if not mask_array.any():
            raise InvalidMaskError("support mask is empty: mark the object with nonzero pixels")
        if max(width, height) > MAX_SUPPORT_ASPECT * min(width, height):
            # The shorter side is scaled to the input size before engineering, so an extreme
            # strip would become a huge tensor; crop it to the region of interest instead.
            raise InvalidMaskError(
                f"support image {width}x{height} is more than {MAX_SUPPORT_ASPECT}:1; "
                "crop it closer to the object"
            )
        return engineer_support_image(decoded.image, mask_array, self.config)

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

    def postprocess(
        self,
        logits: torch.Tensor,
        size: tuple[int, int],
        *,
        threshold: float | None = None,
        combine: Combine | str = Combine.NONE,
        negative_logits: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [P, S, S] -> (bool masks [M, H, W], probabilities [P, H, W]) on the device.

        Sigmoid, bilinear upsample to ``size`` (height, width), then threshold — never the
        other way round. ``threshold`` defaults to the checkpoint's calibrated one.
        """
        threshold = self.config.threshold if threshold is None else threshold
        with torch.inference_mode():
            probs = probabilities_at_size(logits, size)
            negative = None
            if negative_logits is not None and negative_logits.shape[0]:
                negative = probabilities_at_size(negative_logits, size)
            masks = combine_masks(probs, threshold, Combine(combine), negative_probs=negative)
        return masks, probs

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
    ) -> Segmentation:
        """Segment one image for text ``prompts`` and/or given ``conditionals`` [N, D].

        Returns masks at the image's original size (see ``Segmentation``); the same code
        path as the service's batches (``model.batch.segment_batch``).
        """
        prepared = self.prepare_image(image)
        if not prompts and conditionals is None:
            raise InvalidPromptError("give at least one prompt or conditioning vector")
        request = SegmentRequest(
            pixels=prepared.pixels,
            size=prepared.size,
            image_key="image",
            prompts=list(prompts),
            negative_prompts=list(negative_prompts),
            template=parse_template(template),
            conditionals=None if conditionals is None else conditionals.reshape(
                -1, conditionals.shape[-1]
            ),
            threshold=threshold,
            combine=Combine(combine),
        )  # fmt: skip
        return segment_batch(self, [request])[0]
