"""Post-processing: CLIPSeg logits out, binary masks in the image's own size.

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

import torch
import torch.nn.functional as F

__all__ = ["Combine", "check_size", "combine_masks", "mask_scores", "probabilities_at_size"]


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


def combine_masks(
    probs: torch.Tensor,
    threshold: float,
    combine: Combine | str,
    negative_probs: torch.Tensor | None = None,
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
        threshold: in [0, 1]; also the background score for ``ARGMAX``.
        combine: a ``Combine`` member or its string value.
        negative_probs: optional ``[N, h, w]`` probabilities of negative prompts, same
            ``h, w`` and device as ``probs``; ``N == 0`` is the same as ``None``.

    Returns:
        bool tensor on ``probs.device``: ``[P, h, w]`` for ``NONE`` and ``ARGMAX``,
        ``[1, h, w]`` for ``UNION`` and ``INTERSECTION``.

    Raises:
        ValueError: threshold outside [0, 1] (or NaN), unknown ``combine``, bad shapes,
            no positive prompt, or tensors on different devices.
    """
    combine = Combine(combine)  # accepts the string values; ValueError otherwise
    try:
        t = float(threshold)
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}") from None
    if not 0.0 <= t <= 1.0:  # also rejects NaN
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    threshold = t
    _check_probs(probs, "probs")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one prompt (got P = 0)")
    negative_max = _negative_max(probs, negative_probs)

    if combine is Combine.ARGMAX:
        return _argmax_masks(probs, threshold, negative_max)

    masks = probs > threshold
    if negative_max is not None:
        # [h, w] vs [P, h, w] broadcasts: one comparison covers every positive prompt.
        suppressed = (negative_max > threshold) & (negative_max >= probs)
        masks &= ~suppressed
    if combine is Combine.UNION:
        return masks.any(dim=0, keepdim=True)
    if combine is Combine.INTERSECTION:
        return masks.all(dim=0, keepdim=True)
    return masks


def _argmax_masks(
    probs: torch.Tensor, threshold: float, negative_max: torch.Tensor | None
) -> torch.Tensor:
    """Exclusive masks: one label per pixel among prompts, negatives and background."""
    # torch.max returns the first maximal index on ties, so equal positives go to the
    # lower prompt index, deterministically.
    best, label = probs.max(dim=0)  # [h, w] each
    assigned = best > threshold  # the threshold is the background's score
    if negative_max is not None:
        # Equivalent to adding the negatives as labels ordered before the positives
        # (they win ties) and then dropping them: only the strongest negative matters.
        assigned &= ~((negative_max > threshold) & (negative_max >= best))
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
        ``[P]`` tensor of the same dtype and device, values in [0, 1].
    """
    _check_probs(probs, "probs")
    if probs.shape[0] == 0:
        return probs.new_empty((0,))
    return probs.amax(dim=(1, 2))
