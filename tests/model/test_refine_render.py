"""Refined rendering (``render_masks`` with ``refine=guided|pamr``) against the truth.

A regression test: the guided filter's coefficients (``a`` < 0 at a dark-on-light edge,
``b`` > 1) were once interpolated to full size through the probability path, which clamps
to [0, 1]; the masks then grew past the edges by up to 80 %. Here a near-perfect map (the
true mask area-averaged to the model's 352 grid) of a shape on a textured background must
stay on its edges after refinement, in one band and in many.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_serve.model.masks.postprocess import PostProcess
from clipseg_serve.model.masks.render import render_masks

SIZE = 512


def _scene(colour: tuple[int, int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """A uint8 [3, SIZE, SIZE] guide (noisy grey, one disc of ``colour``) and its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    truth = (yy - 230.5) ** 2 + (xx - 290.5) ** 2 <= 120.0**2
    pixels = rng.normal(150.0, 6.0, (SIZE, SIZE, 1)).repeat(3, axis=2)
    pixels[truth] = colour
    image = np.clip(pixels, 0, 255).astype(np.uint8)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), truth


def _oracle_logits(truth: np.ndarray) -> torch.Tensor:
    mask = torch.from_numpy(truth.astype(np.float32))[None, None]
    small = F.interpolate(mask, size=(352, 352), mode="area")[0]
    return torch.logit(small.clamp(1e-3, 1 - 1e-3))


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / (pred | truth).sum())


@pytest.mark.parametrize("refine", ["guided", "pamr"])
@pytest.mark.parametrize("colour", [(150, 60, 200), (235, 205, 40)])  # darker, lighter
@pytest.mark.parametrize("band_elements", [1 << 22, 1 << 14])  # one band, many
def test_refined_masks_stay_on_the_edges(refine, colour, band_elements):
    guide, truth = _scene(colour)
    rendered = render_masks(
        _oracle_logits(truth),
        (SIZE, SIZE),
        0.5,
        band_elements=band_elements,
        post=PostProcess(refine=refine),
        guide=guide,
    )
    packed = rendered.packed[0].numpy()
    pred = np.unpackbits(packed, axis=-1, count=SIZE).view(bool)
    assert _iou(pred, truth) > 0.98
    assert abs(int(rendered.areas[0]) / truth.sum() - 1) < 0.02
