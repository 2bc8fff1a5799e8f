"""CPU-side preparation of one request's images: decode, orient, resize, engineer supports.

Runs on any thread (a server's threadpool); nothing here touches the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image, JpegImagePlugin

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.imaging.device_decode import DEVICE_MAX_PIXELS, DEVICE_MODES, DeferredJpeg
from clipseg_serve.model.imaging.image_formats import ALLOWED_FORMATS, open_image, read_bytes
from clipseg_serve.model.imaging.image_modes import SWAPPING_ORIENTATIONS, exif_orientation
from clipseg_serve.model.imaging.support import prepare_support_input
from clipseg_serve.model.imaging.transforms import (
    ImageInfo,
    decode_image,
    probe_image,
    to_guide_pixels,
    to_model_pixels,
)


@dataclass(frozen=True)
class PreparedImage:
    """A query image ready for the model.

    pixels: uint8 [3, S, S] (the squashed RGB image, normalised on the device), or a
        ``DeferredJpeg`` when the predictor decodes JPEGs on its device.
    size: (height, width) of the original image after EXIF orientation — masks come back
        at this size.
    guide: the upright image at ``size``, uint8 [3, H, W], when asked for (refinement).
    """

    pixels: torch.Tensor | DeferredJpeg
    size: tuple[int, int]
    guide: torch.Tensor | None = None


@dataclass(frozen=True)
class ImagePreparer:
    """Turns uploads into model input for ``config``'s input size.

    max_pixels: the decompression-bomb guard (None: Pillow's own). decode: "cpu", or
    "device" to leave RGB/grayscale JPEGs for the batch to decode on the device.
    """

    config: ClipSegConfig
    max_pixels: int | None
    decode: str = "cpu"

    def probe(self, source) -> ImageInfo:
        """Format, size and mode from the header (no pixels decoded; same guards)."""
        return probe_image(source, max_pixels=self.max_pixels)

    def image(self, source, *, guide: bool = False) -> PreparedImage:
        """Decode any image (bytes, path, PIL) into model input; see ``PreparedImage``.

        With device decoding, an RGB or grayscale JPEG (bytes or path) only has its header
        checked here (the same guards as ``decode_image``); it is decoded in the batch.
        ``guide``: also keep the full-size image, for refinement (decoded in full on the
        CPU, where a JPEG otherwise decodes at a reduced draft scale).
        """
        if self.decode == "device" and not guide and not isinstance(source, Image.Image):
            deferred = self._defer_jpeg(read_bytes(source))
            if deferred is not None:
                return deferred
        size = self.config.input_size
        draft = None if guide else size
        decoded = decode_image(source, max_pixels=self.max_pixels, draft_size=draft)
        width, height = decoded.original_size
        pixels = to_model_pixels(decoded.image, size)
        full = to_guide_pixels(decoded.image) if guide else None
        return PreparedImage(pixels, (height, width), full)

    def _defer_jpeg(self, data: bytes) -> PreparedImage | None:
        """A ``DeferredJpeg`` for an RGB/grayscale JPEG of at most ``DEVICE_MAX_PIXELS``
        whose header passes the guards; None: decode it on the CPU."""
        header = open_image(data, max_pixels=self.max_pixels, formats=ALLOWED_FORMATS)
        if (
            not isinstance(header, JpegImagePlugin.JpegImageFile)
            or header.mode not in DEVICE_MODES
            or header.width * header.height > DEVICE_MAX_PIXELS
        ):
            return None
        orientation = exif_orientation(header)
        width, height = header.size
        if orientation in SWAPPING_ORIENTATIONS:
            width, height = height, width
        return PreparedImage(DeferredJpeg(data, orientation), (height, width))

    def cpu_pixels(self, data: bytes) -> torch.Tensor:
        """The CPU path for one image: uint8 [3, S, S] (device decoding's fallback)."""
        size = self.config.input_size
        decoded = decode_image(data, max_pixels=self.max_pixels, draft_size=size)
        return to_model_pixels(decoded.image, size)

    def support(self, image, mask) -> torch.Tensor:
        """Engineer one visual prompt: support image + mask -> float32 [3, S, S].

        The mask (nonzero = object) must have the support image's size; the image is
        decoded reduced toward the model size, like a query (``model.imaging.support``).
        """
        return prepare_support_input(image, mask, self.config, max_pixels=self.max_pixels)
