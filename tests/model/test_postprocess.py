"""Tests of model.masks.postprocess: reference order, output sizes, combine modes, negatives."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from clipseg_serve.model.masks.postprocess import (
    Combine,
    combine_masks,
    mask_scores,
    probabilities_at_size,
)

T, F_ = True, False


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def bools(rows: list[list[list[bool]]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


# --------------------------------------------------------------------------------------
# probabilities_at_size
# --------------------------------------------------------------------------------------


def test_sigmoid_happens_before_bilinear_resize() -> None:
    # A 1x2 map upsampled to 1x4 (align_corners=False) samples the source at
    # x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped): weights (1, 0), (.75, .25),
    # (.25, .75), (0, 1). The probabilities are blended, not the logits.
    l0, l1 = 3.0, -4.0
    logits = torch.tensor([[[l0, l1]]])
    probs = probabilities_at_size(logits, (1, 4))
    s0, s1 = torch.sigmoid(torch.tensor([l0, l1])).tolist()
    expected = torch.tensor([[[s0, 0.75 * s0 + 0.25 * s1, 0.25 * s0 + 0.75 * s1, s1]]])
    torch.testing.assert_close(probs, expected)
    # Resizing the logits first would give a clearly different value in the middle.
    logits_first = torch.sigmoid(torch.tensor(0.75 * l0 + 0.25 * l1)).item()
    assert abs(probs[0, 0, 1].item() - logits_first) > 0.05


def test_threshold_after_resize_not_before() -> None:
    # Probabilities 0.45 | 0.1 upsampled to 4 pixels: 0.45, 0.3625, 0.1875, 0.1.
    logits = torch.tensor([[[logit(0.45), logit(0.1)]]])
    probs = probabilities_at_size(logits, (1, 4))
    masks = combine_masks(probs, 0.4, Combine.NONE)
    assert masks.tolist() == [[[T, F_, F_, F_]]]
    # Thresholding first and resizing the binary mask gives a different (wrong) answer.
    binary = (torch.sigmoid(logits) > 0.4).float().unsqueeze(1)
    wrong = F.interpolate(binary, size=(1, 4), mode="bilinear", align_corners=False) > 0.5
    assert wrong.squeeze(1).tolist() == [[[T, T, F_, F_]]]
    assert not torch.equal(masks, wrong.squeeze(1))


def test_matches_reference_pipeline_on_random_logits() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 22, 22, generator=gen) * 4
    probs = probabilities_at_size(logits, (37, 91))
    reference = F.interpolate(
        torch.sigmoid(logits)[:, None], size=(37, 91), mode="bilinear", align_corners=False
    )[:, 0]
    torch.testing.assert_close(probs, reference)


@pytest.mark.parametrize("size", [(1, 1), (10000, 50), (50, 10000), (37, 91)])
def test_output_size_dtype_and_range(size: tuple[int, int]) -> None:
    logits = torch.randn(2, 22, 22, dtype=torch.float16) * 10
    probs = probabilities_at_size(logits, size)
    assert probs.shape == (2, *size)
    assert probs.dtype == torch.float32
    assert probs.device == logits.device
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0


def test_downsample_to_1x1_samples_the_centre() -> None:
    # 4 -> 1 with align_corners=False samples source coordinate 1.5 on both axes: the mean
    # of the central 2x2 probabilities (no antialiasing over the whole map).
    logits = torch.arange(16, dtype=torch.float32).reshape(1, 4, 4) - 8
    probs = probabilities_at_size(logits, (1, 1))
    expected = torch.sigmoid(logits[0, 1:3, 1:3]).mean()
    torch.testing.assert_close(probs[0, 0, 0], expected)


def test_same_size_is_plain_sigmoid_and_zero_prompts() -> None:
    logits = torch.randn(2, 5, 7)
    torch.testing.assert_close(probabilities_at_size(logits, (5, 7)), torch.sigmoid(logits))
    assert probabilities_at_size(torch.empty(0, 22, 22), (3, 4)).shape == (0, 3, 4)


@pytest.mark.parametrize(
    ("logits", "size"),
    [
        (torch.zeros(22, 22), (4, 4)),
        (torch.zeros(1, 1, 22, 22), (4, 4)),
        (torch.zeros(1, 22, 22, dtype=torch.int64), (4, 4)),
        (torch.zeros(1, 22, 22), (0, 4)),
        (torch.zeros(1, 22, 22), (4,)),
    ],
)
def test_probabilities_at_size_rejects_bad_input(
    logits: torch.Tensor, size: tuple[int, ...]
) -> None:
    with pytest.raises(ValueError):
        probabilities_at_size(logits, size)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_stays_on_gpu() -> None:
    logits = torch.randn(2, 22, 22, device="cuda", dtype=torch.float16)
    probs = probabilities_at_size(logits, (100, 30))
    assert probs.is_cuda and probs.dtype == torch.float32
    masks = combine_masks(probs, 0.4, Combine.ARGMAX, negative_probs=probs[:1])
    assert masks.is_cuda and mask_scores(probs).is_cuda


# --------------------------------------------------------------------------------------
# combine_masks
# --------------------------------------------------------------------------------------

# Two prompts on a 2x2 image, threshold 0.5 (strict: 0.5 itself is off).
P0 = [[0.9, 0.6], [0.2, 0.5]]
P1 = [[0.8, 0.3], [0.7, 0.1]]
PROBS = torch.tensor([P0, P1])
NEG = torch.tensor([[[0.95, 0.55], [0.7, 0.9]]])


def test_combine_none() -> None:
    masks = combine_masks(PROBS, 0.5, Combine.NONE)
    assert masks.dtype == torch.bool
    assert torch.equal(masks, bools([[[T, T], [F_, F_]], [[T, F_], [T, F_]]]))


def test_combine_union_and_intersection() -> None:
    assert torch.equal(combine_masks(PROBS, 0.5, Combine.UNION), bools([[[T, T], [T, F_]]]))
    assert torch.equal(
        combine_masks(PROBS, 0.5, Combine.INTERSECTION), bools([[[T, F_], [F_, F_]]])
    )


def test_combine_argmax() -> None:
    masks = combine_masks(PROBS, 0.5, Combine.ARGMAX)
    # (1,1): best is 0.5, not above the threshold -> background in both masks.
    assert torch.equal(masks, bools([[[T, T], [F_, F_]], [[F_, F_], [T, F_]]]))


def test_combine_accepts_string_values() -> None:
    assert torch.equal(combine_masks(PROBS, 0.5, "union"), combine_masks(PROBS, 0.5, Combine.UNION))
    assert Combine("argmax") is Combine.ARGMAX and Combine.NONE == "none"


def test_threshold_is_strict_and_inclusive_bounds() -> None:
    probs = torch.tensor([[[0.0, 0.3, 1.0]]])
    assert combine_masks(probs, 0.3, Combine.NONE).tolist() == [[[F_, F_, T]]]
    assert combine_masks(probs, 0.0, Combine.NONE).tolist() == [[[F_, T, T]]]
    assert combine_masks(probs, 1.0, Combine.NONE).tolist() == [[[F_, F_, F_]]]


def test_negatives_remove_pixels_per_positive() -> None:
    # (0,0): negative 0.95 beats both positives -> removed from both.
    # (0,1): negative 0.55 is above threshold but below p0 = 0.6 -> p0 keeps it.
    # (1,0): negative 0.7 ties p1 = 0.7 -> ties go to the negative, removed.
    masks = combine_masks(PROBS, 0.5, Combine.NONE, negative_probs=NEG)
    assert torch.equal(masks, bools([[[F_, T], [F_, F_]], [[F_, F_], [F_, F_]]]))
    union = combine_masks(PROBS, 0.5, Combine.UNION, negative_probs=NEG)
    assert torch.equal(union, bools([[[F_, T], [F_, F_]]]))
    inter = combine_masks(PROBS, 0.5, Combine.INTERSECTION, negative_probs=NEG)
    assert not inter.any()


def test_negatives_in_argmax_compete_and_are_dropped() -> None:
    masks = combine_masks(PROBS, 0.5, Combine.ARGMAX, negative_probs=NEG)
    assert torch.equal(masks, bools([[[F_, T], [F_, F_]], [[F_, F_], [F_, F_]]]))


def test_negative_below_threshold_never_removes() -> None:
    probs = torch.tensor([[[0.3, 0.6]]])
    neg = torch.tensor([[[0.45, 0.45]]])  # more probable than 0.3, but not above 0.4
    assert combine_masks(probs, 0.4, Combine.NONE, negative_probs=neg).tolist() == [[[F_, T]]]
    probs2 = torch.tensor([[[0.5]]])
    neg2 = torch.tensor([[[0.4]]])  # >= nothing relevant: 0.4 is not > 0.4
    assert combine_masks(probs2, 0.4, Combine.NONE, negative_probs=neg2).all()


def test_several_negatives_act_like_their_maximum() -> None:
    split = torch.tensor([[[0.95, 0.1], [0.1, 0.9]], [[0.1, 0.55], [0.7, 0.1]]])
    for mode in Combine:
        assert torch.equal(
            combine_masks(PROBS, 0.5, mode, negative_probs=split),
            combine_masks(PROBS, 0.5, mode, negative_probs=NEG),
        ), mode
    empty = torch.empty(0, 2, 2)
    assert torch.equal(
        combine_masks(PROBS, 0.5, Combine.NONE, negative_probs=empty),
        combine_masks(PROBS, 0.5, Combine.NONE),
    )


def test_argmax_is_exclusive_with_background_on_random_maps() -> None:
    gen = torch.Generator().manual_seed(1)
    probs = torch.rand(5, 64, 48, generator=gen)
    neg = torch.rand(2, 64, 48, generator=gen)
    t = 0.6
    masks = combine_masks(probs, t, Combine.ARGMAX, negative_probs=neg)
    assert masks.shape == (5, 64, 48)
    assert int(masks.sum(0).max()) <= 1  # no pixel in two masks
    best, label = probs.max(0)
    neg_max = neg.max(0).values
    expected_on = (best > t) & ~((neg_max > t) & (neg_max >= best))
    assert torch.equal(masks.any(0), expected_on)
    assert 0 < int(expected_on.sum()) < 64 * 48  # both objects and background occur
    assert torch.equal(masks.float().argmax(0)[expected_on], label[expected_on])
    # Each argmax mask is a subset of the same prompt's independent mask.
    independent = combine_masks(probs, t, Combine.NONE, negative_probs=neg)
    assert not (masks & ~independent).any()


def test_argmax_tie_between_prompts_goes_to_first() -> None:
    probs = torch.tensor([[[0.7]], [[0.7]]])
    assert combine_masks(probs, 0.5, Combine.ARGMAX).flatten().tolist() == [T, F_]


@pytest.mark.parametrize("threshold", [-0.01, 1.01, float("nan"), "high", None])
def test_bad_threshold_raises(threshold: object) -> None:
    with pytest.raises(ValueError, match="threshold"):
        combine_masks(PROBS, threshold, Combine.NONE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("probs", "negative"),
    [
        (torch.rand(2, 2), None),  # not [P, h, w]
        (torch.rand(1, 2, 2, 2), None),
        (torch.empty(0, 2, 2), None),  # no prompt
        (torch.ones(1, 2, 2, dtype=torch.bool), None),
        (torch.rand(2, 2, 2), torch.rand(1, 3, 2)),  # spatial mismatch
        (torch.rand(2, 2, 2), torch.rand(2, 2)),
    ],
)
def test_bad_shapes_raise(probs: torch.Tensor, negative: torch.Tensor | None) -> None:
    with pytest.raises(ValueError):
        combine_masks(probs, 0.5, Combine.NONE, negative_probs=negative)


def test_unknown_combine_raises() -> None:
    with pytest.raises(ValueError):
        combine_masks(PROBS, 0.5, "xor")


# --------------------------------------------------------------------------------------
# mask_scores
# --------------------------------------------------------------------------------------


def test_mask_scores_is_max_per_prompt() -> None:
    scores = mask_scores(PROBS)
    assert scores.shape == (2,)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.8]))
    assert mask_scores(torch.empty(0, 3, 3)).shape == (0,)
    with pytest.raises(ValueError):
        mask_scores(torch.rand(3, 3))
