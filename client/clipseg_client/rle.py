"""COCO compressed RLE decoding, as pycocotools' ``rleFrString`` + ``rleDecode``, in
numpy: the client must not need pycocotools (a compiled dependency) to read masks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def counts_from_string(text: str | bytes) -> list[int]:
    """The run lengths of a compressed RLE string.

    Each run is a little-endian sequence of 5-bit groups, each stored as ``chr(48 + g)``
    with bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign.
    From the third run on a value is stored as the difference to the run two before
    (runs of the same colour), which keeps the numbers small.
    """
    data = text.encode("ascii") if isinstance(text, str) else text
    counts: list[int] = []
    pos = 0
    while pos < len(data):
        value, shift, more = 0, 0, True
        while more:
            group = data[pos] - 48
            value |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            pos += 1
            shift += 5
            if not more and group & 0x10:
                value |= -1 << shift  # sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def decode_rle(rle: Mapping[str, Any]) -> np.ndarray:
    """Decode ``{"size": [h, w], "counts": str | list[int]}`` into a bool array ``(h, w)``.

    Runs alternate background/foreground starting with background, in column-major
    (Fortran) order, exactly as pycocotools' ``mask.decode``.

    Raises:
        ValueError: the runs do not add up to ``h * w``.
    """
    height, width = (int(v) for v in rle["size"])
    raw = rle["counts"]
    counts = counts_from_string(raw) if isinstance(raw, (str, bytes)) else [int(c) for c in raw]
    if sum(counts) != height * width or any(c < 0 for c in counts):
        raise ValueError(f"RLE runs sum to {sum(counts)}, expected {height}x{width}")
    # Run i has colour i % 2; np.repeat expands all runs in one vectorised call.
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape((width, height)).T)
