"""Render one request's masks at the image's own size with memory bounded by design.

``probabilities_at_size`` (model.masks.postprocess) materialises one float32 map per prompt at
full resolution: 16 prompts on a 7000x7000 photo are 3 GB. Here the maps are produced one
*band of rows* at a time and immediately thresholded, combined, scored and bit-packed, so
the transient memory is about ``BAND_ELEMENTS`` floats whatever the image size, and what
leaves the device is 1 bit per mask pixel (plus 8 bits per pixel for soft maps, only when
asked for).

When all of a request's maps fit in one band (a 2 MP photo with a prompt or two) the band
is ``F.interpolate`` itself, exactly the reference evaluation. Larger outputs interpolate
the width with ``F.interpolate`` on just the source rows a band needs and blend those rows
with the bilinear weights (align_corners=False) computed here; that agrees with the
one-call result to float rounding (~1e-7), the same order as PyTorch's own differences
between its CPU code paths, far below the model's numerical noise.

This module imports torch and numpy (CPU fast paths) only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipseg_serve.model.masks.postprocess import (
    DEFAULT_POST,
    Combine,
    PostProcess,
    Refine,
    check_size,
    combine_masks,
    finite_scores,
)
from clipseg_serve.model.masks.refine import (
    DEFAULT_GRID,
    PAMR_LONG_SIDE,
    GuidedCoefficients,
    auto_radius,
    downsample,
    guide_to_float,
    guided_coefficients,
    pamr,
    resample,
    working_size,
)
from clipseg_serve.model.masks.runs import ColumnRuns, unpack_bits

__all__ = ["BAND_ELEMENTS", "RenderedMasks", "pack_bits", "render_masks", "render_probabilities"]

#: Floats per band across all of a request's maps (16 MB in float32). Big enough that a
#: 2 MP image with one prompt is one band (a handful of kernels on a GPU), small enough that
#: 16 prompts on a 50 MP image stay in a few tens of MB.
BAND_ELEMENTS = 1 << 22

#: Floats per band of the refined path's coefficient maps (see ``_map_bands``).
REFINE_BAND = 1 << 20
#: Maps solved together by the guided filter (bounds its working memory).
REFINE_MAPS_PER_SOLVE = 4

_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' default (big) bit order
#: numpy >= 2.0's per-byte popcount (None before: areas are then summed from the masks).
_POPCOUNT = getattr(np, "bitwise_count", None)


@dataclass(frozen=True)
class RenderedMasks:
    """One request's masks, still on the device.

    packed: uint8 [M, H, ceil(W / 8)] — each mask row bit-packed like
        ``np.packbits(mask, axis=-1)`` (first pixel in the most significant bit).
    scores: float32 [M], the maximum probability of each mask's map.
    areas: int64 [M], foreground pixels. boxes: int64 [M, 4], ``[x, y, w, h]`` of the
        foreground as pycocotools' ``toBbox`` (all zero for an empty mask).
    soft: uint8 [M, H, W], ``round(p * 255)`` of each mask's map, or None.
    runs: M int64 [R_m] COCO RLE run lengths (``model.masks.runs``), or None.
    """

    packed: torch.Tensor
    scores: torch.Tensor
    areas: torch.Tensor
    boxes: torch.Tensor
    soft: torch.Tensor | None
    runs: list[torch.Tensor] | None = None


def render_masks(
    logits: torch.Tensor,
    size: tuple[int, int],
    threshold: float | tuple[float, ...],
    combine: Combine | str = Combine.NONE,
    negative_logits: torch.Tensor | None = None,
    *,
    soft: bool = False,
    runs: bool = False,
    band_elements: int = BAND_ELEMENTS,
    post: PostProcess | None = None,
    guide: torch.Tensor | None = None,
    background_logits: torch.Tensor | None = None,
    grid: int = DEFAULT_GRID,
) -> RenderedMasks:
    """Sigmoid, upsample to ``size``, threshold, combine — band by band.

    Args:
        logits: [P, S, S] positive-prompt logits (any float dtype), P >= 1.
        size: (height, width) of the original image.
        threshold: in [0, 1], or one per prompt; a pixel is on when its probability is >
            its prompt's threshold.
        combine / negative_logits: as ``model.masks.postprocess.combine_masks`` (negatives
            [N, S, S], N may be 0). Masks: P for none/argmax, 1 for union/intersection,
            whose map is the per-pixel max/min over the prompts.
        soft: also return each mask's map quantised to 8 bits.
        runs: also return each mask's COCO RLE run lengths, found on the device.
        band_elements: floats per band over all maps (memory bound, not semantics).
        post: its ``refine`` (and radius, eps, pamr_iterations) and background factor
            are applied here; None: bilinear, as ``DEFAULT_POST``.
        guide: the image at ``size``, uint8 [C, H, W] (C = 1 or 3) on the logits' device;
            needed when ``post.refine`` is not none.
        background_logits: [1, S, S], the background prompt's row (``background=prompt``).
        grid: the model's patch grid side (``ClipSegConfig.grid_size``), which scales the
            default refinement radius.

    Returns:
        ``RenderedMasks`` on ``logits.device``; with ``refine=none`` equal to thresholding
        ``probabilities_at_size`` maps and ``combine_masks``.
    """
    combine = Combine(combine)
    post = post or DEFAULT_POST
    height, width = _check(logits, size)
    extra = [t for t in (negative_logits, background_logits) if t is not None and len(t)]
    maps = torch.cat([logits, *extra]) if extra else logits
    probs = _probabilities(maps)  # [P + N (+ 1), S, S]
    prompts = int(logits.shape[0])
    negatives = 0 if negative_logits is None else int(negative_logits.shape[0])
    count = 1 if combine in (Combine.UNION, Combine.INTERSECTION) else prompts
    out = _Outputs(count, height, width, soft, logits.device, runs)
    bands = _map_bands(probs, (height, width), band_elements, post, guide, grid)
    for start, block in bands:
        positive = block[:prompts]
        negative = block[prompts : prompts + negatives] if negatives else None
        background = block[-1] if background_logits is not None else None
        masks = combine_masks(
            positive, threshold, combine, negative, background, post.background_factor
        )
        out.add(masks, _mask_maps(positive, combine), start)
    return out.result()


def render_probabilities(
    logits: torch.Tensor,
    size: tuple[int, int],
    post: PostProcess | None = None,
    guide: torch.Tensor | None = None,
    grid: int = DEFAULT_GRID,
) -> torch.Tensor:
    """float32 [P, H, W] probability maps at ``size``, bilinear or refined as ``post``
    asks (uint8 [C, H, W] ``guide``, ``grid`` as ``render_masks``): what ``render_masks``
    thresholds, whole — for an evaluation that sweeps thresholds. Memory is
    ``4 * P * H * W`` bytes."""
    height, width = _check(logits, size)
    probs = _probabilities(logits)
    out = torch.empty((probs.shape[0], height, width), dtype=torch.float32, device=probs.device)
    post = post or DEFAULT_POST
    for start, block in _map_bands(probs, (height, width), BAND_ELEMENTS, post, guide, grid):
        out[:, start : start + block.shape[1]] = block
    return out


def _map_bands(
    probs: torch.Tensor,
    size: tuple[int, int],
    band_elements: int,
    post: PostProcess,
    guide: torch.Tensor | None,
    grid: int = DEFAULT_GRID,
):
    """Yield ``(first_row, maps [M, rows, W])``: the [M, S, S] maps at ``size``, bilinear
    or refined (``model.masks.refine``), one band of rows at a time."""
    height, width = size
    if post.refine is Refine.NONE:
        yield from _bands(probs, height, width, band_elements)
        return
    if guide is None or tuple(guide.shape[-2:]) != (height, width):
        raise ValueError(f"refine={post.refine.value} needs the image at {size} as its guide")
    coefficients = _refined_coefficients(probs, size, post, guide, grid)
    stacked = coefficients.stacked  # [M * (C + 1), h, w]
    # Small bands (4 MB): the full-size step is a few passes of elementwise work, and
    # larger temporaries come from fresh mmap-ed pages on every call (glibc's threshold),
    # whose page faults cost more than the filter (a 2 MP map: 14.6 vs 41.5 ms in all).
    bands = _bands(stacked, height, width, min(band_elements, REFINE_BAND), clamp=False)
    for start, band in bands:
        rows = guide_to_float(guide[:, start : start + band.shape[1]])
        yield start, GuidedCoefficients.apply(band, rows)


def _refined_coefficients(
    probs: torch.Tensor,
    size: tuple[int, int],
    post: PostProcess,
    guide: torch.Tensor,
    grid: int = DEFAULT_GRID,
) -> GuidedCoefficients:
    """The guided filter's coefficients for the maps (after PAMR when asked for)."""
    radius = post.radius or auto_radius(size, grid)
    small, small_radius = working_size(size, radius)
    maps = probs
    if post.refine is Refine.PAMR:
        scale = min(1.0, PAMR_LONG_SIDE / max(size))
        pamr_size = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
        maps = pamr(resample(maps, pamr_size), _guide_at(guide, pamr_size), post.pamr_iterations)
    small_guide = _guide_at(guide, small)
    # A few maps at a time: the solve's temporaries are ~15 floats a working pixel a map.
    parts = [
        guided_coefficients(resample(chunk, small), small_guide, small_radius, post.eps)
        for chunk in maps.split(REFINE_MAPS_PER_SOLVE)
    ]
    if len(parts) == 1:
        return parts[0]
    return GuidedCoefficients(torch.cat([p.a for p in parts]), torch.cat([p.b for p in parts]))


