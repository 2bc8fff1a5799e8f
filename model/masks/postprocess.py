"""Post-processing: CLIPSeg logits out, masks at the image's own size in.

The pipeline (``PostProcess`` says which steps a request wants), in this order:

1. **maps**: ``sigmoid`` of the model's square logits, then to the image's size — bilinear
   (``refine=none``, the reference evaluation), or edge-aware (``refine=guided|pamr``,
   ``model.masks.refine``, guided by the full-size image). On the device, band by band
   (``model.masks.render``).
2. **labels**: threshold (one, or one per prompt), negatives, ``combine``; for exclusive
   labels the background is either the threshold or a "background" prompt's probability
   times ``background_factor`` (``Background``). On the device.
3. **shape**, on the host with OpenCV (``model.masks.mask_ops``): drop components smaller than
   ``min_area``, ``fill_holes``, ``erode`` then ``dilate`` (Euclidean discs).
4. **instances**: split each mask into connected components, scored and sorted.
5. **feather**: the final mask's alpha matte, a linear ramp ``feather`` pixels wide centred
   on its edge (for compositing; PNG output).

The order follows CLIPSeg's reference evaluation exactly: ``sigmoid`` on the model's
square logits, BILINEAR upsampling (``align_corners=False``) of the *probability* map to the
original ``(height, width)``, and only then the threshold. Thresholding first and resizing
a binary mask would give blocky, shifted edges and different masks than the published
numbers were measured with.

Everything stays batched on the input tensor's device (this runs on the GPU worker
thread); there are no Python loops over pixels or prompts.

This module imports torch only; it never touches the web stack.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from clipseg_serve.model.masks.refine import MIN_EPS

__all__ = [
    "BACKGROUND_PROMPT",
    "DEFAULT_POST",
    "MAX_EPS",
    "MAX_MIN_AREA",
    "MAX_PAMR_ITERATIONS",
    "MAX_RADIUS",
    "MIN_EPS",
    "Background",
    "Combine",
    "PostProcess",
    "Refine",
    "check_background",
    "check_size",
    "check_thresholds",
    "combine_masks",
    "finite_scores",
    "mask_scores",
    "probabilities_at_size",
]

#: The text of the background row for ``background=prompt`` (the paper's evaluation).
BACKGROUND_PROMPT = "background"
#: Upper bounds of the pixel-sized parameters: beyond them a request's host work is not
#: bounded by its pixels any more (a disc of radius r costs r^2 per pixel done naively).
MAX_MORPHOLOGY_PX = 512
MAX_INSTANCES = 255  # instance ids are stored as uint8 (0 = none)
#: The guided filter's radius is a pixel cost like the others; a radius beyond the image is
#: clamped to it at render time (``model.masks.refine.effective_radius``: the same filter).
MAX_RADIUS = MAX_MORPHOLOGY_PX
#: eps is in squared [0, 1] guide units, where no window's variance exceeds 1/4: eps = 1
#: already smooths over every edge. ``MIN_EPS`` (model.masks.refine) is float32's floor.
MAX_EPS = 1.0
#: PAMR's steps: each pulls borders about a neighbourhood (up to 24 px at 384 px) further,
#: so 50 cross the whole map; more only costs time (~10 ms a step on 2 CPU cores).
MAX_PAMR_ITERATIONS = 50
#: OpenCV counts component areas in int32: a larger min_area drops every component, as
#: this one does.
MAX_MIN_AREA = 2**31 - 1


def probabilities_at_size(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sigmoid, then bilinear resize of the probability maps to ``size``.

    Args:
        logits: ``[P, S, S]`` raw decoder outputs, one map per prompt, any float dtype
            (half/bfloat16 from autocast included) on any device. Non-square maps
            ``[P, S1, S2]`` work too.
        size: ``(height, width)`` of the original image (note: PIL's ``size`` is
            ``(width, height)``). Extreme aspect ratios (10000x50) and 1x1 are fine.

    Returns:
        float32 ``[P, height, width]`` probabilities in [0, 1], on ``logits.device``.
        Memory is ``4 * P * height * width`` bytes: ~800 MB for 4 prompts on a 50 MP image.

    Notes:
        ``F.interpolate(mode="bilinear", align_corners=False, antialias=False)`` is what the
        reference uses. When the image is *smaller* than the model output (e.g. 1x1) this
        samples rather than averages, which matches the reference behaviour.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must be [P, S, S], got shape {tuple(logits.shape)}")
    if not torch.is_floating_point(logits):
        raise ValueError(f"logits must be a floating-point tensor, got {logits.dtype}")
    height, width = check_size(size)
    prompts = logits.shape[0]
    if prompts == 0:
        return torch.empty((0, height, width), dtype=torch.float32, device=logits.device)
    # float32 before the sigmoid: half precision saturates to exactly 0/1 early and the
    # interpolation weights need full precision for large upsampling factors.
    probs = torch.sigmoid(logits.to(torch.float32))
    if probs.shape[-2:] != (height, width):
        # interpolate wants [N, C, H, W]; treat prompts as the batch with one channel.
        probs = F.interpolate(
            probs.unsqueeze(1),
            size=(height, width),
            mode="bilinear",
            align_corners=False,
            antialias=False,
        ).squeeze(1)
    # Bilinear weights are a convex combination, so this only removes float rounding.
    return probs.clamp_(0.0, 1.0)


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` as two positive ints (height, width); ValueError otherwise."""
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive (height, width), got {size!r}")
    return height, width


