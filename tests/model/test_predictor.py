"""The predictor: one backbone pass per image, caching, conditioning modes, odd inputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_serve.model.errors import ImageDecodeError, InvalidMaskError, InvalidPromptError
from clipseg_serve.model.masks.postprocess import Combine, probabilities_at_size
from clipseg_serve.model.network.text import TRAINING_TEMPLATES, tokenize
from tests.conftest import encode, random_image

PROMPTS = ["a cat", "the red mug", "something to sit on", "sky", "a dog on a skateboard"]


class CallCounter:
    """Counts forward calls of a submodule through a hook."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.calls += 1
        self.batch_sizes.append(int(inputs[0].shape[0]))

    def remove(self):
        self.handle.remove()


def test_many_prompts_share_one_backbone_pass(predictor):
    prepared = predictor.prepare_image(random_image(120, 80))
    conds = predictor.text_embeddings(PROMPTS)
    backbone = CallCounter(predictor.model.clip.visual.conv1)
    try:
        together = predictor.logits(
            prepared.pixels[None], conds, torch.zeros(len(PROMPTS), dtype=torch.long)
        )
        assert backbone.calls == 1
        separate = torch.cat([predictor.logits(prepared.pixels[None], c[None]) for c in conds])
        assert backbone.calls == 1 + len(PROMPTS)
    finally:
        backbone.remove()
    assert together.shape == (len(PROMPTS), 96, 96)
    assert (together - separate).abs().max().item() <= 1e-5
    # Different prompts really give different masks (the test is not vacuous).
    assert (together[0] - together[1]).abs().max().item() > 1e-3


def test_batch_of_images_maps_rows_to_their_image(predictor):
    images = torch.stack(
        [predictor.prepare_image(random_image(64, 64, seed=s)).pixels for s in (1, 2)]
    )
    conds = predictor.text_embeddings(PROMPTS[:3])
    index = torch.tensor([1, 0, 1])
    batched = predictor.logits(images, conds, index)
    for row, image_id in enumerate(index.tolist()):
        single = predictor.logits(images[image_id : image_id + 1], conds[row : row + 1])
        assert (batched[row] - single[0]).abs().max().item() <= 1e-5


def test_query_path_skips_blocks_after_the_deepest_extracted(predictor):
    blocks = predictor.model.clip.visual.transformer.resblocks
    last_used = predictor.config.last_query_block
    assert last_used < len(blocks) - 1, "the tiny variant must have a dead block to skip"
    dead = CallCounter(blocks[last_used + 1])
    used = CallCounter(blocks[last_used])
    try:
        predictor.segment(random_image(40, 30), ["a cat"])
        assert used.calls == 1 and dead.calls == 0
        predictor.support_embeddings(torch.zeros(1, 3, 96, 96))  # the visual path uses all
        assert dead.calls == 1
    finally:
        dead.remove()
        used.remove()


def test_padding_to_longest_prompt_equals_padding_to_77(predictor):
    trimmed = tokenize(PROMPTS)
    assert trimmed.shape[1] < 77
    full = torch.zeros(len(PROMPTS), 77, dtype=torch.long)
    full[:, : trimmed.shape[1]] = trimmed
    with torch.no_grad():
        a = predictor.model.embed_text(trimmed)
        b = predictor.model.embed_text(full)
    assert (a - b).abs().max().item() <= 1e-5


def test_text_cache_batches_misses_and_hits(predictor):
    encoder = CallCounter(predictor.model.clip.token_embedding)
    try:
        first = predictor.text_embeddings(["a cat", "a dog"])
        assert encoder.calls == 1
        again = predictor.text_embeddings(["a dog", "a cat", "a bird"])
        assert encoder.calls == 2  # only "a bird" was computed, in one call
    finally:
        encoder.remove()
    assert predictor.text_cache.hits == 2 and predictor.text_cache.misses == 3
    assert torch.equal(again[0], first[1]) and torch.equal(again[1], first[0])


def test_templates(predictor):
    raw = predictor.text_embeddings(["cat"], "none")[0]
    photo = predictor.text_embeddings(["cat"], "photo")[0]
    single = predictor.text_embeddings(["a photo of a cat."], "none")[0]
    assert torch.allclose(photo, single, atol=1e-6)
    assert not torch.allclose(raw, photo, atol=1e-4)
    ensemble = predictor.text_embeddings(["cat"], "ensemble")[0]
    each = predictor.text_embeddings([t.format("cat") for t in TRAINING_TEMPLATES], "none")
    assert torch.allclose(ensemble, each.mean(0), atol=1e-6)
    with pytest.raises(InvalidPromptError):
        predictor.text_embeddings(["cat"], "fancy")
    with pytest.raises(InvalidPromptError):
        predictor.text_embeddings(["   "])


def _support(seed: int):
    image = random_image(90, 60, seed=seed)
    mask = np.zeros((60, 90), dtype=bool)
    mask[10 + seed : 40, 20 : 70 - seed] = True
    return image, mask


