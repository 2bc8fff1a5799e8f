"""Visual prompt engineering for support images: CLIPSeg's "crop + blur + highlight".

CLIPSeg's visual-prompt weights were trained with the support image pre-processed as in
the official repository's ``crop_blur_highlight352`` mode (``img_preprocess`` with
``blur=3, bg_fac=0.1, center_context=0.1, image_size=352``). This module reimplements that
recipe in pure torch (device-agnostic, no OpenCV), on an ImageNet-*normalised* image:

1. **Rescale** so the shorter side is ``size`` (352), keeping the aspect ratio: the image
   bilinearly (``align_corners=False``, ``antialias=True`` only when shrinking, so
   downscaled photos do not alias; antialias has no effect on upscaling), the mask with
   ``nearest-exact`` (samples at pixel centres, the same positions the bilinear image
   uses, so mask and image stay aligned). Training support images were 352 squares, so
   the blur's sigma is meant in pixels of that scale. The longer side is rounded to the
   nearest integer, halves up. If the rescale erases a tiny mask entirely, each original
   mask pixel is mapped to the rescaled pixel containing its centre instead (never raises
   for a mask that was non-empty before rescaling).
2. **Blur**: ``background = gaussian_blur(img, 15, 3)``, equal to OpenCV's
   ``cv2.GaussianBlur(img_hwc, (15, 15), 3)`` with its default ``BORDER_REFLECT_101``.
3. **Highlight**: ``img * mask + 0.1 * background * (1 - mask)``, so the background
   fades towards the dataset mean colour (0 in normalised space).
4. **Crop** to the mask's bounding box grown by 10% of its extent on each side
   (:func:`mask_box_with_context`). Unlike the official code, x is clamped by the width
   and y by the height (the official code swaps them, which only works for squares).
5. **Pad** to a square with zeros (the mean colour), centred.
6. **Resize** to ``size x size`` with torch's default ``nearest`` interpolation, as the
   official code did.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.errors import InvalidMaskError
from clipseg_serve.model.imaging.transforms import normalize_tensor

__all__ = [
    "BACKGROUND_FACTOR",
    "BLUR_KERNEL_SIZE",
    "BLUR_SIGMA",
    "CONTEXT",
    "PROMPT_SIZE",
    "engineer_rescaled_support",
    "engineer_support_image",
    "engineer_visual_prompt",
    "engineer_visual_prompts",
    "gaussian_blur",
    "gaussian_kernel1d",
    "mask_box_with_context",
    "rescale_support",
    "rescale_support_image",
    "rescale_support_mask",
    "support_pixels",
    "support_shape",
]

#: Side of the engineered support image (the training resolution of the support images).
PROMPT_SIZE = 352
#: Taps of the background blur (OpenCV ``ksize=(15, 15)`` in the official code).
BLUR_KERNEL_SIZE = 15
#: Standard deviation of the background blur, in pixels of the rescaled image.
BLUR_SIGMA = 3.0
#: Weight of the blurred background (``bg_fac`` in the official code).
BACKGROUND_FACTOR = 0.1
#: Margin added around the mask's box on each side, as a fraction of the box's extent.
CONTEXT = 0.1


# --------------------------------------------------------------------------- blur


def gaussian_kernel1d(
    kernel_size: int = BLUR_KERNEL_SIZE,
    sigma: float = BLUR_SIGMA,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Normalised 1-D Gaussian, as OpenCV's ``getGaussianKernel(kernel_size, sigma)``.

    Returns a ``[kernel_size]`` tensor of ``dtype`` summing to 1, with tap ``i`` proportional
    to ``exp(-(i - (kernel_size - 1) / 2)**2 / (2 sigma**2))``; computed in float64 and
    cast. ``kernel_size`` must be a positive odd integer and ``sigma`` positive.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
    if not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive finite number, got {sigma}")
    offsets = torch.arange(kernel_size, dtype=torch.float64) - (kernel_size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2.0 * sigma * sigma))
    kernel = kernel / kernel.sum()
    return kernel.to(dtype=dtype, device=device)


def _reflect101_indices(start: int, stop: int, length: int, device: torch.device) -> torch.Tensor:
    """Source indices of positions ``start..stop-1`` of an axis of ``length`` under reflect-101.

    Reflect-101 (``dcb|abcd|cba``, OpenCV ``BORDER_REFLECT_101``, numpy ``mode="reflect"``)
    is applied repeatedly, as OpenCV does, so it is defined for any padding even on axes
    shorter than the padding; an axis of length 1 degenerates to replication.
    """
    pos = torch.arange(start, stop, device=device)
    if length == 1:
        return torch.zeros_like(pos)
    period = 2 * (length - 1)
    pos = torch.remainder(pos, period)
    return torch.where(pos >= length, period - pos, pos)


def _blur_window(
    img: torch.Tensor,
    kernel: torch.Tensor,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> torch.Tensor:
    """Rows ``rows[0]:rows[1]`` and cols ``cols[0]:cols[1]`` of the blurred ``img`` [B,C,H,W].

    Gathers exactly the (reflect-101 padded) input rows/cols that window needs, so blurring a
    crop costs the crop, not the image, and equals cropping the full-image blur.
    """
    _, channels, height, width = img.shape
    half = kernel.numel() // 2
    row_idx = _reflect101_indices(rows[0] - half, rows[1] + half, height, img.device)
    col_idx = _reflect101_indices(cols[0] - half, cols[1] + half, width, img.device)
    padded = img.index_select(2, row_idx).index_select(3, col_idx)
    k = kernel.to(dtype=img.dtype, device=img.device)
    horizontal = k.view(1, 1, 1, -1).expand(channels, 1, 1, k.numel())
    vertical = k.view(1, 1, -1, 1).expand(channels, 1, k.numel(), 1)
    out = F.conv2d(padded, horizontal, groups=channels)
    return F.conv2d(out, vertical, groups=channels)


def gaussian_blur(
    img: torch.Tensor, kernel_size: int = BLUR_KERNEL_SIZE, sigma: float = BLUR_SIGMA
) -> torch.Tensor:
    """Separable Gaussian blur equal to ``cv2.GaussianBlur(img_hwc, (k, k), sigma)``.

    ``img``: floating tensor ``[C, H, W]`` or ``[B, C, H, W]`` (any device, any range).
    Each channel is convolved along x then y with :func:`gaussian_kernel1d` (``sigmaY =
    sigmaX``), borders handled by reflect-101 (OpenCV's default ``BORDER_REFLECT_101``).
    Reflect-101 is applied repeatedly when a side is shorter than ``kernel_size // 2 + 1``
    (as OpenCV does; ``F.pad(mode="reflect")`` would refuse), and a side of 1 pixel is
    replicated, so every size >= 1 is supported and matches OpenCV. Returns a tensor of the
    same shape, dtype and device.
    """
    if not img.is_floating_point():
        raise TypeError(f"gaussian_blur needs a floating-point tensor, got {img.dtype}")
    if img.ndim not in (3, 4):
        raise ValueError(f"gaussian_blur expects [C,H,W] or [B,C,H,W], got {tuple(img.shape)}")
    kernel = gaussian_kernel1d(kernel_size, sigma, dtype=img.dtype, device=img.device)
    batch = img if img.ndim == 4 else img.unsqueeze(0)
    height, width = batch.shape[-2:]
    if height == 0 or width == 0:
        return img.clone()
    out = _blur_window(batch, kernel, (0, height), (0, width))
    return out if img.ndim == 4 else out.squeeze(0)


# --------------------------------------------------------------------------- box


def mask_box_with_context(
    mask: torch.Tensor, context: float = CONTEXT
) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` of ``mask``'s nonzero pixels grown by ``context``.

    ``mask``: ``[H, W]`` bool (or numeric; nonzero counts as object). The tight box is
    ``x0`` = first column with a mask pixel, ``x1`` = last such column + 1 (exclusive),
    likewise ``y0``/``y1`` for rows. Each side then grows by ``context`` times the box's
    extent on that axis, clamped to the image and truncated with ``int()`` as in the
    official code: ``x0' = int(max(0, x0 - context * (x1 - x0)))``,
    ``x1' = int(min(W, x1 + context * (x1 - x0)))``, same for y with ``H``. Returns Python
    ints with ``0 <= x0' < x1' <= W`` and ``0 <= y0' < y1' <= H``.

    Raises ``InvalidMaskError`` if ``mask`` is not 2-D or has no nonzero pixel.
    """
    if mask.ndim != 2:
        raise InvalidMaskError(f"mask must be 2-D [H, W], got shape {tuple(mask.shape)}")
    if context < 0 or not math.isfinite(context):
        raise ValueError(f"context must be a finite number >= 0, got {context}")
    height, width = mask.shape
    binary = mask if mask.dtype == torch.bool else mask != 0
    cols = torch.nonzero(binary.any(dim=0)).flatten()
    rows = torch.nonzero(binary.any(dim=1)).flatten()
    if cols.numel() == 0:
        raise InvalidMaskError("mask is empty: it has no nonzero pixel")
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    ext_x, ext_y = x1 - x0, y1 - y0
    return (
        int(max(0, x0 - context * ext_x)),
        int(max(0, y0 - context * ext_y)),
        int(min(width, x1 + context * ext_x)),
        int(min(height, y1 + context * ext_y)),
    )


# --------------------------------------------------------------------------- rescale


def support_shape(height: int, width: int, size: int = PROMPT_SIZE) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``size``, the longer ``L * size / S`` rounded (halves
    up, exact integer arithmetic): the shape a ``height x width`` support is rescaled to."""
    if height <= width:
        return size, max(1, (2 * width * size + height) // (2 * height))
    return max(1, (2 * height * size + width) // (2 * width)), size


def rescale_support_image(image: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize ``image`` [C, H, W] float to ``shape`` (h', w'): bilinear, antialiased when
    shrinking (step 1 of the module doc). Returns [C, h', w'] of the same dtype, ``image``
    itself when already that size. It may be smaller than its mask (a drafted or reduced
    decode): both halves map the full extent onto the same grid, so they stay aligned."""
    height, width = image.shape[-2:]
    if tuple(shape) == (height, width):
        return image
    return F.interpolate(
        image.unsqueeze(0),
        size=tuple(shape),
        mode="bilinear",
        align_corners=False,
        antialias=shape[0] < height or shape[1] < width,
    ).squeeze(0)


def rescale_support_mask(mask: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Resize ``mask`` [H, W] bool (or numeric, nonzero = object) to ``shape`` (h', w').

    ``nearest-exact``; if that erases a non-empty mask, each original mask pixel ``(y, x)``
    marks the rescaled pixel containing its centre, ``(floor((y + 0.5) * h' / H),
    floor((x + 0.5) * w' / W))``, so the result is non-empty whenever the input is. Returns
    bool [h', w'] (``mask`` itself when already at that size).
    """
    binary = mask if mask.dtype == torch.bool else mask != 0
    height, width = binary.shape
    new_h, new_w = shape
    if (new_h, new_w) == (height, width):
        return mask if mask.dtype == torch.bool else binary
    # view, not .to(): same bytes, no full-size uint8 copy of a large mask.
    as_bytes = binary[None, None].view(torch.uint8)
    scaled = F.interpolate(as_bytes, size=(new_h, new_w), mode="nearest-exact")[0, 0].bool()
    if not bool(scaled.any()) and bool(binary.any()):
        ys, xs = torch.nonzero(binary, as_tuple=True)
        ys = torch.clamp(((2 * ys + 1) * new_h) // (2 * height), max=new_h - 1)
        xs = torch.clamp(((2 * xs + 1) * new_w) // (2 * width), max=new_w - 1)
        scaled[ys, xs] = True
    return scaled


def rescale_support(
    image: torch.Tensor, mask: torch.Tensor, size: int = PROMPT_SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale ``image`` [C,H,W] float and ``mask`` [H,W] bool so the shorter side is ``size``.

    Both go to ``support_shape(H, W, size)`` through :func:`rescale_support_image` and
    :func:`rescale_support_mask`. Returns ``(image [C,h',w'] same dtype, mask [h',w'] bool)``,
    the inputs themselves when already at that size.
    """
    height, width = mask.shape
    shape = support_shape(height, width, size)
    return rescale_support_image(image, shape), rescale_support_mask(mask, shape)


# --------------------------------------------------------------------------- prompt


def _validate(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Check shapes and return ``mask`` as a bool tensor on ``image``'s device."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"support image must be [3, H, W], got shape {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"support image is empty: shape {tuple(image.shape)}")
    if mask.ndim != 2:
        raise InvalidMaskError(f"mask must be 2-D [H, W], got shape {tuple(mask.shape)}")
    if tuple(mask.shape) != tuple(image.shape[1:]):
        raise InvalidMaskError(
            f"mask size {tuple(mask.shape)} does not match the image size {tuple(image.shape[1:])}"
        )
    if mask.dtype != torch.bool:
        if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
            raise InvalidMaskError("mask contains NaN or infinite values")
        mask = mask != 0
    if not bool(mask.any()):
        raise InvalidMaskError("mask is empty: it has no nonzero pixel")
    return mask.to(image.device)


def engineer_visual_prompt(
    image: torch.Tensor,
    mask: torch.Tensor,
    size: int = PROMPT_SIZE,
    blur_sigma: float = BLUR_SIGMA,
    background_factor: float = BACKGROUND_FACTOR,
    context: float = CONTEXT,
) -> torch.Tensor:
    """Engineer one support image (``crop_blur_highlight352``) for CLIPSeg's visual prompt.

    ``image``: ``[3, H, W]`` ImageNet-normalised floating tensor (any float dtype; computed
    and returned in float32), on any device. ``mask``: ``[H, W]`` bool or numeric (nonzero
    = object; no NaN/inf), any device (moved to ``image``'s). Steps, as described in the
    module docstring: rescale (shorter side ``size``), blend the object with
    ``background_factor`` times the 15-tap Gaussian blur (sigma ``blur_sigma``) of the
    image, crop to the mask's box grown by ``context`` per side, zero-pad to a centred
    square, resize to ``size`` with ``nearest``.

    Returns a float32 ``[3, size, size]`` tensor on ``image``'s device, in normalised space
    (padding is exactly 0, background pixels are ``background_factor`` times the blur).

    Raises ``InvalidMaskError`` if the mask is not 2-D, does not match the image's
    ``H x W``, has non-finite values, or has no nonzero pixel; ``ValueError`` for a
    malformed image or parameters.
    """
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size}")
    if not image.is_floating_point():
        raise ValueError(f"support image must be a floating tensor, got {image.dtype}")
    mask = _validate(image, mask)
    image, mask = rescale_support(image.to(torch.float32), mask, size)
    return engineer_rescaled_support(image, mask, size, blur_sigma, background_factor, context)


def engineer_rescaled_support(
    image: torch.Tensor,
    mask: torch.Tensor,
    size: int = PROMPT_SIZE,
    blur_sigma: float = BLUR_SIGMA,
    background_factor: float = BACKGROUND_FACTOR,
    context: float = CONTEXT,
) -> torch.Tensor:
    """Steps 2-6 of :func:`engineer_visual_prompt` on an already rescaled support.

    ``image``: float32 ``[3, h, w]`` normalised, ``mask``: bool ``[h, w]`` on the same
    device, non-empty, both at ``support_shape(H, W, size)`` of the original support.
    Blur + highlight, crop to the grown mask box, pad to a square, nearest resize to
    ``size``: returns float32 ``[3, size, size]``. Raises ``InvalidMaskError`` for an empty
    mask.
    """
    x0, y0, x1, y1 = mask_box_with_context(mask, context)

    kernel = gaussian_kernel1d(BLUR_KERNEL_SIZE, blur_sigma, device=image.device)
    background = _blur_window(image.unsqueeze(0), kernel, (y0, y1), (x0, x1)).squeeze(0)
    crop = torch.where(mask[y0:y1, x0:x1], image[:, y0:y1, x0:x1], background_factor * background)

    height, width = y1 - y0, x1 - x0
    left = right = top = bottom = 0
    if height > width:
        left = (height - width) // 2
        right = height - width - left
    elif width > height:
        top = (width - height) // 2
        bottom = width - height - top
    square = F.pad(crop, (left, right, top, bottom), mode="constant", value=0.0)

    out = F.interpolate(square.unsqueeze(0), size=(size, size), mode="nearest").squeeze(0)
    return out.contiguous()


def engineer_visual_prompts(
    images: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    size: int = PROMPT_SIZE,
    blur_sigma: float = BLUR_SIGMA,
    background_factor: float = BACKGROUND_FACTOR,
    context: float = CONTEXT,
) -> torch.Tensor:
    """:func:`engineer_visual_prompt` over ``K`` (image, mask) pairs, stacked.

    ``images``: ``K`` tensors ``[3, H_k, W_k]`` (sizes may differ, all on one device);
    ``masks``: ``K`` masks ``[H_k, W_k]``. Returns float32 ``[K, 3, size, size]``.
    Raises ``InvalidMaskError`` (naming the example) for a bad mask or when the counts
    differ, ``ValueError`` when no example is given.
    """
    if len(images) != len(masks):
        raise InvalidMaskError(f"got {len(images)} support images but {len(masks)} masks")
    if not images:
        raise ValueError("at least one support image and mask are needed")
    out = []
    for k, (image, mask) in enumerate(zip(images, masks, strict=True)):
        try:
            out.append(
                engineer_visual_prompt(
                    image,
                    mask,
                    size=size,
                    blur_sigma=blur_sigma,
                    background_factor=background_factor,
                    context=context,
                )
            )
        except InvalidMaskError as err:
            raise InvalidMaskError(f"support example {k}: {err}") from err
    return torch.stack(out)


def engineer_support_image(
    image: Image.Image, mask: np.ndarray, config: ClipSegConfig
) -> torch.Tensor:
    """A decoded support image + its mask -> the model's visual prompt input.

    ``image``: PIL image (converted to RGB); ``mask``: bool/numeric [H, W] of the same
    size (nonzero = object). Normalised with the config's mean/std, then engineered at
    ``config.input_size``: float32 [3, S, S]. Training's path for decoded supports;
    ``model.imaging.support.prepare_support_input`` gives the same result from encoded input.
    """
    return engineer_visual_prompt(
        support_pixels(image, config), torch.from_numpy(np.asarray(mask)), size=config.input_size
    )


def support_pixels(image: Image.Image, config: ClipSegConfig) -> torch.Tensor:
    """PIL image (converted to RGB) -> float32 [3, H, W] normalised with the config's stats."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
    return normalize_tensor(pixels, config.mean, config.std)
