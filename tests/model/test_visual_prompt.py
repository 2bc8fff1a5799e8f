"""Tests of the visual prompt engineering (crop + blur + highlight, crop_blur_highlight352)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipseg_serve.model.errors import InvalidMaskError
from clipseg_serve.model.imaging.visual_prompt import (
    engineer_visual_prompt,
    engineer_visual_prompts,
    gaussian_blur,
    gaussian_kernel1d,
    mask_box_with_context,
    rescale_support,
)

# ----------------------------------------------------------------- numpy reference blur


def _np_kernel(taps: int = 15, sigma: float = 3.0) -> np.ndarray:
    x = np.arange(taps, dtype=np.float64) - (taps - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _reflect101(p: int, n: int) -> int:
    """OpenCV's borderInterpolate(BORDER_REFLECT_101), written out by hand."""
    if n == 1:
        return 0
    while p < 0 or p >= n:
        p = -p if p < 0 else 2 * (n - 1) - p
    return p


def _np_blur_axis(a: np.ndarray, axis: int, k: np.ndarray) -> np.ndarray:
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    half = len(k) // 2
    idx = [_reflect101(p, n) for p in range(-half, n + half)]
    padded = a[..., idx]
    out = np.zeros(a.shape, dtype=np.float64)
    for i in range(n):
        out[..., i] = (padded[..., i : i + len(k)] * k).sum(-1)
    return np.moveaxis(out, -1, axis)


def _np_blur(img_chw: np.ndarray, taps: int = 15, sigma: float = 3.0) -> np.ndarray:
    k = _np_kernel(taps, sigma)
    return _np_blur_axis(_np_blur_axis(img_chw.astype(np.float64), 2, k), 1, k)


def test_reflect101_helper_is_the_documented_border() -> None:
    # dcb|abcd|cba on a 4-long axis, and numpy's "reflect" agrees even for long pads.
    assert [_reflect101(p, 4) for p in range(-3, 7)] == [3, 2, 1, 0, 1, 2, 3, 2, 1, 0]
    a = np.arange(3)
    assert list(np.pad(a, 7, mode="reflect")) == [a[_reflect101(p, 3)] for p in range(-7, 10)]


def test_kernel_is_normalised_gaussian() -> None:
    k = gaussian_kernel1d(15, 3.0, dtype=torch.float64)
    np.testing.assert_allclose(k.numpy(), _np_kernel(), rtol=0, atol=1e-15)
    assert k.shape == (15,)
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert k[7] == k.max() and torch.equal(k, k.flip(0))
    with pytest.raises(ValueError):
        gaussian_kernel1d(14, 3.0)
    with pytest.raises(ValueError):
        gaussian_kernel1d(15, 0.0)


@pytest.mark.parametrize("shape", [(2, 9, 12), (1, 20, 8), (3, 5, 7), (1, 1, 6), (2, 3, 1)])
def test_gaussian_blur_matches_numpy_reference(shape: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(shape, generator=gen, dtype=torch.float64)
    expected = _np_blur(img.numpy())
    out = gaussian_blur(img, 15, 3.0)
    assert out.shape == img.shape and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)
    # float32 path agrees too, and a batch dimension is handled per item.
    out32 = gaussian_blur(img.float().unsqueeze(0).repeat(2, 1, 1, 1))
    assert out32.shape == (2, *shape) and out32.dtype == torch.float32
    np.testing.assert_allclose(out32[1].numpy(), expected, rtol=0, atol=1e-5)