def _guide_at(guide: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [C, H, W] guide -> float32 [C, *size] in [0, 1], area-like (antialiased)."""
    if tuple(guide.shape[-2:]) == tuple(size):
        return guide_to_float(guide)
    if guide.device.type == "cpu":
        # uint8 antialiased bilinear is a native CPU kernel: no full-size float copy. Its
        # AVX path fails an internal assert for a 1x1 output of several channels (such a
        # tensor is both contiguous and channels-last); one channel at a time is the same
        # filter and works.
        if size[0] * size[1] == 1:
            small = F.interpolate(guide.unsqueeze(1), size=size, mode="bilinear", antialias=True)
            return guide_to_float(small[:, 0])
        small = F.interpolate(guide.unsqueeze(0), size=size, mode="bilinear", antialias=True)
        return guide_to_float(small[0])
    return downsample(guide_to_float(guide), size)


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """float32 sigmoid of [M, S, S] logits, a NaN logit as probability 0.

    float32 before the sigmoid, as probabilities_at_size: half precision saturates early.
    A NaN logit (a broken model, an fp16 overflow) would otherwise spread through the
    interpolation and the filters into masks, soft maps and scores; at the model's grid
    this costs one pass over a few hundred thousand floats."""
    return torch.sigmoid(logits.float()).nan_to_num_(nan=0.0)


def _check(logits: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
    if logits.ndim != 3 or logits.shape[0] < 1 or not torch.is_floating_point(logits):
        raise ValueError(f"logits must be float [P >= 1, S, S], got {tuple(logits.shape)}")
    return check_size(size)


def _bands(probs: torch.Tensor, height: int, width: int, band_elements: int, clamp: bool = True):
    """Yield ``(first_row, maps [M, rows, width])`` covering rows 0..height of the output.

    ``clamp``: clip to [0, 1] (probabilities; not the guided filter's coefficients)."""
    rows_per_band = max(1, band_elements // (probs.shape[0] * width))
    if rows_per_band >= height:
        yield 0, _bilinear(probs, (height, width), clamp)
        return
    first, second, weight = _row_weights(probs.shape[1], height, probs.device)
    # The band's three full-size temporaries live in one buffer made once and reused: a
    # fresh allocation per band let glibc's allocator scatter them (peak RSS 1-3 GB for two
    # 16-prompt 7000x7000 requests where ~0.5 GB are needed) and cost page faults. The
    # yielded band is only valid until the next one.
    count = probs.shape[0]
    buffers = torch.empty(
        (3, count * rows_per_band * width), dtype=probs.dtype, device=probs.device
    )
    for start in range(0, height, rows_per_band):
        stop = min(height, start + rows_per_band)
        lo, hi = int(first[start]), int(second[stop - 1]) + 1
        # Only the source rows this band reads, interpolated along the width (the height
        # keeps its size, so that pass is the identity).
        across = _bilinear(probs[:, lo:hi], (hi - lo, width), clamp)
        shape = (count, stop - start, width)
        top, bottom, out = (b[: count * shape[1] * width].view(shape) for b in buffers)
        torch.index_select(across, 1, first[start:stop] - lo, out=top)
        torch.index_select(across, 1, second[start:stop] - lo, out=bottom)
        w = weight[start:stop].view(1, -1, 1)
        band = torch.lerp(top, bottom, w, out=out)
        yield start, band.clamp_(0.0, 1.0) if clamp else band


def _row_weights(source: int, height: int, device) -> tuple[torch.Tensor, ...]:
    """Bilinear (align_corners=False) source rows and weights of each output row.

    Output row y samples source position ``(y + 0.5) * scale - 0.5`` (clamped at 0) with
    ``scale = source / height``, between rows ``floor`` and ``floor + 1`` (clamped at the
    last row), as PyTorch's ``area_pixel_compute_source_index``. Like PyTorch the scale and
    the position are float32 — the position rounded once, as a fused multiply-add does —
    because a float32 position near row 352 is only good to ~3e-5, and matching that
    rounding is what keeps banded maps within ~1e-7 of the one-call ones.
    """
    scale = torch.tensor(source, dtype=torch.float32) / height
    steps = torch.arange(height, dtype=torch.float32) + 0.5
    position = (scale.double() * steps.double() - 0.5).float().clamp_(min=0.0)
    first = position.long().clamp_(max=source - 1)
    second = (first + 1).clamp_(max=source - 1)
    weight = (position - first.float()).clamp_(0.0, 1.0)
    return first.to(device), second.to(device), weight.to(device)


def _bilinear(maps: torch.Tensor, size: tuple[int, int], clamp: bool = True) -> torch.Tensor:
    """[M, h, w] maps -> [M, *size]; probabilities are clamped to [0, 1] like
    probabilities_at_size (``clamp``; the guided filter's coefficients are not)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    # The reference evaluation's interpolation: bilinear, align_corners=False, no antialias.
    # Maps as the channels of one image, not a batch of one-channel images: the same
    # values bit for bit (tested), up to 2x faster on a CPU for several maps.
    out = F.interpolate(
        maps.unsqueeze(0), size=size, mode="bilinear", align_corners=False, antialias=False
    )[0]
    return out.clamp_(0.0, 1.0) if clamp else out


def _mask_maps(positive: torch.Tensor, combine: Combine) -> torch.Tensor:
    """The probability map behind each output mask, for scores and soft output."""
    if combine is Combine.UNION:
        return positive.amax(0, keepdim=True)
    if combine is Combine.INTERSECTION:
        return positive.amin(0, keepdim=True)
    return positive


class _Outputs:
    """Accumulates packed masks, scores, areas, boxes and soft maps over the bands."""

    def __init__(
        self, count: int, height: int, width: int, soft: bool, device, runs: bool = False
    ) -> None:
        self.packed = torch.zeros((count, height, -(-width // 8)), dtype=torch.uint8, device=device)
        self.scores = torch.zeros(count, dtype=torch.float32, device=device)
        self.areas = torch.zeros(count, dtype=torch.int64, device=device)
        self.rows = torch.zeros((count, height), dtype=torch.bool, device=device)
        self.cols = torch.zeros((count, width), dtype=torch.bool, device=device)
        self.soft = (
            torch.empty((count, height, width), dtype=torch.uint8, device=device) if soft else None
        )
        self.weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=device)
        self.runs = ColumnRuns(count, height, width) if runs else None

    def add(self, masks: torch.Tensor, maps: torch.Tensor, start: int) -> None:
        """masks bool [M, rows, W] and maps float [M, rows, W] of output rows start.."""
        stop = start + masks.shape[1]
        # fmax, not maximum: a NaN band maximum (none is expected) leaves the score as it was.
        self.scores = torch.fmax(self.scores, maps.amax(dim=(1, 2)))
        packed = self._pack(masks)
        # Flags, areas and runs read the packed bits: an eighth of the bytes of the mask.
        self.areas += self._count(packed, masks)
        self.rows[:, start:stop] = packed.ne(0).any(dim=2)
        self.cols |= unpack_bits(_or_rows(packed)).flatten(1)[:, : self.cols.shape[1]]
        self.packed[:, start:stop] = packed
        if self.runs is not None:
            self.runs.add(packed)
        if self.soft is not None:
            self.soft[:, start:stop] = maps.mul(255.0).round_().to(torch.uint8)

    def _pack(self, masks: torch.Tensor) -> torch.Tensor:
        """bool [M, rows, W] -> uint8 [M, rows, ceil(W / 8)], as np.packbits(axis=-1)."""
        if masks.device.type == "cpu":
            # numpy's packbits is one C pass, ~30x faster on a CPU than the tensor version.
            return torch.from_numpy(np.packbits(masks.numpy(), axis=-1))
        return pack_bits(masks, self.weights)

    @staticmethod
    def _count(packed: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """int64 [M] foreground pixels: popcount of the packed bits on a CPU."""
        if packed.device.type == "cpu" and _POPCOUNT is not None:
            return torch.from_numpy(_POPCOUNT(packed.numpy()).sum(axis=(1, 2), dtype=np.int64))
        return masks.sum(dim=(1, 2))

    def result(self) -> RenderedMasks:
        runs = None if self.runs is None else self.runs.result()
        return RenderedMasks(
            self.packed, finite_scores(self.scores), self.areas, self._boxes(), self.soft, runs=runs
        )

    def _boxes(self) -> torch.Tensor:
        """[M, 4] x, y, w, h from the per-row and per-column "any foreground" flags."""
        x0, x1 = _first_last(self.cols)
        y0, y1 = _first_last(self.rows)
        boxes = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)
        return torch.where((self.areas > 0).unsqueeze(1), boxes, torch.zeros_like(boxes))


def pack_bits(masks: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """bool [..., W] -> uint8 [..., ceil(W / 8)] like ``np.packbits(axis=-1)``, on any device.

    ``weights``: uint8 [8] ``_BIT_WEIGHTS`` on the masks' device (made when None).
    """
    if weights is None:
        weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=masks.device)
    bits = masks.to(torch.uint8)
    pad = -bits.shape[-1] % 8
    if pad:
        bits = F.pad(bits, (0, pad))
    grouped = bits.view(*bits.shape[:-1], -1, 8) * weights
    return grouped.sum(dim=-1, dtype=torch.uint8)


def _or_rows(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [M, rows, B] -> uint8 [M, B], the bitwise OR over the rows (pairwise halving)."""
    while packed.shape[1] > 1:
        half = packed.shape[1] // 2
        merged = packed[:, :half] | packed[:, half : 2 * half]
        packed = (
            torch.cat([merged, packed[:, 2 * half :]], dim=1) if packed.shape[1] % 2 else merged
        )
    return packed[:, 0]


def _first_last(flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the first and last True of each row of a bool [M, L] (0 when none)."""
    as_int = flags.to(torch.uint8)
    first = as_int.argmax(dim=1)  # argmax returns the first maximal index
    last = flags.shape[1] - 1 - as_int.flip(1).argmax(dim=1)
    return first, last