class Combine(str, enum.Enum):
    """How per-prompt masks are combined into the answer.

    * ``NONE``: one mask per prompt, ``[P, h, w]``; masks may overlap.
    * ``UNION``: one mask, ``[1, h, w]``: pixels any prompt selects.
    * ``INTERSECTION``: one mask, ``[1, h, w]``: pixels every prompt selects.
    * ``ARGMAX``: one mask per prompt, ``[P, h, w]``, mutually exclusive: each pixel goes
      to its most probable prompt, or to none (background) if that is not above threshold.
    """

    NONE = "none"
    UNION = "union"
    INTERSECTION = "intersection"
    ARGMAX = "argmax"


class Refine(str, enum.Enum):
    """How the maps reach the image's size: ``NONE`` bilinear (the reference), ``GUIDED``
    the fast guided filter, ``PAMR`` pixel-adaptive refinement then the guided filter."""

    NONE = "none"
    GUIDED = "guided"
    PAMR = "pamr"


class Background(str, enum.Enum):
    """The background's score for ``combine=argmax``: ``THRESHOLD`` (a constant, the
    threshold) or ``PROMPT`` (``background_factor`` x the probability of a
    ``BACKGROUND_PROMPT`` row: CLIPSeg's multi-label evaluation, factor 3)."""

    THRESHOLD = "threshold"
    PROMPT = "prompt"


@dataclass(frozen=True)
class PostProcess:
    """Which post-processing steps a request wants (the module docstring has the order).

    refine / radius / eps / pamr_iterations: ``model.masks.refine``; radius is the guided
        window's in full-size pixels, in [1, ``MAX_RADIUS``] (None: ``auto_radius``, half a
        token of the model's grid); one past the image's long side - 1 is clamped to it
        when rendering (the windows already cover the whole image). eps is its
        regularisation in squared [0, 1] guide units, in [``MIN_EPS``, ``MAX_EPS``] (below
        1e-6 float32 cannot resolve it); pamr_iterations in [1, ``MAX_PAMR_ITERATIONS``].
    min_area: components of fewer pixels are dropped (8-connected); 0 keeps all; at most
        ``MAX_MIN_AREA``.
    fill_holes: fill background regions that do not touch the image border.
    erode / dilate: pixels, by Euclidean discs, erosion first.
    feather: width in pixels of the alpha ramp across the edge (0: hard 0/255 masks).
    background / background_factor: ``Background`` (argmax only).
    instances: one entry per connected component; at most ``max_instances`` per mask,
        the highest-scoring ones.
    """

    refine: Refine = Refine.NONE
    radius: int | None = None
    eps: float = 1e-3
    pamr_iterations: int = 10
    min_area: int = 0
    fill_holes: bool = False
    erode: int = 0
    dilate: int = 0
    feather: int = 0
    background: Background = Background.THRESHOLD
    background_factor: float = 3.0
    instances: bool = False
    max_instances: int = 100

    def __post_init__(self) -> None:
        object.__setattr__(self, "refine", Refine(self.refine))
        object.__setattr__(self, "background", Background(self.background))
        _check_int("radius", self.radius, 1, MAX_RADIUS, optional=True)
        _check_int("pamr_iterations", self.pamr_iterations, 1, MAX_PAMR_ITERATIONS)
        _check_int("min_area", self.min_area, 0, MAX_MIN_AREA)
        for name in ("erode", "dilate", "feather"):
            _check_int(name, getattr(self, name), 0, MAX_MORPHOLOGY_PX)
        _check_int("max_instances", self.max_instances, 1, MAX_INSTANCES)
        eps = self.eps
        # The comparison is False for NaN, so NaN is refused too.
        if isinstance(eps, bool) or not (
            isinstance(eps, int | float) and MIN_EPS <= eps <= MAX_EPS
        ):
            raise ValueError(
                f"eps must be a number in [{MIN_EPS:g}, {MAX_EPS:g}] (below {MIN_EPS:g} float32 "
                f"cannot resolve it), got {eps!r}"
            )
        factor = self.background_factor
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"background_factor must be a positive number, got {factor!r}")

    @property
    def on_host(self) -> bool:
        """Whether any step after the labels runs (they need the masks on the host)."""
        shape = self.min_area or self.fill_holes or self.erode or self.dilate
        return bool(shape or self.feather or self.instances)

    @property
    def reshapes(self) -> bool:
        """Whether the binary masks change after the labels (device runs then go stale)."""
        return bool(self.min_area or self.fill_holes or self.erode or self.dilate)


