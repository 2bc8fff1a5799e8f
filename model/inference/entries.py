"""The masks a ``Segmentation`` answers with, one entry each: a mask per output row, or
with instances one per connected piece of it. The service's JSON answers and
clipseg-label's records are both built from these, so they list the same masks with the
same figures and the same RLE bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from clipseg_serve.model.codecs.rle import encode_rle, encode_rle_runs
from clipseg_serve.model.inference.batch import Segmentation


@dataclass(frozen=True)
class MaskEntry:
    """One answered mask. index: the output row (``result.labels[index]``); instance:
    the piece's rank within it (best first), None for the whole mask; score: the mask's
    max probability, or the piece's mean; max_score: the piece's max (None for a whole
    mask); area: pixels; box: [x, y, w, h] in pixels."""

    index: int
    instance: int | None
    label: str
    score: float
    max_score: float | None
    area: int
    box: list[int]


def answered_masks(result: Segmentation) -> Iterator[MaskEntry]:
    """Every mask of ``result`` in answer order: rows in order, a row's pieces best first
    when the result has instances (a row with no piece has no entry then)."""
    for i, label in enumerate(result.labels):
        if result.instances is None:
            yield MaskEntry(i, None, label, round(float(result.scores[i]), 6), None,
                            int(result.areas[i]), [int(v) for v in result.boxes[i]])  # fmt: skip
            continue
        found = result.instances[i]
        for k in range(len(found)):
            yield MaskEntry(
                i, k, label, round(float(found.scores[k]), 6), round(float(found.max_scores[k]), 6),
                int(found.areas[k]), [int(v) for v in found.boxes[k]],
            )  # fmt: skip


def entry_mask(result: Segmentation, entry: MaskEntry) -> np.ndarray:
    """The entry's pixels: bool [H, W] at the query's size (unpacked on each call)."""
    if entry.instance is None:
        return result.mask(entry.index)
    assert result.instances is not None
    return result.instances[entry.index].mask(entry.instance)


def entry_rle(result: Segmentation, entry: MaskEntry) -> dict[str, object]:
    """The entry's COCO compressed RLE: from the run lengths found on the device when the
    result has them (a whole mask), else from its pixels."""
    if entry.instance is None and result.runs is not None:
        return encode_rle_runs(result.runs[entry.index], result.size)
    return encode_rle(entry_mask(result, entry))
