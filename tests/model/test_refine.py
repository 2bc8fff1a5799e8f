"""Edge-aware refinement (model.masks.refine) and its banded rendering (model.masks.render)."""

from __future__ import annotations

import kornia
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_serve.model.masks.postprocess import PostProcess
from clipseg_serve.model.masks.refine import box_mean, guided_filter, pamr
from clipseg_serve.model.masks.render import render_masks


def _window_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Reference: a (2r+1)^2 box sum over the zero-padded map / the count of real pixels."""
    k = 2 * radius + 1
    flat = x.reshape(-1, 1, *x.shape[-2:])
    ones = torch.ones_like(flat[:1])
    kernel = torch.ones(1, 1, k, k, dtype=x.dtype)
    total = F.conv2d(F.pad(flat, (radius,) * 4), kernel)
    count = F.conv2d(F.pad(ones, (radius,) * 4), kernel)
    return (total / count).reshape(x.shape)


@pytest.mark.parametrize("radius", [1, 3, 8, 40])
def test_box_mean_is_the_window_mean_cut_at_the_border(radius):
    x = torch.rand(2, 3, 17, 23)
    assert torch.allclose(box_mean(x, radius), _window_mean(x, radius), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_guided_filter_equals_kornias_away_from_the_border(channels):
    torch.manual_seed(0)
    guide = torch.rand(channels, 60, 80)
    probs = torch.rand(2, 60, 80)
    ours = guided_filter(probs, guide, 4, 1e-2)
    theirs = kornia.filters.guided_blur(
        guide[None].expand(2, -1, -1, -1).contiguous(), probs[:, None], 9, 1e-2
    )[:, 0].clamp(0, 1)
    # kornia reflects at the border; the windows here are cut (He et al.'s N), so only
    # pixels whose two nested windows stay inside compare.
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert torch.allclose(ours[inner], theirs[inner], atol=1e-5)


def _step_scene(height: int, width: int, edge: int, offset: int):
    """A guide dark left of column ``edge``, bright from it; logits whose 0.5 crossing is
    ``offset`` px right of the edge and that ramp over ~1/10 of the width (CLIPSeg-like)."""
    guide = torch.zeros(3, height, width, dtype=torch.uint8)
    guide[:, :, edge:] = 200
    guide[0, :, edge:] = 90  # a colour edge, not only a brightness one
    x = (torch.arange(352, dtype=torch.float32) + 0.5) * width / 352 - 0.5
    ramp = (x - (edge + offset)) / (width / 40)
    logits = ramp.view(1, 1, 352).expand(1, 352, 352).contiguous()
    return guide, logits


def _edge_column(mask: np.ndarray) -> int:
    """First column that is on in the middle row (the mask is off left, on right)."""
    row = mask[mask.shape[0] // 2]
    return int(np.argmax(row))


def _masks(rendered, width: int) -> np.ndarray:
    return np.unpackbits(rendered.packed.numpy(), axis=-1, count=width).astype(bool)


@pytest.mark.parametrize("refine", ["guided", "pamr"])
def test_refinement_recovers_a_step_edge_from_a_blurred_map(refine):
    height, width, edge = 120, 400, 190
    guide, logits = _step_scene(height, width, edge, offset=12)
    plain = render_masks(logits, (height, width), 0.5, soft=True)
    # A window wide enough to span the ramp (the default scales with the image instead).
    post = PostProcess(refine=refine, radius=width // 16)
    refined = render_masks(logits, (height, width), 0.5, soft=True, post=post, guide=guide)
    assert abs(_edge_column(_masks(plain, width)[0]) - edge) >= 10  # the blurred map misses
    assert abs(_edge_column(_masks(refined, width)[0]) - edge) <= 1
    # and the soft map is a step there now, not a ramp: 3 px either side of the edge
    row = refined.soft[0, height // 2].float()
    ramp = plain.soft[0, height // 2].float()
    assert row[edge + 3] - row[edge - 3] > 3 * (ramp[edge + 3] - ramp[edge - 3])


def test_banded_refinement_equals_one_band():
    torch.manual_seed(1)
    guide = torch.randint(0, 256, (3, 97, 131), dtype=torch.uint8)
    logits = torch.randn(3, 352, 352)
    post = PostProcess(refine="guided", radius=6)
    one = render_masks(logits, (97, 131), 0.5, soft=True, post=post, guide=guide)
    banded = render_masks(
        logits, (97, 131), 0.5, soft=True, post=post, guide=guide, band_elements=2000
    )
    # The coefficient maps are not probabilities: neither path may clip them to [0, 1].
    assert torch.equal(one.packed, banded.packed)
    assert (one.soft.int() - banded.soft.int()).abs().max() <= 1


def test_refinement_needs_the_guide_at_the_image_size():
    logits = torch.randn(1, 352, 352)
    with pytest.raises(ValueError, match="guide"):
        render_masks(logits, (40, 50), 0.5, post=PostProcess(refine="guided"))
    wrong = torch.zeros(3, 40, 49, dtype=torch.uint8)
    with pytest.raises(ValueError, match="guide"):
        render_masks(logits, (40, 50), 0.5, post=PostProcess(refine="guided"), guide=wrong)


def test_pamr_keeps_a_constant_map_and_follows_colour_edges():
    constant = torch.full((1, 30, 40), 0.3)
    assert torch.allclose(pamr(constant, torch.rand(3, 30, 40)), constant, atol=1e-6)
    # A map whose border sits 4 px off a colour edge: PAMR pulls it onto the edge.
    guide = torch.zeros(3, 30, 60)
    guide[:, :, 30:] = 1.0
    probs = torch.zeros(1, 30, 60)
    probs[:, :, 26:] = 1.0
    refined = pamr(probs, guide)
    assert refined[0, :, 31:].min() > 0.9 and refined[0, :, :29].max() < 0.5


@pytest.mark.gpu
def test_refinement_on_cuda_matches_the_cpu():
    torch.manual_seed(2)
    guide = torch.randint(0, 256, (3, 300, 500), dtype=torch.uint8)
    logits = torch.randn(2, 352, 352)
    for refine in ("guided", "pamr"):
        post = PostProcess(refine=refine)
        cpu = render_masks(logits, (300, 500), 0.5, soft=True, post=post, guide=guide)
        gpu = render_masks(logits.cuda(), (300, 500), 0.5, soft=True, post=post, guide=guide.cuda())
        assert (cpu.soft.int() - gpu.soft.cpu().int()).abs().max() <= 2


def test_many_maps_are_solved_in_chunks_like_one_at_a_time():
    torch.manual_seed(0)
    guide = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    logits = torch.randn(9, 352, 352)  # more than REFINE_MAPS_PER_SOLVE
    post = PostProcess(refine="guided")
    together = render_masks(logits, (60, 90), 0.5, soft=True, post=post, guide=guide)
    alone = [
        render_masks(logits[i : i + 1], (60, 90), 0.5, soft=True, post=post, guide=guide)
        for i in range(9)
    ]
    assert torch.equal(together.soft, torch.cat([r.soft for r in alone]))


def test_the_working_scale_is_bounded_whatever_the_radius():
    from clipseg_serve.model.masks.refine import MAX_WORK_PIXELS, working_size

    (h, w), radius = working_size((4000, 6000), 1)
    assert h * w <= MAX_WORK_PIXELS * 1.01 and radius >= 1
    (h, w), radius = working_size((1080, 1920), 44)
    assert (h, w) == (99, 175) and radius == 4  # 11 px a cell: radius / 4
