"""The post-processing pipeline through the library: thresholds per prompt, the
background prompt, refinement, host steps and instances (model.masks.postprocess,
model.inference.batch, model.inference.predictor, model.inference.finish)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clipseg_serve.model.errors import InvalidPromptError
from clipseg_serve.model.inference.batch import SegmentRequest, plan_batch
from clipseg_serve.model.inference.finish import shape_mask
from clipseg_serve.model.masks.mask_ops import mask_box
from clipseg_serve.model.masks.postprocess import BACKGROUND_PROMPT, PostProcess, combine_masks
from tests.conftest import encode, random_image


def test_per_prompt_thresholds():
    probs = torch.tensor([[[0.2, 0.5, 0.8]], [[0.2, 0.5, 0.8]]])
    masks = combine_masks(probs, (0.3, 0.6), "none")
    assert masks[0, 0].tolist() == [False, True, True]
    assert masks[1, 0].tolist() == [False, False, True]
    union = combine_masks(probs, (0.3, 0.6), "union")
    assert union[0, 0].tolist() == [False, True, True]
    with pytest.raises(ValueError, match="thresholds for 2 prompts"):
        combine_masks(probs, (0.3, 0.6, 0.1), "none")


def test_argmax_uses_the_winning_prompts_threshold():
    probs = torch.tensor([[[0.7, 0.1]], [[0.1, 0.5]]])
    masks = combine_masks(probs, (0.8, 0.4), "argmax")
    # pixel 0 goes to prompt 0 (0.7) but is under its 0.8; pixel 1 goes to prompt 1, over 0.4
    assert masks[:, 0].tolist() == [[False, False], [False, True]]


def test_background_prompt_competes_with_its_factor():
    probs = torch.tensor([[[0.6, 0.6, 0.2]], [[0.1, 0.3, 0.25]]])
    background = torch.tensor([[0.1, 0.3, 0.05]])
    masks = combine_masks(probs, 0.5, "argmax", background_probs=background[0])
    # 3 x background = 0.3, 0.9, 0.15: pixel 0 -> prompt 0, pixel 1 -> background,
    # pixel 2 -> prompt 1 (0.25 > 0.2 and > 0.15), although every score there is < 0.5.
    assert masks[:, 0].tolist() == [[True, False, False], [False, False, True]]
    once = combine_masks(
        probs, 0.5, "argmax", background_probs=background[0], background_factor=1.0
    )
    assert once[0, 0].tolist() == [True, True, False]
    with pytest.raises(ValueError, match="argmax"):
        combine_masks(probs, 0.5, "none", background_probs=background[0])


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"refine": "crf"}, "crf"),
        ({"radius": 0}, "radius"),
        ({"eps": 0.0}, "eps"),
        ({"min_area": -1}, "min_area"),
        ({"dilate": 10_000}, "dilate"),
        ({"feather": 1.5}, "feather"),
        ({"max_instances": 256}, "max_instances"),
        ({"background_factor": float("nan")}, "background_factor"),
        ({"pamr_iterations": 0}, "pamr_iterations"),
    ],
)
def test_post_process_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        PostProcess(**fields)


def _request(**kwargs) -> SegmentRequest:
    base = {"pixels": torch.zeros(3, 8, 8, dtype=torch.uint8), "size": (6, 7), "image_key": "a"}
    return SegmentRequest(**{**base, **kwargs})


def test_request_checks_its_post_processing():
    prompt_bg = PostProcess(background="prompt")
    with pytest.raises(InvalidPromptError, match="argmax"):
        _request(prompts=("a",), post=prompt_bg)
    with pytest.raises(InvalidPromptError, match="threshold"):
        _request(prompts=("a",), post=prompt_bg, combine="argmax", threshold=0.4)
    with pytest.raises(InvalidPromptError, match="2 thresholds for 3 prompts"):
        _request(prompts=("a", "b", "c"), threshold=(0.1, 0.2))
    with pytest.raises(ValueError, match="guide"):
        _request(prompts=("a",), post=PostProcess(refine="guided"))
    with pytest.raises(ValueError, match="guide"):
        _request(
            prompts=("a",),
            post=PostProcess(refine="guided"),
            guide=torch.zeros(3, 6, 8, dtype=torch.uint8),
        )
    assert _request(prompts=("a",), threshold=(0.3,)).threshold == 0.3


def test_the_background_prompt_is_a_hidden_row_after_the_negatives():
    request = _request(
        prompts=("a", "b"),
        negative_prompts=("c",),
        combine="argmax",
        post=PostProcess(background="prompt"),
    )
    plan = plan_batch([request])
    assert request.rows == 4 and plan.spans[0].stop == 4
    assert plan.rows[-1].phrase == BACKGROUND_PROMPT
    assert request.labels() == ("a", "b")


def test_segment_with_the_background_prompt_is_the_papers_argmax(predictor):
    image = random_image(64, 48, seed=5)
    prompts = ["a cat", "a dog"]
    result = predictor.segment(
        image, prompts, combine="argmax", post=PostProcess(background="prompt")
    )
    prepared = predictor.prepare_image(image)
    vectors = predictor.text_embeddings([*prompts, BACKGROUND_PROMPT])
    logits = predictor.logits(prepared.pixels[None], vectors, torch.zeros(3, dtype=torch.long))
    probs = torch.nn.functional.interpolate(
        torch.sigmoid(logits)[None], size=(48, 64), mode="bilinear", align_corners=False
    )[0]
    scores = torch.cat([probs[2:] * 3, probs[:2]])
    label = scores.argmax(0)
    expected = np.stack([(label == 1).numpy(), (label == 2).numpy()])
    assert (result.masks != expected).mean() < 1e-3  # float ties at most
    assert result.threshold is None


def _median_threshold(predictor, image) -> float:
    """A threshold that gives the random model's mask edges: its map's median."""
    soft = predictor.segment(image, ["a cat"], soft=True).soft[0]
    return float(np.median(soft)) / 255


def test_segment_with_refinement_and_host_steps(predictor):
    image = encode(random_image(90, 70, seed=2))
    t = _median_threshold(predictor, image)
    plain = predictor.segment(image, ["a cat"], threshold=t)
    for refine in ("guided", "pamr"):
        refined = predictor.segment(image, ["a cat"], threshold=t, post=PostProcess(refine=refine))
        assert refined.size == (70, 90) and refined.masks.shape == (1, 70, 90)
        assert refined.areas[0] == refined.mask(0).sum()
    post = PostProcess(min_area=5, fill_holes=True, erode=1, dilate=2)
    shaped = predictor.segment(image, ["a cat"], threshold=t, post=post)
    expected = shape_mask(plain.mask(0), post)
    assert np.array_equal(shaped.mask(0), expected)
    assert shaped.areas[0] == expected.sum() and shaped.boxes[0].tolist() == mask_box(expected)
    assert 0 < expected.sum() < expected.size


def test_reshaped_masks_drop_the_device_runs(predictor):
    image = random_image(40, 30, seed=1)
    request_args = {"threshold": 0.45}
    prepared = predictor.prepare_image(image)
    common = {
        "pixels": prepared.pixels,
        "size": prepared.size,
        "image_key": "x",
        "prompts": ("a",),
        "runs": True,
        **request_args,
    }
    plain, shaped = predictor.segment_batch(
        [SegmentRequest(**common), SegmentRequest(**common, post=PostProcess(dilate=3))]
    )
    assert plain.runs is not None and shaped.runs is None


def test_instances_through_the_predictor(predictor):
    image = encode(random_image(120, 80, seed=4))
    t = _median_threshold(predictor, image)
    result = predictor.segment(
        image, ["a cat"], threshold=t, post=PostProcess(instances=True, max_instances=3)
    )
    assert result.soft is None  # used for the scores, not asked for
    found = result.instances[0]
    assert 1 <= len(found) <= 3
    assert found.areas.sum() <= result.areas[0]
    assert (np.diff(found.scores) <= 0).all()
    for k in range(len(found)):
        assert found.mask(k).sum() == found.areas[k]
        assert mask_box(found.mask(k)) == found.boxes[k].tolist()
