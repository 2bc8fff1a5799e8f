"""Joint image + mask augmentation for training splits (pure PIL / numpy).

Every geometric step is applied to the image and the mask together, so a mask pixel
always covers the same image pixel afterwards. All randomness comes from the generator
passed in (see ``training.data.sample_rng``).

* Random crop that keeps the object: the crop always contains the mask's bounding box,
  so no target pixel is ever cut away (negatives, with empty masks, get any crop).
* Horizontal flip, skipped when the phrase says "left" or "right": mirroring would make
  the phrase describe the other side.
* Colour jitter of brightness, contrast and saturation in small ranges. Hue is left
  alone on purpose: colour words ("red car") must stay true.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance

from clipseg_serve.model.codecs.rle import mask_bbox

__all__ = ["Augmentation", "allows_flip", "colour_jitter", "horizontal_flip", "random_crop"]

#: Words whose meaning a mirror image would swap ("left", "leftmost", "right-hand", ...).
#: Anchored at a word start so that e.g. "bright" or "upright" still allow flips.
_SIDE_WORDS = re.compile(r"\b(left|right)", re.IGNORECASE)


def allows_flip(phrase: str) -> bool:
    """False when ``phrase`` names a side, which a horizontal flip would contradict."""
    return _SIDE_WORDS.search(phrase) is None


def random_crop(
    image: Image.Image,
    mask: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.6, 1.0),
) -> tuple[Image.Image, np.ndarray]:
    """Crop ``scale`` (a fraction of each side, drawn uniformly) around the mask's box.

    The crop is widened to the bounding box of the mask where the drawn size is smaller,
    and its position is drawn among the offsets that keep the whole box inside.
    """
    width, height = image.size
    bx, by, bw, bh = mask_bbox(mask)
    s = rng.uniform(*scale)
    # One scale for both sides keeps the aspect ratio roughly as it was.
    cw = min(width, max(bw, round(width * s), 1))
    ch = min(height, max(bh, round(height * s), 1))
    if bw == 0:  # empty mask: every position is fine
        x0 = int(rng.integers(0, width - cw + 1))
        y0 = int(rng.integers(0, height - ch + 1))
    else:
        x0 = int(rng.integers(max(0, bx + bw - cw), min(bx, width - cw) + 1))
        y0 = int(rng.integers(max(0, by + bh - ch), min(by, height - ch) + 1))
    if (cw, ch) == (width, height):
        return image, mask
    cropped = image.crop((x0, y0, x0 + cw, y0 + ch))
    return cropped, np.ascontiguousarray(mask[y0 : y0 + ch, x0 : x0 + cw])


def horizontal_flip(image: Image.Image, mask: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Mirror image and mask left-right."""
    flipped = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return flipped, np.ascontiguousarray(mask[:, ::-1])


def colour_jitter(
    image: Image.Image,
    rng: np.random.Generator,
    brightness: float = 0.2,
    contrast: float = 0.2,
    saturation: float = 0.2,
) -> Image.Image:
    """Scale brightness, contrast and saturation by factors drawn from [1 - x, 1 + x]."""
    for enhancer, amount in (
        (ImageEnhance.Brightness, brightness),
        (ImageEnhance.Contrast, contrast),
        (ImageEnhance.Color, saturation),
    ):
        # Drawn even for a zero range, so settings do not shift the rest of the stream.
        factor = rng.uniform(1.0 - amount, 1.0 + amount)
        if amount > 0:
            image = enhancer(image).enhance(factor)
    return image


@dataclass(frozen=True)
class Augmentation:
    """The training augmentation: crop keeping the object, side-aware flip, colour jitter."""

    crop_scale: tuple[float, float] = (0.6, 1.0)
    flip_prob: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __call__(
        self, image: Image.Image, mask: np.ndarray, phrase: str, rng: np.random.Generator
    ) -> tuple[Image.Image, np.ndarray]:
        """Augmented copies of ``image`` (RGB) and ``mask`` (bool [H, W]) for ``phrase``."""
        image, mask = random_crop(image, mask, rng, self.crop_scale)
        # Draw even when the flip is vetoed, so one phrase word does not shift the stream.
        flip = rng.random() < self.flip_prob
        if flip and allows_flip(phrase):
            image, mask = horizontal_flip(image, mask)
        image = colour_jitter(image, rng, self.brightness, self.contrast, self.saturation)
        return image, mask