def test_k_shot_is_the_mean_and_hybrid_mixes(predictor):
    one, two = _support(1), _support(2)
    k_shot = predictor.visual_embedding([one, two])
    separate = torch.stack([predictor.visual_embedding([one]), predictor.visual_embedding([two])])
    assert torch.allclose(k_shot, separate.mean(0), atol=1e-5)
    text = predictor.text_embeddings(["a cat"])[0]
    mixed = predictor.hybrid(text, k_shot, 0.3)
    assert torch.allclose(mixed, 0.3 * text + 0.7 * k_shot)
    with pytest.raises(InvalidPromptError):
        predictor.hybrid(text, k_shot, 1.5)


def test_visual_prompt_segments_at_original_size(predictor):
    visual = predictor.visual_embedding([_support(1)])
    result = predictor.segment(random_image(33, 77), conditionals=visual[None])
    assert result.masks.shape == (1, 77, 33)


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("rgba", lambda: encode(random_image(31, 17, mode="RGBA")), (17, 31)),
        ("one-pixel", lambda: encode(random_image(1, 1)), (1, 1)),
        ("very-wide", lambda: encode(random_image(10000, 50)), (50, 10000)),
        (
            "16-bit",
            lambda: encode(
                Image.fromarray(np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50)
            ),
            (30, 40),
        ),
    ],
)
def test_odd_images_come_back_at_their_own_size(predictor, name, data, size):
    result = predictor.segment(data(), ["a cat", "a dog"], soft=True)
    assert result.masks.shape == (2, *size) and result.masks.dtype == bool
    assert result.soft is not None and result.soft.shape == (2, *size)
    assert result.soft.dtype == np.uint8


def test_exif_rotated_jpeg_mask_has_the_displayed_size(predictor):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 80x40 is displayed 40x80
    data = encode(random_image(80, 40), "JPEG", exif=exif)
    result = predictor.segment(data, ["a cat"])
    assert result.masks.shape == (1, 80, 40)


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", encode(random_image(50, 50), "JPEG")[:200]]
)
def test_unreadable_bytes_raise_a_domain_error(predictor, data):
    with pytest.raises(ImageDecodeError):
        predictor.segment(data, ["a cat"])


def test_combine_modes_and_negatives(predictor):
    image = random_image(48, 48, seed=5)
    per_prompt = predictor.segment(image, PROMPTS[:3], threshold=0.5)
    union = predictor.segment(image, PROMPTS[:3], threshold=0.5, combine="union")
    inter = predictor.segment(image, PROMPTS[:3], threshold=0.5, combine="intersection")
    assert union.labels == ("union",) and union.masks.shape == (1, 48, 48)
    assert np.array_equal(union.masks[0], per_prompt.masks.any(0))
    assert np.array_equal(inter.masks[0], per_prompt.masks.all(0))
    with_neg = predictor.segment(image, PROMPTS[:1], negative_prompts=PROMPTS[1:2], threshold=0.5)
    pos = predictor.prepare_image(image)
    logits = predictor.logits(
        pos.pixels[None], predictor.text_embeddings(PROMPTS[:2]), torch.tensor([0, 0])
    )
    probs = probabilities_at_size(logits, pos.size).numpy()
    removed = (probs[1] > 0.5) & (probs[1] >= probs[0])
    assert np.array_equal(with_neg.masks[0], (probs[0] > 0.5) & ~removed)
    assert np.array_equal(per_prompt.masks[0], probs[0] > 0.5)


def test_no_prompt_is_an_error(predictor):
    with pytest.raises(InvalidPromptError):
        predictor.segment(random_image(10, 10), [])


def test_extreme_support_aspect_is_refused(predictor):
    mask = np.ones((10, 400), dtype=bool)
    with pytest.raises(InvalidMaskError, match="more than 16:1"):
        predictor.visual_embedding([(random_image(400, 10), mask)])


def test_support_mask_must_match_its_image(predictor):
    with pytest.raises(InvalidMaskError, match="same size"):
        predictor.visual_embedding([(random_image(40, 30), np.ones((20, 40), dtype=bool))])
    with pytest.raises(InvalidMaskError, match="empty"):
        predictor.visual_embedding([(random_image(40, 30), np.zeros((30, 40), dtype=bool))])


