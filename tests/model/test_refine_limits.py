"""The refinement's numeric edges, each once a crash or a NaN (model.masks.refine and
model.masks.render).

* ``eps`` far below float32's resolution divided by ~0 on flat regions: NaN scores.
* A radius of four times the image's long side reached a 1x1 working size, where PyTorch's
  antialiased uint8 resize fails an internal assert.
* The running sums of ``box_mean`` lost ~L * 2^-24 on an axis of length L (1e-3 at 30000
  px, more than the default eps), and the 3x3 colour solve cancelled to noise at small eps
  on grey images.
* A NaN map (from any cause) made a NaN score, which no JSON encoder or header takes.
"""

from __future__ import annotations

import math

import pytest
import torch

from clipseg_serve.model.masks.postprocess import PostProcess, mask_scores
from clipseg_serve.model.masks.refine import box_mean, guided_filter
from clipseg_serve.model.masks.render import render_masks

SMALLEST_EPS = 1e-6  # model.refine.MIN_EPS, spelled out so this file states the contract


@pytest.mark.parametrize("eps", [1e-20, 1e-9, 5e-7, 0.0, -1.0, math.nan, math.inf, 1.5])
def test_an_eps_float32_cannot_resolve_is_refused(eps):
    with pytest.raises(ValueError, match="eps"):
        PostProcess(refine="guided", eps=eps)


def _two_tone(height: int, width: int, grey: bool) -> torch.Tensor:
    """uint8 [3, h, w]: a flat left half and a flat right half (grey: equal channels)."""
    guide = torch.empty(3, height, width, dtype=torch.uint8)
    guide[:, :, : width // 2] = torch.tensor([90, 90, 90] if grey else [90, 20, 200]).view(3, 1, 1)
    guide[:, :, width // 2 :] = torch.tensor([91, 91, 91] if grey else [91, 20, 200]).view(3, 1, 1)
    return guide


@pytest.mark.parametrize("refine", ["guided", "pamr"])
@pytest.mark.parametrize("grey", [True, False])
def test_the_smallest_eps_gives_finite_scores_on_flat_images(refine, grey):
    post = PostProcess(refine=refine, eps=SMALLEST_EPS)
    logits = torch.randn(2, 22, 22, generator=torch.Generator().manual_seed(0))
    for guide in (_two_tone(48, 64, grey), torch.full((3, 48, 64), 7, dtype=torch.uint8)):
        rendered = render_masks(logits, (48, 64), 0.5, soft=True, post=post, guide=guide)
        assert torch.isfinite(rendered.scores).all()
        assert ((rendered.scores >= 0) & (rendered.scores <= 1)).all()


def test_the_colour_solve_is_accurate_at_the_smallest_eps():
    """A grey photo decoded as RGB (equal channels, strong edges) makes the guide's 3x3
    covariance singular; float32 adjugates cancelled to 0.1 errors there at eps <= 1e-5."""
    gen = torch.Generator().manual_seed(1)
    grey = (torch.rand(1, 64, 80, generator=gen) > 0.5).float() * (201 / 255)
    guide = grey.expand(3, -1, -1).contiguous()
    probs = torch.rand(2, 64, 80, generator=gen)
    for eps in (SMALLEST_EPS, 1e-5, 1e-4):
        out = guided_filter(probs, guide, 4, eps)
        exact = guided_filter(probs.double(), guide.double(), 4, eps)
        assert (out.double() - exact).abs().max() < 2e-3, eps


def test_box_mean_stays_exact_on_long_axes():
    """One running sum per axis: float32 sums of 30000 values lose 2^-24 * 30000 each."""
    row = torch.full((1, 1, 30000), 200 / 255)
    row[..., ::7] = 201 / 255
    for x in (row, row.transpose(-1, -2)):
        exact = box_mean(x.double(), 1)
        assert (box_mean(x, 1).double() - exact).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("size", "radius"), [((48, 64), 256), ((100, 100), 512), ((1, 40), 512), ((40, 1), 300)]
)
def test_a_radius_beyond_the_image_is_the_whole_image(size, radius):
    """Windows wider than the image are the whole image: any radius >= the long side - 1
    is that one (no 1x1 working size, no crash)."""
    gen = torch.Generator().manual_seed(2)
    guide = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen)
    logits = torch.randn(1, 22, 22, generator=gen)
    whole = max(1, max(size) - 1)
    for refine in ("guided", "pamr"):
        big, fit = (
            render_masks(logits, size, 0.5, soft=True, guide=guide, post=PostProcess(refine, r))
            for r in (radius, whole)
        )
        assert big.packed.shape[:2] == (1, size[0])
        assert torch.equal(big.soft, fit.soft) and torch.equal(big.scores, fit.scores)


def test_scores_are_finite_even_for_nan_maps():
    logits = torch.full((2, 22, 22), math.nan)
    logits[1, 3:9, 4:8] = 2.0
    for post in (None, PostProcess(refine="guided")):
        guide = torch.zeros(3, 30, 40, dtype=torch.uint8)
        rendered = render_masks(logits, (30, 40), 0.5, soft=True, post=post, guide=guide)
        assert torch.isfinite(rendered.scores).all()
        assert ((rendered.scores >= 0) & (rendered.scores <= 1)).all()
    probs = torch.rand(2, 5, 5)
    probs[0, 1, 1] = math.nan
    scores = mask_scores(probs)
    assert torch.isfinite(scores).all() and scores[1] == probs[1].max()