def _check_int(
    name: str, value: object, low: int, high: int | None, *, optional: bool = False
) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


#: No refinement, no host steps: the reference pipeline (frozen, so one shared instance).
DEFAULT_POST = PostProcess()


def check_thresholds(
    threshold: float | Sequence[float], prompts: int | None = None
) -> float | tuple[float, ...]:
    """The one normal form of "one threshold, or one per prompt": a float in [0, 1] for
    every prompt (from a number or a sequence of one), or a tuple of one per prompt
    (``prompts`` of them when given). ValueError otherwise."""
    if isinstance(threshold, Sequence) and not isinstance(threshold, str):
        values = tuple(_one_threshold(t) for t in threshold)
        if not values:
            raise ValueError("thresholds must not be empty")
        if len(values) == 1:
            return values[0]
        if prompts is not None and len(values) != prompts:
            raise ValueError(
                f"{len(values)} thresholds for {prompts} prompts: give one, or one per prompt"
            )
        return values
    return _one_threshold(threshold)


def check_background(post: PostProcess, combine: Combine | str, threshold: object | None) -> None:
    """``background=prompt`` fits only ``combine=argmax`` and no threshold (the background
    prompt's score replaces it); ValueError otherwise."""
    if post.background is not Background.PROMPT:
        return
    if Combine(combine) is not Combine.ARGMAX:
        raise ValueError("background=prompt needs combine=argmax")
    if threshold is not None:
        raise ValueError(
            "background=prompt replaces the threshold by the background prompt's score; "
            "give one or the other"
        )


def _one_threshold(value: object) -> float:
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= t <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be a number in [0, 1], got {value!r}")
    return t


def combine_masks(
    probs: torch.Tensor,
    threshold: float | Sequence[float],
    combine: Combine | str,
    negative_probs: torch.Tensor | None = None,
    background_probs: torch.Tensor | None = None,
    background_factor: float = 3.0,
) -> torch.Tensor:
    """Threshold probability maps into boolean masks and combine them.

    A pixel is "on" for a prompt when its probability is strictly greater than
    ``threshold``.

    Negative prompts ("not the background", "not a shadow") remove pixels: a pixel is
    dropped from a positive prompt's mask when some negative prompt is above the threshold
    there AND at least as probable as that positive prompt (ties go to the negative: if
    the model is equally sure it is the excluded thing, excluding is the safe answer). The
    rule is applied per positive prompt before union / intersection. For ``ARGMAX`` the
    negatives compete as extra labels: a pixel won by a negative (ties included) is
    background in every mask. Both formulations select the same pixels.

    Args:
        probs: ``[P, h, w]`` float probabilities in [0, 1] (from ``probabilities_at_size``),
            ``P >= 1``.
        threshold: in [0, 1], or P of them (one per prompt); for ``ARGMAX`` the winning
            prompt's threshold is the background's score.
        combine: a ``Combine`` member or its string value.
        negative_probs: optional ``[N, h, w]`` probabilities of negative prompts, same
            ``h, w`` and device as ``probs``; ``N == 0`` is the same as ``None``.
        background_probs: optional ``[h, w]`` probability of a background prompt
            (``ARGMAX`` only): the background's score is then ``background_factor`` times
            it, and the threshold is not used (CLIPSeg's multi-label evaluation).

    Returns:
        bool tensor on ``probs.device``: ``[P, h, w]`` for ``NONE`` and ``ARGMAX``,
        ``[1, h, w]`` for ``UNION`` and ``INTERSECTION``.

    Raises:
        ValueError: threshold outside [0, 1] (or NaN), unknown ``combine``, bad shapes,
            no positive prompt, or tensors on different devices.
    """
    combine = Combine(combine)  # accepts the string values; ValueError otherwise
    _check_probs(probs, "probs")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one prompt (got P = 0)")
    checked = check_thresholds(threshold, int(probs.shape[0]))  # the count binds lists only
    # [P, 1, 1] (or a float): one comparison per prompt against its own threshold.
    t = (
        torch.tensor(checked, dtype=probs.dtype, device=probs.device).view(-1, 1, 1)
        if isinstance(checked, tuple)
        else checked
    )
    negative_max = _negative_max(probs, negative_probs)
    if background_probs is not None and combine is not Combine.ARGMAX:
        raise ValueError("a background prompt competes only with combine=argmax")

    if combine is Combine.ARGMAX:
        background = None
        if background_probs is not None:
            background = background_probs * float(background_factor)
        return _argmax_masks(probs, t, negative_max, background)

    masks = probs > t
    if negative_max is not None:
        # [h, w] vs [P, h, w] broadcasts: one comparison covers every positive prompt.
        suppressed = (negative_max > t) & (negative_max >= probs)
        masks &= ~suppressed
    if combine is Combine.UNION:
        return masks.any(dim=0, keepdim=True)
    if combine is Combine.INTERSECTION:
        return masks.all(dim=0, keepdim=True)
    return masks