def test_gaussian_blur_border_uses_reflect101_not_zero_or_replicate() -> None:
    # A hot pixel at column 1. Reflect-101 (dcb|abcd) mirrors column 1 to column -1 and never
    # repeats column 0, so out[j] = k[8 - j] + k[6 - j] (second term for j <= 6). Zero or
    # replicate padding would give out[0] = k[8]; edge-repeating reflect k[8] + k[5].
    k = _np_kernel()
    img = torch.zeros(1, 10, 10, dtype=torch.float64)
    img[0, :, 1] = 1.0  # rows constant -> a 1-D check along x
    out = gaussian_blur(img)[0, 5]
    for j in range(8):
        expected = k[8 - j] + (k[6 - j] if j <= 6 else 0.0)
        assert out[j].item() == pytest.approx(expected, abs=1e-15)
    assert out[0].item() == pytest.approx(2 * k[6], abs=1e-15)
    # a hot pixel at column 0 is not doubled: out[j] = k[7 - j]
    img0 = torch.zeros(1, 10, 10, dtype=torch.float64)
    img0[0, :, 0] = 1.0
    out0 = gaussian_blur(img0)[0, 5]
    for j in range(8):
        assert out0[j].item() == pytest.approx(k[7 - j], abs=1e-15)


def test_gaussian_blur_of_constant_is_constant_and_rejects_ints() -> None:
    img = torch.full((3, 4, 30), -1.25)
    torch.testing.assert_close(gaussian_blur(img), img, rtol=0, atol=1e-6)
    with pytest.raises(TypeError):
        gaussian_blur(torch.zeros(3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError):
        gaussian_blur(torch.zeros(8, 8))


@pytest.mark.parametrize("hw", [(40, 57), (9, 9), (5, 7), (1, 9), (3, 3), (352, 200)])
def test_gaussian_blur_matches_opencv(hw: tuple[int, int]) -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(1)
    img_hwc = rng.normal(size=(*hw, 3)).astype(np.float32)
    expected = cv2.GaussianBlur(img_hwc, (15, 15), 3)
    out = gaussian_blur(torch.from_numpy(img_hwc).permute(2, 0, 1)).permute(1, 2, 0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-6)


# ----------------------------------------------------------------- box


def test_mask_box_with_context_hand_computed() -> None:
    mask = torch.zeros(352, 352, dtype=torch.bool)
    mask[20:167, 100:184] = True
    # x: ext 84 -> margin 8.4: int(91.6)=91, int(192.4)=192
    # y: ext 147 -> margin 14.7: int(5.3)=5, int(181.7)=181
    assert mask_box_with_context(mask) == (91, 5, 192, 181)
    assert mask_box_with_context(mask, context=0.0) == (100, 20, 184, 167)
    # a single pixel: margin 0.1 truncates the low side down and the high side down too
    one = torch.zeros(8, 8, dtype=torch.bool)
    one[3, 5] = True
    assert mask_box_with_context(one) == (4, 2, 6, 4)
    # numeric 0/1 masks work the same
    assert mask_box_with_context(mask.float()) == (91, 5, 192, 181)


def test_mask_box_clamps_x_by_width_and_y_by_height() -> None:
    # Non-square 352x704 mask near the right and bottom edges. The official code clamped x by
    # the height (352), which would give x1 = 352 < x0 here.
    mask = torch.zeros(352, 704, dtype=torch.bool)
    mask[300:350, 600:700] = True
    # x: ext 100 -> [590, min(704, 710)=704); y: ext 50 -> [295, min(352, 355)=352)
    assert mask_box_with_context(mask) == (590, 295, 704, 352)
    tall = torch.zeros(704, 352, dtype=torch.bool)
    tall[600:700, 300:350] = True
    assert mask_box_with_context(tall) == (295, 590, 352, 704)


def test_mask_box_errors() -> None:
    with pytest.raises(InvalidMaskError, match="empty"):
        mask_box_with_context(torch.zeros(5, 5, dtype=torch.bool))
    with pytest.raises(InvalidMaskError, match="2-D"):
        mask_box_with_context(torch.ones(1, 5, 5, dtype=torch.bool))


# ----------------------------------------------------------------- rescale


def test_rescale_support_shapes_and_rounding() -> None:
    img = torch.zeros(3, 300, 600)
    mask = torch.zeros(300, 600, dtype=torch.bool)
    mask[100:200, 560:600] = True
    out_img, out_mask = rescale_support(img, mask, 352)
    assert out_img.shape == (3, 352, 704) and out_mask.shape == (352, 704)
    assert out_mask.dtype == torch.bool
    # 601 * 352 / 300 = 705.17 -> 705; 67 * 352 / 64 = 368.5 -> 369 (halves up)
    assert rescale_support(torch.zeros(3, 300, 601), torch.ones(300, 601, dtype=torch.bool))[
        1
    ].shape == (352, 705)
    assert rescale_support(torch.zeros(3, 67, 64), torch.ones(67, 64, dtype=torch.bool))[
        1
    ].shape == (369, 352)
    # already at size: returned untouched
    same = torch.randn(3, 352, 400)
    m = torch.ones(352, 400, dtype=torch.bool)
    assert rescale_support(same, m)[0] is same


def test_rescale_support_exact_upscale_by_two() -> None:
    img = torch.arange(2 * 3.0).reshape(1, 2, 3).repeat(3, 1, 1)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    _, out_mask = rescale_support(img, mask, 4)
    assert out_mask.shape == (4, 6)
    expected = mask.repeat_interleave(2, 0).repeat_interleave(2, 1)
    assert torch.equal(out_mask, expected)


def test_rescale_keeps_a_tiny_mask_that_nearest_would_erase() -> None:
    # 1000 -> 352 nearest-exact samples source columns 500 and 503 but not 501: a single
    # pixel at (500, 501) is erased by the plain rescale and must be mapped back instead.
    mask = torch.zeros(1000, 1000, dtype=torch.bool)
    mask[500, 501] = True
    plain = F.interpolate(mask[None, None].byte(), size=(352, 352), mode="nearest-exact")
    assert not plain.any()
    _, out_mask = rescale_support(torch.zeros(3, 1000, 1000), mask, 352)
    # (500 + 0.5) * 0.352 = 176.18 -> 176; (501 + 0.5) * 0.352 = 176.53 -> 176
    assert out_mask.nonzero().tolist() == [[176, 176]]
    # and the full pipeline accepts it instead of raising "empty"
    out = engineer_visual_prompt(torch.ones(3, 1000, 1000), mask)
    assert out.shape == (3, 352, 352)


# ----------------------------------------------------------------- full pipeline


def test_hand_built_constant_image() -> None:
    """Known mask, box, background value: checks crop, margin, padding, blur and 0.1 factor."""
    v = torch.tensor([0.5, -1.0, 2.0])
    img = v[:, None, None].expand(3, 352, 352).clone()
    mask = torch.zeros(352, 352, dtype=torch.bool)
    mask[20:167, 100:184] = True
    # Box (see test above): x [91, 192) -> w 101, y [5, 181) -> h 176.
    # h > w: pad left (176 - 101) // 2 = 37, right 38 -> 176 x 176 square, content cols
    # [37, 138). Nearest 176 -> 352 is an exact x2: output j <- square floor(j / 2).
    # Content output cols [74, 276). Object: rows [20,167) -> crop [15,162) -> out [30,324);
    # cols [100,184) -> crop [9,93) -> square [46,130) -> out [92,260).
    out = engineer_visual_prompt(img, mask)
    assert out.shape == (3, 352, 352) and out.dtype == torch.float32

    expected = torch.zeros(3, 352, 352)
    expected[:, :, 74:276] = 0.1 * v[:, None, None]  # blur of a constant is the constant
    expected[:, 30:324, 92:260] = v[:, None, None]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # padding exactly zero, object exactly v
    assert torch.equal(out[:, :, :74], torch.zeros(3, 352, 74))
    assert torch.equal(out[:, :, 276:], torch.zeros(3, 352, 76))
    assert torch.equal(out[:, 30:324, 92:260], expected[:, 30:324, 92:260])
    # the background value is 0.1 * v, not 0.5 * v (other modes) or v
    torch.testing.assert_close(out[:, 100, 80], 0.1 * v, rtol=0, atol=1e-6)


def test_hand_built_nearest_mapping_and_blur_values() -> None:
    """8x8 image, size 8: crop 3x3, padded 3x3, nearest 3 -> 8 maps 0,0,0,1,1,1,2,2."""
    gen = torch.Generator().manual_seed(3)
    img = torch.randn(3, 8, 8, generator=gen)
    mask = torch.zeros(8, 8)
    mask[3:5, 3:5] = 1.0
    # ext 2, margin 0.2: x0 = int(2.8) = 2, x1 = int(5.2) = 5 -> box (2, 2, 5, 5)
    assert mask_box_with_context(mask) == (2, 2, 5, 5)
    out = engineer_visual_prompt(img, mask, size=8)

    blur = torch.from_numpy(_np_blur(img.numpy())).float()
    crop_mask = mask[2:5, 2:5].bool()
    crop = torch.where(crop_mask, img[:, 2:5, 2:5], 0.1 * blur[:, 2:5, 2:5])
    m = [0, 0, 0, 1, 1, 1, 2, 2]  # torch "nearest": floor(j * 3 / 8); nearest-exact differs
    expected = crop[:, m][:, :, m]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    # object pixels are copied exactly; a background pixel is 0.1 x the hand-blurred value
    assert torch.equal(out[:, 5, 5], img[:, 3, 3])
    assert torch.equal(out[:, 6, 6], img[:, 4, 4])
    np.testing.assert_allclose(out[:, 0, 0].numpy(), 0.1 * blur[:, 2, 2].numpy(), atol=1e-6)


def test_non_square_mask_near_right_edge() -> None:
    # 176x352 -> exact x2 upscale to 352x704. Mask rows [50,100), cols [330,352) -> scaled
    # rows [100,200), cols [660,704). Box: x ext 44 -> [int(655.6)=655, min(704, 708.4)=704),
    # y ext 100 -> [90, 210). Crop 120 x 49; pad left (120-49)//2 = 35, right 36.
    v = torch.tensor([1.0, 2.0, -3.0])
    img = v[:, None, None].expand(3, 176, 352).clone()
    mask = torch.zeros(176, 352, dtype=torch.bool)
    mask[50:100, 330:352] = True
    _, scaled = rescale_support(img, mask)
    assert mask_box_with_context(scaled) == (655, 90, 704, 210)

    out = engineer_visual_prompt(img, mask)
    src = [math.floor(j * 120 / 352) for j in range(352)]  # nearest 120 -> 352
    content_cols = torch.tensor([35 <= s < 35 + 49 for s in src])
    # object in the square: rows [10, 110), cols 35 + [5, 49)
    obj_rows = torch.tensor([10 <= s < 110 for s in src])
    obj_cols = torch.tensor([40 <= s < 84 for s in src])
    expected = torch.zeros(3, 352, 352)
    expected[:, :, content_cols] = 0.1 * v[:, None, None]
    expected[:, obj_rows[:, None] & obj_cols[None, :]] = v[:, None]
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert out[:, :, ~content_cols].abs().max() == 0


def test_matches_pipeline_composed_from_documented_steps() -> None:
    gen = torch.Generator().manual_seed(7)
    img = torch.randn(3, 200, 150, generator=gen)
    mask = torch.zeros(200, 150, dtype=torch.bool)
    mask[40:90, 10:60] = True
    mask[120:130, 100:140] = True
    scaled_img, scaled_mask = rescale_support(img, mask, 352)
    assert scaled_img.shape == (3, 469, 352)  # 200 * 352 / 150 = 469.33
    blur = gaussian_blur(scaled_img)
    blended = scaled_img * scaled_mask + 0.1 * blur * (~scaled_mask)
    x0, y0, x1, y1 = mask_box_with_context(scaled_mask)
    crop = blended[:, y0:y1, x0:x1]
    h, w = crop.shape[1:]
    pad = (
        (0, 0, (w - h) // 2, w - h - (w - h) // 2)
        if w > h
        else ((h - w) // 2, h - w - (h - w) // 2, 0, 0)
    )
    expected = F.interpolate(F.pad(crop, pad)[None], size=(352, 352))[0]
    out = engineer_visual_prompt(img, mask)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hw", [(5, 7), (1000, 20), (352, 352), (9, 1)])
def test_output_shape_and_dtype_for_odd_sizes(hw: tuple[int, int]) -> None:
    img = torch.randn(3, *hw, dtype=torch.float64)
    mask = torch.zeros(hw, dtype=torch.uint8)
    mask[hw[0] // 2, hw[1] // 2] = 1
    out = engineer_visual_prompt(img, mask)
    assert out.shape == (3, 352, 352)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().sum() > 0


def test_custom_parameters_are_used() -> None:
    img = torch.full((3, 16, 16), 2.0)
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[4:12, 4:12] = True
    out = engineer_visual_prompt(img, mask, size=16, background_factor=0.5, context=0.25)
    # box grows by 2 on each side -> [2, 14) square, no padding, 12 -> 16 nearest
    assert mask_box_with_context(mask, 0.25) == (2, 2, 14, 14)
    assert out.shape == (3, 16, 16)
    torch.testing.assert_close(out[:, 0, 0], torch.full((3,), 1.0))
    torch.testing.assert_close(out[:, 8, 8], torch.full((3,), 2.0))


# ----------------------------------------------------------------- errors & batch


def test_invalid_masks_raise() -> None:
    img = torch.zeros(3, 10, 12)
    with pytest.raises(InvalidMaskError, match="empty"):
        engineer_visual_prompt(img, torch.zeros(10, 12, dtype=torch.bool))
    with pytest.raises(InvalidMaskError, match="does not match"):
        engineer_visual_prompt(img, torch.ones(12, 10, dtype=torch.bool))
    with pytest.raises(InvalidMaskError, match="2-D"):
        engineer_visual_prompt(img, torch.ones(1, 10, 12, dtype=torch.bool))
    nan_mask = torch.ones(10, 12)
    nan_mask[0, 0] = float("nan")
    with pytest.raises(InvalidMaskError, match="NaN"):
        engineer_visual_prompt(img, nan_mask)
    # InvalidMaskError is a ValueError for plain library users
    assert issubclass(InvalidMaskError, ValueError)
    with pytest.raises(ValueError):
        engineer_visual_prompt(torch.zeros(1, 10, 12), torch.ones(10, 12))


def test_engineer_visual_prompts_stacks_and_names_bad_example() -> None:
    imgs = [torch.randn(3, 40, 60), torch.randn(3, 352, 352)]
    masks = [torch.ones(40, 60, dtype=torch.bool), torch.zeros(352, 352)]
    masks[1][100:150, 100:200] = 1
    out = engineer_visual_prompts(imgs, masks)
    assert out.shape == (2, 3, 352, 352) and out.dtype == torch.float32
    torch.testing.assert_close(out[1], engineer_visual_prompt(imgs[1], masks[1]))
    with pytest.raises(InvalidMaskError, match="support example 1"):
        engineer_visual_prompts(imgs, [masks[0], torch.zeros(352, 352)])
    with pytest.raises(InvalidMaskError, match="2 support images but 1 masks"):
        engineer_visual_prompts(imgs, masks[:1])
    with pytest.raises(ValueError):
        engineer_visual_prompts([], [])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    gen = torch.Generator().manual_seed(11)
    img = torch.randn(3, 240, 320, generator=gen)
    mask = torch.zeros(240, 320, dtype=torch.bool)
    mask[50:150, 200:300] = True
    cpu = engineer_visual_prompt(img, mask)
    gpu = engineer_visual_prompt(img.cuda(), mask)  # mask moved to the image's device
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-4)
