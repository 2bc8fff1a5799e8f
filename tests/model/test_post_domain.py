"""Property tests: every post-processing field over its whole domain, on images from 1x1 to
300x300 (flat ones included), through the library (tiny model, CPU).

Whatever the values within ``PostProcess``'s bounds, the pipeline must answer without an
exception, with masks of the image's size and finite scores in [0, 1]. Hypothesis draws
the values (``tests.properties``: deterministic, nothing written to disk).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from clipseg_serve.model.inference.batch import Segmentation
from clipseg_serve.model.masks.mask_ops import feather_alpha
from clipseg_serve.model.masks.postprocess import (
    MAX_EPS,
    MAX_INSTANCES,
    MAX_MIN_AREA,
    MAX_MORPHOLOGY_PX,
    MAX_PAMR_ITERATIONS,
    MAX_RADIUS,
    MIN_EPS,
    Background,
    Combine,
    PostProcess,
    Refine,
)
from clipseg_serve.model.masks.render import render_masks
from tests.properties import examples


def small_or_any(low: int, high: int, small: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], half of them at most ``small`` (the common values) and
    the bounds themselves early (hypothesis tries the simplest first)."""
    return st.one_of(
        st.integers(low, min(high, small)), st.sampled_from([low, high]), st.integers(low, high)
    )