def _argmax_masks(
    probs: torch.Tensor,
    threshold: float | torch.Tensor,
    negative_max: torch.Tensor | None,
    background: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exclusive masks: one label per pixel among prompts, negatives and background.

    threshold: a float or [P, 1, 1] (the winner's own); background: [h, w] scores that
    replace the threshold as the background's (ties go to the background).
    """
    # torch.max returns the first maximal index on ties, so equal positives go to the
    # lower prompt index, deterministically.
    best, label = probs.max(dim=0)  # [h, w] each
    if background is not None:
        floor = background
    elif isinstance(threshold, torch.Tensor):
        floor = threshold.view(-1)[label]  # each pixel's winning prompt's threshold
    else:
        floor = threshold
    assigned = best > floor  # the floor is the background's score
    if negative_max is not None:
        # Equivalent to adding the negatives as labels ordered before the positives
        # (they win ties) and then dropping them: only the strongest negative matters.
        assigned &= ~((negative_max > floor) & (negative_max >= best))
    prompt_ids = torch.arange(probs.shape[0], device=probs.device).view(-1, 1, 1)
    return (label.unsqueeze(0) == prompt_ids) & assigned.unsqueeze(0)


def _negative_max(probs: torch.Tensor, negative_probs: torch.Tensor | None) -> torch.Tensor | None:
    """Per-pixel maximum over the negative prompts, ``[h, w]``, or None without negatives.

    "Some negative n has p_n > t and p_n >= q" holds exactly when the maximum negative does,
    so the [N, h, w] stack collapses to one map before any comparison.
    """
    if negative_probs is None:
        return None
    _check_probs(negative_probs, "negative_probs")
    if negative_probs.shape[1:] != probs.shape[1:]:
        raise ValueError(
            f"negative_probs spatial size {tuple(negative_probs.shape[1:])} does not match "
            f"probs {tuple(probs.shape[1:])}"
        )
    if negative_probs.device != probs.device:
        raise ValueError(f"negative_probs is on {negative_probs.device}, probs on {probs.device}")
    if negative_probs.shape[0] == 0:
        return None
    return negative_probs.amax(dim=0)


def _check_probs(probs: torch.Tensor, name: str) -> None:
    if not isinstance(probs, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(probs).__name__}")
    if probs.ndim != 3:
        raise ValueError(f"{name} must be [P, h, w], got shape {tuple(probs.shape)}")
    if not torch.is_floating_point(probs):
        raise ValueError(f"{name} must be a floating-point tensor, got {probs.dtype}")


def mask_scores(probs: torch.Tensor) -> torch.Tensor:
    """Confidence of each prompt: its maximum probability anywhere in the image.

    Args:
        probs: ``[P, h, w]`` float probabilities.

    Returns:
        ``[P]`` tensor of the same dtype and device, values in [0, 1] and always finite
        (scores go into JSON and headers): NaN pixels are ignored (a map of NaN only
        scores 0) and values outside [0, 1] are clipped.
    """
    _check_probs(probs, "probs")
    if probs.shape[0] == 0:
        return probs.new_empty((0,))
    return finite_scores(probs.nan_to_num(nan=0.0).amax(dim=(1, 2)))


def finite_scores(scores: torch.Tensor) -> torch.Tensor:
    """float ``[M]`` scores in [0, 1] with NaN as 0: what any score leaving the library is.

    ``torch.clamp`` keeps NaN, so NaN is replaced first."""
    return scores.nan_to_num(nan=0.0).clamp_(0.0, 1.0)
