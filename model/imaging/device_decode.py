"""JPEG queries decoded in the batch, on the model's device (nvJPEG on CUDA), then resized
there: the host only reads the header.

On a GPU host the CPU, not the GPU, is the ceiling (a 2 MP JPEG costs ~5 ms of a core to
decode even at libjpeg's 1/2 draft scale). With device decode, ``Predictor.prepare_image``
checks the header as always (format allow-list, pixel limit, EXIF orientation, size) and
hands the encoded bytes on as a ``DeferredJpeg``; the model thread decodes the batch's
JPEGs in one ``torchvision.io.decode_jpeg`` call on the device (batched nvJPEG on CUDA),
applies the EXIF orientation, and squashes each to the model's input with torch's
antialiased bilinear filter. That is full-size decoding plus an antialiased resize, like the
reference processor (the CPU path's libjpeg draft scaling is an approximation of it); values
agree with Pillow's within JPEG decoder tolerance (IDCT rounding), not bit for bit, which is
why the CPU path stays the default off CUDA.

Anything nvJPEG cannot decode (a CMYK or arithmetic-coded JPEG, a truncated file) falls back
to the CPU path for that image alone, which raises the usual ``ImageDecodeError`` when the
file is broken. torchvision marks its image decoders deprecated in favour of TorchCodec
(0.29); they remain the maintained batched nvJPEG binding shipped with torch wheels, and
the fallback keeps the service working if they go.

This module imports torch and torchvision only (torchvision lazily).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

__all__ = [
    "DEVICE_MAX_PIXELS",
    "DEVICE_MODES",
    "DeferredJpeg",
    "decode_on_device",
    "device_decode_available",
]

#: JPEG modes nvJPEG decodes to RGB as Pillow does (CMYK and others go to the CPU path).
DEVICE_MODES = frozenset({"RGB", "L"})
#: Largest JPEG decoded on the device. The full-size decode and its float resize take
#: ~15 bytes per pixel of device memory (a 12 MP photo: ~180 MB, transient); beyond this
#: the CPU's 1/8 DCT draft is cheap anyway.
DEVICE_MAX_PIXELS = 16_000_000


@dataclass(frozen=True)
class DeferredJpeg:
    """A query JPEG whose header was checked, to be decoded in the batch on the device.

    data: the encoded file. orientation: its EXIF orientation (1-8; applied after decoding).
    """

    data: bytes
    orientation: int = 1


def device_decode_available(device: torch.device) -> bool:
    """Whether torchvision can decode JPEGs on ``device`` (nvJPEG on CUDA; libjpeg on CPU)."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:  # torchvision absent or built without image support
        return False
    if device.type == "cpu":
        return True
    try:
        _decode([_tiny_jpeg()], device)
    except Exception as exc:  # no nvJPEG in this build, or it cannot start on this device
        log.info("JPEG decoding on %s is unavailable (%s); decoding on the CPU", device, exc)
        return False
    return True


def decode_on_device(
    jpegs: Sequence[DeferredJpeg],
    size: int,
    device: torch.device,
    fallback: Callable[[bytes], torch.Tensor],
) -> list[torch.Tensor]:
    """Decode, orient and squash JPEGs: each -> uint8 [3, size, size] on ``device``.

    One batched decode call; if it fails, each image is tried alone and those that still
    fail go through ``fallback(data) -> uint8 [3, size, size]`` (the CPU path), whose
    errors propagate.
    """
    if not jpegs:
        return []
    try:
        decoded = _decode([j.data for j in jpegs], device)
    except Exception:
        decoded = [_decode_one(j.data, device) for j in jpegs]
    out = []
    for jpeg, image in zip(jpegs, decoded, strict=True):
        if image is None:
            out.append(fallback(jpeg.data).to(device))
        else:
            out.append(squash(orient(image, jpeg.orientation), size))
    return out


def _decode_one(data: bytes, device: torch.device) -> torch.Tensor | None:
    try:
        return _decode([data], device)[0]
    except Exception:
        return None


def _decode(datas: list[bytes], device: torch.device) -> list[torch.Tensor]:
    """uint8 [3, H, W] per JPEG (RGB; grayscale expanded), decoded on ``device``."""
    from torchvision.io import ImageReadMode, decode_jpeg

    inputs = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29's TorchCodec deprecation notice
        return list(decode_jpeg(inputs, mode=ImageReadMode.RGB, device=device))


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1-8) to uint8 [3, H, W], as ``PIL.ImageOps.exif_transpose``."""
    if orientation in (2, 4, 5, 7):
        image = image.flip(-1)  # mirror first: 2 = mirror, 4 = mirror + 180, ...
    rotations = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)
    # torch.rot90 with k=1 turns counter-clockwise, like PIL's ROTATE_90.
    return torch.rot90(image, rotations, dims=(-2, -1)) if rotations else image


def squash(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] -> uint8 [3, size, size], antialiased bilinear (PIL's BILINEAR filter)."""
    if tuple(image.shape[-2:]) == (size, size):
        return image.contiguous()
    resized = F.interpolate(
        image.unsqueeze(0).float(), size=(size, size), mode="bilinear", antialias=True
    )
    return resized.round_().clamp_(0, 255).to(torch.uint8)[0]


def _tiny_jpeg() -> bytes:
    """An 8x8 baseline JPEG for the availability probe."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 64, 32)).save(buffer, format="JPEG")
    return buffer.getvalue()
