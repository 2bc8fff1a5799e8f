"""Device-side RLE run lengths equal the host encoder and pycocotools, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pycocotools import mask as coco

from clipseg_serve.model.codecs.rle import encode_rle, encode_rle_runs
from clipseg_serve.model.inference.batch import SegmentRequest
from clipseg_serve.model.masks.render import render_masks
from clipseg_serve.model.masks.runs import ColumnRuns

SHAPES = [(1, 1), (1, 9), (9, 1), (1, 100), (100, 1), (17, 13), (64, 33), (31, 128)]


def _masks(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """bool [2, H, W] of one kind (two masks, to exercise the per-mask split)."""
    height, width = shape
    if kind == "empty":
        return np.zeros((2, height, width), bool)
    if kind == "full":
        return np.ones((2, height, width), bool)
    if kind == "random":
        return rng.random((2, height, width)) < 0.5
    masks = np.zeros((2, height, width), bool)  # a block, and its complement
    masks[0, height // 4 : height // 2 + 1, width // 3 : max(width - 1, 1)] = True
    masks[1] = ~masks[0]
    return masks


def _device_runs(masks: np.ndarray, band: int) -> list[np.ndarray]:
    count, height, width = masks.shape
    runs = ColumnRuns(count, height, width)
    packed = torch.from_numpy(np.packbits(masks, axis=-1))
    for start in range(0, height, band):
        runs.add(packed[:, start : start + band])
    return [r.numpy() for r in runs.result()]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["empty", "full", "random", "block"])
@pytest.mark.parametrize("band", [1, 2, 5, 10_000])
def test_device_runs_equal_the_host_encoder_and_pycocotools(shape, kind, band):
    masks = _masks(kind, shape, np.random.default_rng(sum(shape)))
    for mask, runs in zip(masks, _device_runs(masks, band), strict=True):
        ours = encode_rle_runs(runs, shape)
        assert ours == encode_rle(mask)
        expected = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["counts"].encode("ascii") == expected["counts"]
        assert ours["size"] == list(expected["size"])


@pytest.mark.parametrize("size", [(1080, 1920), (7, 1), (1, 7), (333, 517)])
@pytest.mark.parametrize("band_elements", [1 << 22, 4096])
def test_rendered_runs_describe_the_rendered_masks(size, band_elements):
    logits = torch.randn(3, 22, 22).repeat_interleave(16, 1).repeat_interleave(16, 2)
    rendered = render_masks(logits, size, 0.5, runs=True, band_elements=band_elements)
    assert rendered.runs is not None
    packed = rendered.packed.numpy()
    for i, runs in enumerate(rendered.runs):
        mask = np.unpackbits(packed[i], axis=-1, count=size[1]).view(bool)
        assert encode_rle_runs(runs.numpy(), size) == encode_rle(mask)
        assert int(runs[1::2].sum()) == int(rendered.areas[i])


def test_runs_are_off_unless_asked():
    assert render_masks(torch.zeros(1, 8, 8), (16, 16), 0.5).runs is None


def test_a_request_asking_for_runs_gets_the_same_rle(predictor):
    pixels = torch.randn(3, predictor.config.input_size, predictor.config.input_size)
    base = dict(pixels=pixels, size=(45, 70), image_key="x", prompts=("a", "b"))
    plain, with_runs = predictor.segment_batch(
        [SegmentRequest(**base), SegmentRequest(**base, runs=True)]
    )
    assert plain.runs is None and with_runs.runs is not None
    for i, runs in enumerate(with_runs.runs):
        assert encode_rle_runs(runs, (45, 70)) == encode_rle(plain.mask(i))
