"""model.masks.render: banded mask rendering equals the full-size reference, in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_serve.model.codecs.rle import encode_rle, encode_rle_runs, mask_bbox
from clipseg_serve.model.masks import render
from clipseg_serve.model.masks.postprocess import (
    Combine,
    combine_masks,
    mask_scores,
    probabilities_at_size,
)
from clipseg_serve.model.masks.render import _or_rows, _Outputs, pack_bits, render_masks

SIZES = [(480, 640), (7, 3), (1, 1), (1000, 37), (353, 351), (352, 352), (100, 2000)]


def reference(logits, size, threshold, combine, negative):
    """The full-size path: probabilities_at_size + combine_masks (the evaluation's order)."""
    probs = probabilities_at_size(logits, size)
    neg = probabilities_at_size(negative, size) if negative is not None else None
    masks = combine_masks(probs, threshold, combine, negative_probs=neg)
    if combine is Combine.UNION:
        probs = probs.amax(0, keepdim=True)
    elif combine is Combine.INTERSECTION:
        probs = probs.amin(0, keepdim=True)
    return masks, probs


def unpack(rendered, width):
    return np.unpackbits(rendered.packed.cpu().numpy(), axis=-1, count=width).astype(bool)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("combine", list(Combine))
def test_one_band_is_exactly_the_reference(size, combine):
    gen = torch.Generator().manual_seed(hash((size, combine.value)) % 2**31)
    logits = torch.randn(3, 352, 352, generator=gen) * 3
    negative = torch.randn(2, 352, 352, generator=gen) * 3
    rendered = render_masks(logits, size, 0.5, combine, negative, soft=True)
    masks, probs = reference(logits, size, 0.5, combine, negative)
    assert np.array_equal(unpack(rendered, size[1]), masks.numpy())
    assert torch.equal(rendered.scores, mask_scores(probs))
    assert rendered.areas.tolist() == masks.sum((1, 2)).tolist()
    assert rendered.boxes.tolist() == [mask_bbox(m) for m in masks.numpy()]
    expected_soft = np.rint(probs.numpy().astype(np.float64) * 255)
    assert np.abs(rendered.soft.numpy() - expected_soft).max() <= 1


@pytest.mark.parametrize("size", [(480, 640), (1000, 37), (2000, 100), (353, 351)])
@pytest.mark.parametrize("combine", list(Combine))
def test_many_bands_agree_with_the_reference_to_float_rounding(size, combine):
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 352, 352, generator=gen) * 3
    negative = torch.randn(1, 352, 352, generator=gen) * 3
    banded = render_masks(logits, size, 0.5, combine, negative, soft=True, band_elements=5000)
    masks, probs = reference(logits, size, 0.5, combine, negative)
    assert (banded.scores - mask_scores(probs)).abs().max() <= 1e-6
    # A pixel may flip only where its probability is within rounding of the threshold.
    flipped = unpack(banded, size[1]) != masks.numpy()
    near = (probs - 0.5).abs().numpy() <= 1e-6
    if combine is Combine.NONE:
        assert not (flipped & ~near).any()
    assert flipped.mean() <= 1e-4
    got = banded.soft.numpy().astype(int)
    assert np.abs(got - np.rint(probs.numpy().astype(np.float64) * 255)).max() <= 1
    assert banded.boxes.tolist() == [mask_bbox(m) for m in unpack(banded, size[1])]


def test_row_weights_match_pytorch_to_one_rounding():
    for source, height in [(352, 480), (352, 7), (22, 4000), (352, 1080), (5, 13), (352, 351)]:
        probs = torch.rand(1, source, 6)
        first, second, weight = render._row_weights(source, height, torch.device("cpu"))
        mine = torch.lerp(probs[:, first], probs[:, second], weight.view(1, -1, 1))
        theirs = F.interpolate(probs[:, None], (height, 6), mode="bilinear", align_corners=False)
        assert (mine - theirs[:, 0]).abs().max() <= 2.5e-7, (source, height)