@st.composite
def images(draw: st.DrawFn, largest: int = 300) -> np.ndarray:
    """uint8 [h, w, 3], 1 <= h, w <= ``largest``: flat, two flat halves, grey (equal
    channels: a singular colour covariance) or colour noise."""
    height = draw(small_or_any(1, largest, 8))
    width = draw(small_or_any(1, largest, 8))
    kind = draw(st.sampled_from(["flat", "halves", "grey", "noise"]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if kind == "flat":
        return np.full((height, width, 3), rng.integers(0, 256, 3), np.uint8)
    if kind == "halves":
        pixels = np.full((height, width, 3), rng.integers(0, 255, 3), np.uint8)
        pixels[:, width // 2 :] += 1  # one level apart: the faintest edge there is
        return pixels
    if kind == "grey":
        return rng.integers(0, 256, (height, width, 1), np.uint8).repeat(3, axis=2)
    return rng.integers(0, 256, (height, width, 3), np.uint8)


def eps_values() -> st.SearchStrategy[float]:
    """Log-uniform over [MIN_EPS, MAX_EPS], both ends included."""
    low, high = math.log10(MIN_EPS), math.log10(MAX_EPS)
    drawn = st.floats(low, high).map(lambda e: min(MAX_EPS, max(MIN_EPS, 10.0**e)))
    return st.one_of(st.sampled_from([MIN_EPS, MAX_EPS]), drawn)


@st.composite
def posts(draw: st.DrawFn, combine: Combine) -> PostProcess:
    """A ``PostProcess`` with every field drawn from its domain."""
    refine = draw(st.sampled_from(list(Refine)))
    background = Background.THRESHOLD
    if combine is Combine.ARGMAX:
        background = draw(st.sampled_from(list(Background)))
    return PostProcess(
        refine=refine,
        radius=draw(st.none() | small_or_any(1, MAX_RADIUS, 8)),
        eps=draw(eps_values()),
        # Many steps only on small maps: 50 steps at 300x300 are ~1 s on 2 cores.
        pamr_iterations=draw(small_or_any(1, MAX_PAMR_ITERATIONS, 3)),
        min_area=draw(small_or_any(0, MAX_MIN_AREA, 20)),
        fill_holes=draw(st.booleans()),
        erode=draw(small_or_any(0, MAX_MORPHOLOGY_PX, 4)),
        dilate=draw(small_or_any(0, MAX_MORPHOLOGY_PX, 4)),
        feather=draw(small_or_any(0, MAX_MORPHOLOGY_PX, 6)),
        background=background,
        background_factor=draw(st.floats(1e-3, 100.0)),
        instances=draw(st.booleans()),
        max_instances=draw(small_or_any(1, MAX_INSTANCES, 4)),
    )


def thresholds(prompts: int) -> st.SearchStrategy[float | tuple[float, ...]]:
    one = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
    return one | st.tuples(*([one] * prompts))


def check_segmentation(result: Segmentation, size: tuple[int, int], post: PostProcess) -> None:
    """The invariants every answer keeps, whatever the fields."""
    height, width = size
    count = len(result.labels)
    assert result.size == (height, width)
    assert result.masks.shape == (count, height, width)
    assert result.scores.shape == (count,)
    assert np.isfinite(result.scores).all()
    assert ((result.scores >= 0) & (result.scores <= 1)).all()
    assert (result.areas == result.masks.sum(axis=(1, 2))).all()
    if result.soft is not None:
        assert result.soft.shape == (count, height, width) and result.soft.dtype == np.uint8
    if post.instances:
        assert result.instances is not None
        for found in result.instances:
            assert len(found) <= post.max_instances
            assert np.isfinite(found.scores).all() and np.isfinite(found.max_scores).all()
            assert ((found.scores >= 0) & (found.scores <= 1)).all()
    alpha = feather_alpha(result.mask(0), post.feather)
    assert alpha.shape == (height, width) and alpha.dtype == np.uint8


def test_every_post_processing_field_over_its_domain(predictor):
    """The library end to end (``Predictor.segment``): tiny model, every field drawn."""

    @examples(30)
    @given(data=st.data())
    def segment(data: st.DataObject) -> None:
        pixels = data.draw(images())
        combine = data.draw(st.sampled_from(list(Combine)))
        post = data.draw(posts(combine))
        prompts = data.draw(
            st.lists(st.sampled_from(["a cat", "sky", "x"]), min_size=1, max_size=3)
        )
        negatives = data.draw(st.lists(st.sampled_from(["a dog", "grass"]), max_size=2))
        threshold = None
        if post.background is Background.THRESHOLD:
            threshold = data.draw(st.none() | thresholds(len(prompts)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = predictor.segment(
                Image.fromarray(pixels),
                prompts,
                negative_prompts=negatives,
                threshold=threshold,
                combine=combine,
                soft=data.draw(st.booleans()) and not post.instances,
                post=post,
            )
        check_segmentation(result, pixels.shape[:2], post)

    segment()


@st.composite
def logits(draw: st.DrawFn) -> torch.Tensor:
    """float32 [P, S, S] logits with anything in them: huge, +-inf, NaN (a broken model)."""
    prompts, side = draw(st.integers(1, 3)), draw(st.integers(1, 8))
    special = st.sampled_from([0.0, 80.0, -80.0, 1e30, -1e30, math.inf, -math.inf, math.nan])
    values = st.lists(st.floats(-20, 20) | special, min_size=1, max_size=prompts * side * side)
    drawn = draw(values)
    flat = (drawn * (prompts * side * side // len(drawn) + 1))[: prompts * side * side]
    return torch.tensor(flat, dtype=torch.float32).view(prompts, side, side)


@examples(80)
@given(data=st.data())
def test_rendering_keeps_scores_finite_for_any_logits_and_fields(data: st.DataObject) -> None:
    """``render_masks`` alone (no model): any logits, sizes, refinement fields, guides."""
    maps = data.draw(logits())
    pixels = data.draw(images(largest=64))
    combine = data.draw(st.sampled_from(list(Combine)))
    post = data.draw(posts(Combine.NONE))
    guide = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
    size = tuple(pixels.shape[:2])
    prompts = 1 if combine in (Combine.UNION, Combine.INTERSECTION) else int(maps.shape[0])
    rendered = render_masks(
        maps, size, data.draw(thresholds(int(maps.shape[0]))), combine, soft=True,
        post=post, guide=guide,
    )  # fmt: skip
    assert rendered.packed.shape == (prompts, size[0], -(-size[1] // 8))
    assert torch.isfinite(rendered.scores).all()
    assert ((rendered.scores >= 0) & (rendered.scores <= 1)).all()
    assert rendered.soft is not None and rendered.soft.shape == (prompts, *size)


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (2, 2), (3, 1)])
@pytest.mark.parametrize("refine", ["guided", "pamr"])
def test_refinement_at_the_smallest_and_thinnest_sizes(size, refine):
    """1xN, Nx1 and tiny images, with the radius at both of its ends."""
    gen = torch.Generator().manual_seed(3)
    guide = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=gen)
    logits = torch.randn(2, 22, 22, generator=gen)
    for radius in (1, MAX_RADIUS, None):
        post = PostProcess(refine=refine, radius=radius, eps=MIN_EPS, pamr_iterations=3)
        rendered = render_masks(logits, size, 0.5, soft=True, post=post, guide=guide)
        assert rendered.soft is not None and rendered.soft.shape == (2, *size)
        assert torch.isfinite(rendered.scores).all()
