"""How close another backend or precision's masks are to the fp32 PyTorch model's.

Quantisation can look harmless on embeddings and still wreck dense outputs, so the check
is made where users look: on masks, for the user's own images and weights. For every
image, text prompts and one visual prompt (the previous image as the support, its central
half as the mask) are segmented by the reference and by the candidate, each with its own
encoders, and compared:

* ``mean_iou``: the mean IoU of the two masks, over masks non-empty in either (at the
  checkpoint's threshold, at the image's size) — the gate's figure;
* ``pixel_agreement``: the fraction of mask pixels that agree (every mask);
* ``median_split_agreement``: the same for masks cut at each reference map's median logit
  (352 x 352): half of every map is foreground, so it stays informative where the
  threshold leaves masks nearly empty (random weights, absent objects);
* ``max_logit_diff``: the largest difference of logits.

``recommended`` applies the gate: a mean IoU of at least ``bar`` over at least one
non-empty mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipseg_serve.model.imaging.transforms import decode_image
from clipseg_serve.model.inference.predictor import Predictor

__all__ = ["DEFAULT_BAR", "DEFAULT_PROMPTS", "Fidelity", "compare_backends", "recommended"]

#: The gate: int8 is recommended at a mean mask IoU of at least this against fp32.
DEFAULT_BAR = 0.95
#: Prompts for images of unknown content: common objects, and things that are not.
DEFAULT_PROMPTS = ("a person", "a car", "an animal", "a chair", "the sky", "a plant", "text")


@dataclass(frozen=True)
class Fidelity:
    """One candidate against the reference, over every image and prompt (see module)."""

    name: str
    masks: int
    nonempty_masks: int
    mean_iou: float
    min_iou: float
    pixel_agreement: float
    median_split_agreement: float
    max_logit_diff: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def recommended(fidelity: Fidelity, bar: float = DEFAULT_BAR) -> bool:
    """The gate: mean mask IoU >= ``bar``, measured on at least one non-empty mask."""
    return fidelity.nonempty_masks > 0 and fidelity.mean_iou >= bar


def _central_mask(size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W]: 1 on the central half of each side (a visual prompt's support mask)."""
    height, width = size
    mask = np.zeros((height, width), np.uint8)
    mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = 1
    return mask


class _Tally:
    """Running sums over the compared masks."""

    def __init__(self) -> None:
        self.ious: list[float] = []
        self.masks = self.agree = self.pixels = 0
        self.split_agree = self.split_pixels = 0
        self.max_diff = 0.0

    def add(self, ref: np.ndarray, got: np.ndarray, ref_logits, got_logits) -> None:
        """ref/got: bool [M, H, W] masks; *_logits: float32 [M, S, S]."""
        self.masks += int(ref.shape[0])
        self.agree += int((ref == got).sum())
        self.pixels += ref.size
        for a, b in zip(ref, got, strict=True):
            union = int((a | b).sum())
            if union:
                self.ious.append(int((a & b).sum()) / union)
        median = np.median(ref_logits.reshape(ref_logits.shape[0], -1), axis=1)[:, None, None]
        self.split_agree += int(((ref_logits > median) == (got_logits > median)).sum())
        self.split_pixels += ref_logits.size
        self.max_diff = max(self.max_diff, float(np.abs(ref_logits - got_logits).max()))

    def result(self, name: str) -> Fidelity:
        return Fidelity(
            name=name,
            masks=self.masks,
            nonempty_masks=len(self.ious),
            mean_iou=float(np.mean(self.ious)) if self.ious else 1.0,
            min_iou=float(min(self.ious)) if self.ious else 1.0,
            pixel_agreement=self.agree / max(self.pixels, 1),
            median_split_agreement=self.split_agree / max(self.split_pixels, 1),
            max_logit_diff=self.max_diff,
        )


def _masks_and_logits(
    predictor: Predictor, pixels: torch.Tensor, size: tuple[int, int], conditionals
) -> tuple[np.ndarray, np.ndarray]:
    """bool masks [M, H, W] at the checkpoint's threshold and float32 logits [M, S, S]."""
    index = torch.zeros(int(conditionals.shape[0]), dtype=torch.long)
    logits = predictor.logits(pixels[None], conditionals, index)
    masks = predictor.render(logits, size).masks
    return masks, logits.cpu().numpy()


def compare_backends(
    reference: Predictor,
    candidates: dict[str, Predictor],
    images: Sequence[str | Path | Image.Image],
    prompts: Sequence[str] = DEFAULT_PROMPTS,
) -> list[Fidelity]:
    """Each candidate's ``Fidelity`` against ``reference`` over ``images`` x (``prompts``
    + one visual prompt per image after the first)."""
    tallies = {name: _Tally() for name in candidates}
    previous = None
    for source in images:
        image = decode_image(source, max_pixels=reference.max_pixels).image
        prepared = reference.prepare_image(image)
        kinds = [lambda p: p.text_embeddings(list(prompts))]
        if previous is not None:
            support = (previous, _central_mask(previous.size[::-1]))
            kinds.append(lambda p, support=support: p.visual_embedding([support])[None])
        for conditionals_of in kinds:
            ref = _masks_and_logits(
                reference, prepared.pixels, prepared.size, conditionals_of(reference)
            )
            for name, candidate in candidates.items():
                got = _masks_and_logits(
                    candidate, prepared.pixels, prepared.size, conditionals_of(candidate)
                )
                tallies[name].add(ref[0], got[0], ref[1], got[1])
        previous = image
    return [tally.result(name) for name, tally in tallies.items()]