def test_memory_is_bounded_by_the_band(monkeypatch):
    """No interpolation ever produces more than one band of floats, whatever the size."""
    sizes: list[int] = []
    original = F.interpolate

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        sizes.append(out.numel())
        return out

    monkeypatch.setattr(render.F, "interpolate", spy)
    logits = torch.randn(4, 352, 352)
    budget = 200_000
    rendered = render_masks(
        logits, (3000, 2000), 0.5, negative_logits=logits[:2], band_elements=budget
    )
    assert rendered.packed.shape == (4, 3000, 250) and rendered.packed.dtype == torch.uint8
    assert len(sizes) > 10 and max(sizes) <= budget  # the full maps would be 36M floats


def test_bands_reuse_one_buffer_instead_of_allocating_each():
    """Every band is written into the same storage: per-band allocations let glibc scatter
    them (several GB of RSS for two 16-prompt 7000x7000 requests)."""
    probs = torch.rand(3, 352, 352)
    pointers = {band.data_ptr() for _, band in render._bands(probs, 2000, 1500, 300_000)}
    assert len(pointers) == 1


def test_packing_is_numpy_packbits_and_soft_is_optional():
    logits = torch.full((1, 4, 4), -20.0)
    logits[0, 1, 2] = 20.0
    rendered = render_masks(logits, (4, 11), 0.5)
    mask = unpack(rendered, 11)[0]
    assert rendered.soft is None
    assert np.array_equal(rendered.packed.numpy()[0], np.packbits(mask, axis=-1))
    assert rendered.areas.item() == mask.sum() > 0


def test_empty_masks_have_zero_boxes_and_bad_input_is_refused():
    rendered = render_masks(torch.full((2, 8, 8), -30.0), (5, 9), 0.5)
    assert rendered.boxes.tolist() == [[0, 0, 0, 0]] * 2 and rendered.areas.tolist() == [0, 0]
    with pytest.raises(ValueError):
        render_masks(torch.zeros(0, 8, 8), (5, 5), 0.5)
    with pytest.raises(ValueError):
        render_masks(torch.zeros(1, 8, 8), (0, 5), 0.5)


@pytest.mark.gpu
def test_cuda_rendering_matches_the_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    logits = torch.randn(3, 352, 352) * 3
    cpu = render_masks(logits, (1080, 1920), 0.5, Combine.NONE, soft=True)
    gpu = render_masks(logits.cuda(), (1080, 1920), 0.5, Combine.NONE, soft=True, runs=True)
    assert (gpu.scores.cpu() - cpu.scores).abs().max() <= 1e-6
    masks = unpack(gpu, 1920)
    assert (masks != unpack(cpu, 1920)).mean() <= 1e-5
    # The tensor-only paths (packing, flags, device-side RLE runs) describe CUDA's masks.
    assert gpu.runs is not None
    for i, runs in enumerate(gpu.runs):
        assert encode_rle_runs(runs.cpu().numpy(), (1080, 1920)) == encode_rle(masks[i])
        assert int(gpu.areas[i]) == int(masks[i].sum())
        assert gpu.boxes[i].tolist() == mask_bbox(masks[i])


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 7), (1, 5, 8), (3, 17, 13), (1, 2, 1000)])
def test_the_cuda_packing_and_flags_equal_numpys(shape):
    """The tensor-only paths CUDA takes (packing, OR over rows) checked on the CPU."""
    masks = torch.rand(shape) < 0.5
    expected = np.packbits(masks.numpy(), axis=-1)
    packed = pack_bits(masks)
    assert np.array_equal(packed.numpy(), expected)
    assert np.array_equal(_or_rows(packed).numpy(), np.bitwise_or.reduce(expected, axis=1))
    areas = _Outputs._count(packed, masks)
    assert areas.tolist() == masks.sum(dim=(1, 2)).tolist()
