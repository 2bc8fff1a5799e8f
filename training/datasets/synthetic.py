"""Synthetic "colour + shape" scenes: a dataset that needs no files and no download.

Each image shows 1-3 solid, saturated shapes (circle, square, triangle in red, green,
blue, yellow, purple) on a desaturated noisy gradient, so colour and outline alone
separate object from background: a tiny model learns "red circle" in a few hundred CPU
steps, which makes this the smoke test of the whole training loop.

Images are generated on the fly from the sample's generator, i.e. from (seed, epoch,
index): the same triple always gives the same sample and every epoch brings new ones.
Shapes never overlap, and the image is coloured *from* the rasterised label map, so the
mask is exactly the pixels of the named shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clipseg_serve.training.data import Sample, SampleDataset, Support
from clipseg_serve.training.datasets.augment import Augmentation
from clipseg_serve.training.datasets.sampling import (
    apply_template,
    check_probability,
    resolve_augment,
    split_seed,
)

__all__ = ["COLOURS", "PHRASES", "SHAPES", "SyntheticShapes"]

#: Saturated colours, far from the near-grey backgrounds and from one another.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 220),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Every (colour, shape) pair and its phrase, in a fixed order ("red circle", ...).
_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOURS for s in SHAPES)
PHRASES: tuple[str, ...] = tuple(f"{c} {s}" for c, s in _PAIRS)

#: Shape side as a fraction of the image side: big enough to learn at 352 px input.
_SIDE_RANGE = (0.2, 0.45)
#: Free pixels kept between shapes, so no shape touches (or occludes) another.
_GAP = 2
_PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class _Shape:
    colour: str
    kind: str
    x: int
    y: int
    side: int

    @property
    def phrase(self) -> str:
        return f"{self.colour} {self.kind}"

    def overlaps(self, other: _Shape) -> bool:
        return not (
            self.x + self.side + _GAP <= other.x
            or other.x + other.side + _GAP <= self.x
            or self.y + self.side + _GAP <= other.y
            or other.y + other.side + _GAP <= self.y
        )


def _draw(draw: ImageDraw.ImageDraw, shape: _Shape, value: int) -> None:
    x0, y0, x1, y1 = shape.x, shape.y, shape.x + shape.side - 1, shape.y + shape.side - 1
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=value)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=value)
    else:  # triangle, pointing up
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=value)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A near-grey texture (uint8 [size, size, 3]): gradient, stripes and pixel noise."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(angle) * xx + np.sin(angle) * yy - 0.5) * rng.uniform(-50.0, 50.0)
    freq, phase = rng.uniform(2.0, 8.0), rng.uniform(0.0, 2.0 * np.pi)
    stripes = np.sin(2.0 * np.pi * freq * (np.sin(angle) * xx - np.cos(angle) * yy) + phase)
    grey = rng.uniform(70.0, 185.0) + ramp + stripes * rng.uniform(0.0, 15.0)
    noise = rng.normal(0.0, rng.uniform(3.0, 12.0), (size, size, 1))
    tint = rng.uniform(-10.0, 10.0, 3)  # a faint colour cast, far below the shapes' chroma
    return np.clip(grey[..., None] + noise + tint, 0, 255).astype(np.uint8)


class SyntheticShapes(SampleDataset):
    """Coloured shapes on textured backgrounds with exact masks; see the module docstring.

    Args:
        length: samples per epoch (each epoch draws new images).
        size: side of the square images in pixels.
        seed: base seed; the split is folded in, so splits never share images.
        split: "train", "val", ...; also decides the ``augment`` default.
        negative_prob: probability of a phrase absent from the image (empty mask).
        shapes_per_image: inclusive (min, max) number of shapes drawn.
        support_prob: probability of a visual support (another image with the phrase).
        template_prob: probability of wrapping the phrase in a training template.
        augment: joint augmentation; default on for the "train" split only.
    """

    def __init__(
        self,
        length: int = 1000,
        size: int = 96,
        seed: int = 0,
        split: str = "train",
        negative_prob: float = 0.2,
        shapes_per_image: Sequence[int] = (1, 3),
        support_prob: float = 0.0,
        template_prob: float = 0.0,
        augment: bool | None = None,
    ) -> None:
        super().__init__(split_seed(seed, split))
        lo, hi = (int(n) for n in shapes_per_image)
        if length < 1 or size < 16:
            raise ValueError(f"need length >= 1 and size >= 16, got {length} and {size}")
        if not 1 <= lo <= hi <= 4:
            raise ValueError(f"shapes_per_image must satisfy 1 <= min <= max <= 4, got {lo, hi}")
        self.length, self.size, self.split = length, size, split
        self.shapes_per_image = (lo, hi)
        self.negative_prob = check_probability("negative_prob", negative_prob)
        self.support_prob = check_probability("support_prob", support_prob)
        self.template_prob = check_probability("template_prob", template_prob)
        self.augment = resolve_augment(augment, split)
        self._augmentation = Augmentation() if self.augment else None

    def __len__(self) -> int:
        return self.length

    def get(self, index: int, rng: np.random.Generator) -> Sample:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        shapes, image, labels = self._scene(rng)
        present = {s.phrase for s in shapes}
        if rng.random() < self.negative_prob:
            absent = [p for p in PHRASES if p not in present]
            phrase, negative = absent[int(rng.integers(len(absent)))], True
            mask = np.zeros(labels.shape, dtype=bool)
        else:
            k = int(rng.integers(len(shapes)))
            phrase, negative, mask = shapes[k].phrase, False, labels == k + 1
        support = self._support(rng, phrase) if rng.random() < self.support_prob else None
        text = apply_template(phrase, rng, self.template_prob)
        if self._augmentation is not None:
            image, mask = self._augmentation(image, mask, phrase, rng)
        # The source lists what was drawn: handy in logs, and lets tests check negatives.
        source = f"synthetic {self.split} #{index}: {', '.join(sorted(present))}"
        return Sample(
            image, mask, text, support=support, is_negative=negative, source=source, label=phrase
        )  # the class is the (colour, shape) pair asked for

    def _support(self, rng: np.random.Generator, phrase: str) -> Support:
        """Another scene that contains ``phrase`` (drawn first, so label 1), with its mask."""
        colour, kind = phrase.split(" ")
        _, image, labels = self._scene(rng, include=(colour, kind))
        mask = labels == 1
        if self._augmentation is not None:
            image, mask = self._augmentation(image, mask, phrase, rng)
        return Support(image, mask)

    def _scene(
        self, rng: np.random.Generator, include: tuple[str, str] | None = None
    ) -> tuple[list[_Shape], Image.Image, np.ndarray]:
        """Shapes drawn, RGB image and label map (uint8, shape k at value k + 1)."""
        shapes = self._place(rng, self._pick_kinds(rng, include))
        canvas = Image.new("L", (self.size, self.size), 0)
        draw = ImageDraw.Draw(canvas)
        for k, shape in enumerate(shapes):
            _draw(draw, shape, k + 1)
        labels = np.asarray(canvas).copy()
        pixels = _background(rng, self.size)
        for k, shape in enumerate(shapes):
            pixels[labels == k + 1] = COLOURS[shape.colour]
        return shapes, Image.fromarray(pixels, "RGB"), labels

    def _pick_kinds(
        self, rng: np.random.Generator, include: tuple[str, str] | None
    ) -> list[tuple[str, str]]:
        """Distinct (colour, shape) pairs; ``include`` first when given."""
        lo, hi = self.shapes_per_image
        count = int(rng.integers(lo, hi + 1))
        pairs = [_PAIRS[i] for i in rng.permutation(len(_PAIRS))]
        if include is not None:
            pairs.remove(include)
            pairs.insert(0, include)
        return pairs[:count]

    def _place(self, rng: np.random.Generator, kinds: list[tuple[str, str]]) -> list[_Shape]:
        """Non-overlapping positions; a shape that finds no room is left out (never the
        first, which always fits on an empty canvas)."""
        lo, hi = (round(f * self.size) for f in _SIDE_RANGE)
        placed: list[_Shape] = []
        for colour, kind in kinds:
            side = int(rng.integers(lo, hi + 1))
            for _ in range(_PLACEMENT_TRIES):
                x, y = (int(v) for v in rng.integers(0, self.size - side + 1, 2))
                shape = _Shape(colour, kind, x, y, side)
                if not any(shape.overlaps(other) for other in placed):
                    placed.append(shape)
                    break
        return placed