def test_segment_batch_mixes_requests_without_mixing_them_up(predictor):
    """Text, negative, visual, hybrid and union requests in one batch give what each gives
    alone; two requests on the same image share one backbone pass."""
    from clipseg_serve.model.inference.batch import SegmentRequest

    image_a, image_b = random_image(40, 30, seed=21), random_image(25, 50, seed=22)
    a, b = predictor.prepare_image(image_a), predictor.prepare_image(image_b)
    supports = torch.stack([predictor.prepare_support(*_support(1))])
    requests = [
        SegmentRequest(a.pixels, a.size, "a", prompts=["a cat", "a dog"], threshold=0.5),
        SegmentRequest(b.pixels, b.size, "b", prompts=["sky"], negative_prompts=["a cat"]),
        SegmentRequest(a.pixels, a.size, "a", supports=supports, threshold=0.5),
        SegmentRequest(b.pixels, b.size, "b", prompts=["mug"], supports=supports, text_weight=0.3),
        SegmentRequest(a.pixels, a.size, "a", prompts=["x", "y"], combine=Combine.UNION),
    ]
    requests = [dataclasses.replace(r, soft=True) for r in requests]
    backbone = CallCounter(predictor.model.clip.visual.conv1)
    try:
        together = predictor.segment_batch(requests)
        # One support-encoder pass for both visual requests' supports, then one backbone
        # pass over the 2 distinct query images (not the 5 requests).
        assert backbone.batch_sizes == [2, 2]
    finally:
        backbone.remove()
    for request, batched in zip(requests, together, strict=True):
        alone = predictor.segment_batch([request])[0]
        assert batched.labels == alone.labels
        assert batched.masks.shape == alone.masks.shape == (len(alone.labels), *request.size)
        assert np.abs(batched.scores - alone.scores).max() <= 1e-5
        assert np.abs(batched.soft.astype(int) - alone.soft.astype(int)).max() <= 1
        # Masks agree except where a probability sits within float noise of the threshold.
        assert (batched.masks != alone.masks).mean() <= 1e-3
    assert together[0].labels == ("a cat", "a dog") and together[2].labels == ("visual",)
    assert together[4].labels == ("union",)


def test_union_probabilities_are_the_max_over_prompts(predictor):
    image = random_image(32, 32, seed=3)
    each = predictor.segment(image, ["x", "y"], soft=True)
    union = predictor.segment(image, ["x", "y"], combine="union", soft=True)
    assert np.array_equal(union.soft[0], each.soft.max(0))
    assert union.scores[0] == each.scores.max()


def test_execute_skips_the_requests_it_is_told_to_drop(predictor, monkeypatch):
    """``keep`` is asked per request just before rendering; dropped ones are never rendered
    and come back as None, the others are unaffected."""
    from clipseg_serve.model.inference.batch import SegmentRequest, plan_batch

    prepared = predictor.prepare_image(random_image(30, 20, seed=4))
    requests = [
        SegmentRequest(prepared.pixels, prepared.size, "x", prompts=(p,)) for p in PROMPTS[:3]
    ]
    rendered: list[tuple[int, int]] = []
    original = predictor.engine.render_span

    def spy(rows, span):
        rendered.append(span.size)
        return original(rows, span)

    monkeypatch.setattr(predictor.engine, "render_span", spy)
    results = predictor.execute(plan_batch(requests), keep=lambda i: i != 1)
    assert results[1] is None and len(rendered) == 2
    alone = predictor.segment_batch([requests[2]])[0]
    assert np.array_equal(results[2].masks, alone.masks)


def test_requests_are_frozen_and_validated_when_built(predictor):
    from clipseg_serve.model.inference.batch import SegmentRequest

    prepared = predictor.prepare_image(random_image(8, 8))
    request = SegmentRequest(prepared.pixels, prepared.size, "k", prompts=["a"])
    assert request.prompts == ("a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.prompts = ("b",)  # type: ignore[misc]
    with pytest.raises(InvalidPromptError):
        SegmentRequest(prepared.pixels, prepared.size, "k")  # nothing to segment
    with pytest.raises(InvalidPromptError):
        SegmentRequest(prepared.pixels, prepared.size, "k", prompts=["a"], text_weight=0.3)
    with pytest.raises(ValueError):
        SegmentRequest(prepared.pixels, prepared.size, "k", prompts=["a"], threshold=1.5)


def test_plan_deduplicates_images_and_phrases():
    from clipseg_serve.model.inference.batch import SegmentRequest as R
    from clipseg_serve.model.inference.batch import TextRow, VisualRow, plan_batch
    from clipseg_serve.model.network.text import Template

    pixels = torch.zeros(3, 8, 8)
    supports = torch.zeros(2, 3, 8, 8)
    plan = plan_batch(
        [
            R(pixels, (4, 4), "a", prompts=("cat", "dog"), negative_prompts=("sky",)),
            R(pixels, (4, 4), "a", prompts=("cat",)),
            R(pixels, (6, 6), "b", prompts=("mug",), supports=supports, text_weight=0.2),
        ]
    )
    assert len(plan.images) == 2 and plan.row_image == (0, 0, 0, 0, 1)
    assert plan.phrases == {Template.NONE: ("cat", "dog", "sky", "mug")}
    none = Template.NONE
    assert plan.rows == (
        TextRow(none, "cat"),
        TextRow(none, "dog"),
        TextRow(none, "sky"),  # negatives come after the request's positives
        TextRow(none, "cat"),
        VisualRow(0, "mug", none, 0.2),  # a hybrid: one row, mixed with its phrase
    )
    assert [(s.start, s.positives, s.negatives) for s in plan.spans] == [
        (0, 2, 1),
        (3, 1, 0),
        (4, 1, 0),
    ]
