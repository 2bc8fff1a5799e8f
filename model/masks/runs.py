"""COCO RLE run lengths of masks found on the device, band by band, so the host only writes
the counts string.

COCO RLE walks a mask in column-major (Fortran) order: flat index ``i = x * H + y``. A run
ends wherever pixel ``i`` differs from pixel ``i - 1``, i.e. where a pixel differs from the
one above it (``y >= 1``), or where a column's first pixel differs from the previous
column's last (``y = 0``). Both are found with whole-tensor XORs of the bit-packed rows
``render_masks`` has just produced (the row above a band is kept from the band before), so
nothing is transposed or unpacked at full resolution, and nothing full-size goes to the
host: what leaves the device is the run lengths themselves, int64, a handful per column
for a real object mask. Their number is bounded by the model, not by the image: a column
of a bilinearly upsampled S-row map crosses a threshold at most about once per source row
interval, so a mask has at most ~S boundaries per column (plus what combining masks adds),
whatever the resolution — the same int64 counts the host encoder built before.

This module imports torch only.
"""

from __future__ import annotations

import torch

__all__ = ["ColumnRuns", "unpack_bits"]


class ColumnRuns:
    """Run lengths of ``count`` masks of ``(height, width)`` fed as row bands, in order.

    ``add(packed)`` takes the next rows bit-packed, uint8 [M, rows, ceil(W / 8)] as
    ``np.packbits(mask, axis=-1)`` (``render_masks`` packs them anyway): comparing rows
    byte-wise touches an eighth of the data, and only the few bytes that differ are
    unpacked. ``result()`` returns one 1-D int64 tensor per mask (on the device): COCO's
    uncompressed counts, starting with a background run (0 when the first pixel is
    foreground), summing to ``height * width`` — what ``model.codecs.rle.encode_rle`` derives
    on the host.
    """

    def __init__(self, count: int, height: int, width: int) -> None:
        self.count, self.height, self.width = count, height, width
        self.next_row = 0
        self.first: torch.Tensor | None = None  # uint8 [M, B], row 0 packed
        self.last: torch.Tensor | None = None  # uint8 [M, B], the row above the next band
        self.masks: list[torch.Tensor] = []  # int64 [K]: mask index of each boundary
        self.positions: list[torch.Tensor] = []  # int64 [K]: column-major flat index

    def add(self, packed: torch.Tensor) -> None:
        """uint8 [M, rows, ceil(W / 8)]: the masks' next ``rows`` rows, bit-packed."""
        start = self.next_row
        if self.last is None:
            self.first = packed[:, 0].clone()
        else:
            self._boundaries(packed[:, :1] ^ self.last.unsqueeze(1), start)
        self._boundaries(packed[:, 1:] ^ packed[:, :-1], start + 1)
        self.last = packed[:, -1].clone()
        self.next_row = start + packed.shape[1]

    def _boundaries(self, changed: torch.Tensor, first_row: int) -> None:
        """Record the set bits of uint8 [M, r, B] (rows from ``first_row``) as run ends."""
        index, row, byte = changed.nonzero(as_tuple=True)
        # Padding bits past the width are 0 in every row, so they never differ.
        which, bit = unpack_bits(changed[index, row, byte]).nonzero(as_tuple=True)
        self.masks.append(index[which])
        column = byte[which] * 8 + bit
        self.positions.append(column * self.height + row[which] + first_row)

    def result(self) -> list[torch.Tensor]:
        """One int64 [R_m] run-length tensor per mask (see the class docstring)."""
        assert self.first is not None and self.last is not None and self.next_row == self.height
        first = unpack_bits(self.first).flatten(1)[:, : self.width]  # [M, W]
        last = unpack_bits(self.last).flatten(1)[:, : self.width]
        # A column's first pixel against the previous column's last one (y = 0, x >= 1).
        index, column = (first[:, 1:] != last[:, :-1]).nonzero(as_tuple=True)
        masks = torch.cat([*self.masks, index])
        positions = torch.cat([*self.positions, (column + 1) * self.height])
        # One sort orders the boundaries by mask, then by position.
        total = self.height * self.width
        order = torch.argsort(masks * (total + 1) + positions)
        masks, positions = masks[order], positions[order]
        per_mask = torch.bincount(masks, minlength=self.count).tolist()
        edges = positions.new_tensor([total])
        zero = positions.new_zeros(1)
        counts = []
        for i, ends in enumerate(positions.split(per_mask)):
            runs = torch.diff(ends, prepend=zero, append=edges)
            if bool(first[i, 0]):
                runs = torch.cat([zero, runs])  # COCO counts start with background
            counts.append(runs)
        return counts


def unpack_bits(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [...] -> bool [..., 8], most significant bit first (np.unpackbits' order)."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    return ((packed.unsqueeze(-1) >> shifts) & 1).bool()
