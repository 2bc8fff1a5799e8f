"""The format allow-list (checked before any plugin parses a file) and header-only probing."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from clipseg_serve.model.errors import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageFormatError,
)
from clipseg_serve.model.imaging import image_formats
from clipseg_serve.model.imaging.image_formats import (
    ALLOWED_FORMATS,
    ImageInfo,
    identify_format,
    probe_image,
)
from clipseg_serve.model.imaging.transforms import decode_image, load_mask
from tests.conftest import png_claiming


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def ico_wrapping_png(width: int, height: int) -> bytes:
    """An ICO whose one entry is a PNG: PIL's ICO plugin decodes it while *opening*."""
    png = encode(Image.new("RGB", (width, height), (10, 200, 30)), "PNG")
    # Sizes over 255 are stored as 0 (= 256) in the directory entry.
    entry = struct.pack("<BBBBHHII", width % 256, height % 256, 0, 0, 1, 32, len(png), 22)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def mpo(width: int = 64, height: int = 48) -> bytes:
    frames = [Image.new("RGB", (width, height), (200, 10, 10)), Image.new("RGB", (8, 8))]
    buf = io.BytesIO()
    frames[0].save(buf, "MPO", save_all=True, append_images=frames[1:])
    return buf.getvalue()


SAMPLE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 20, 3), dtype=np.uint8))
ALLOWED_SAMPLES = {
    "JPEG": lambda: encode(SAMPLE, "JPEG", quality=95),
    "MPO": mpo,
    "PNG": lambda: encode(SAMPLE, "PNG"),
    "WEBP": lambda: encode(SAMPLE, "WEBP", lossless=True),
    "GIF": lambda: encode(SAMPLE, "GIF"),
    "BMP": lambda: encode(SAMPLE, "BMP"),
    "TIFF": lambda: encode(SAMPLE, "TIFF"),
}
EPS_HEADER = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 20 12\n%%EndComments\n"
REFUSED_SAMPLES = {
    "ICO": lambda: ico_wrapping_png(200, 120),
    "EPS": lambda: EPS_HEADER,
    "PPM": lambda: encode(SAMPLE, "PPM"),
    "PDF": lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
    "HEIF": lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\0" * 64,
}


def test_allowed_formats_are_the_documented_set() -> None:
    assert {"JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"} == ALLOWED_FORMATS


@pytest.mark.parametrize("fmt", sorted(ALLOWED_SAMPLES))
def test_each_allowed_format_decodes(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    data = ALLOWED_SAMPLES[fmt]()
    assert probe_image(data, max_pixels=None).format == fmt
    decoded = decode_image(data)
    assert decoded.image.mode == "RGB"
    assert decoded.original_size == ((64, 48) if fmt == "MPO" else (20, 12))
    if fmt in ("PNG", "WEBP", "BMP", "TIFF"):  # lossless: the very pixels
        assert np.array_equal(np.asarray(decoded.image), np.asarray(SAMPLE))


@pytest.mark.parametrize("fmt", sorted(ALLOWED_SAMPLES))
def test_allowed_format_opens_with_its_own_plugin_only(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    tried: list[object] = []
    real_open = Image.open

    def spy(fp: object, mode: str = "r", formats: object = None) -> Image.Image:
        tried.append(formats)
        return real_open(fp, mode, formats)

    monkeypatch.setattr(image_formats.Image, "open", spy)
    decode_image(ALLOWED_SAMPLES[fmt]())
    # One open per decode (no separate probe pass), restricted to one plugin; MPO files
    # are opened by the JPEG plugin.
    assert tried == [["JPEG" if fmt == "MPO" else fmt]]


@pytest.mark.parametrize("fmt", sorted(REFUSED_SAMPLES))
def test_refused_formats_raise_before_any_plugin_runs(
    fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    Image.init()
    opened: list[str] = []
    for format_id, (factory, accept) in list(Image.OPEN.items()):

        def spy(*args: object, _factory=factory, _id=format_id) -> object:
            opened.append(_id)
            return _factory(*args)

        monkeypatch.setitem(Image.OPEN, format_id, (spy, accept))
    data = REFUSED_SAMPLES[fmt]()
    for call in (
        lambda: decode_image(data),
        lambda: load_mask(data),
        lambda: probe_image(data, max_pixels=None),
    ):
        with pytest.raises(UnsupportedImageFormatError, match=rf"format {fmt} .*JPEG, MPO, PNG"):
            call()
    assert opened == []  # identified from the leading bytes alone
    if fmt in ("ICO", "PPM"):
        # The spies are live: without the allow-list PIL really runs that plugin.
        assert decode_image(data, formats=None).image.mode == "RGB"
        assert opened and opened[-1] == fmt


def test_refused_format_is_a_value_error_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="ICO is not accepted; send one of: BMP, GIF, JPEG"):
        decode_image(ico_wrapping_png(20, 20))


@pytest.mark.parametrize(
    "data",
    [b"hello, I am text\n" * 10, b"junk", b"\x00" * 64, b"not a png"],
)
def test_unrecognised_bytes_stay_decode_errors(data: bytes) -> None:
    assert identify_format(data) is None
    with pytest.raises(ImageDecodeError):
        decode_image(data)
    with pytest.raises(ImageDecodeError):
        probe_image(data, max_pixels=None)


def test_recognised_but_broken_allowed_format_is_a_decode_error() -> None:
    with pytest.raises(ImageDecodeError, match="not a readable PNG"):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)


def test_custom_format_lists() -> None:
    png = encode(SAMPLE, "PNG")
    with pytest.raises(UnsupportedImageFormatError, match="PNG is not accepted; send one of: JPEG"):
        decode_image(png, formats={"jpeg"})
    assert decode_image(png, formats=["png"]).original_size == (20, 12)  # case-insensitive
    # MPO is a JPEG to the plugin, but the caller's list decides after opening.
    with pytest.raises(UnsupportedImageFormatError, match="MPO"):
        decode_image(mpo(), formats={"JPEG"})
    assert decode_image(mpo(), formats={"MPO"}).original_size == (64, 48)
    with pytest.raises(UnsupportedImageFormatError, match="JPEG"):
        decode_image(encode(SAMPLE, "JPEG"), formats={"MPO"})


def test_formats_none_accepts_anything_pil_opens() -> None:
    decoded = decode_image(ico_wrapping_png(30, 20), formats=None)
    assert decoded.original_size == (30, 20)
    mask = load_mask(encode(Image.new("L", (5, 4), 255), "PPM"), formats=None)
    assert mask.shape == (4, 5) and mask.all()


def test_probe_reads_the_header_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: object) -> None:
        raise AssertionError("probe_image decoded pixels")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    # 81 MP declared in a ~60-byte file: probes fine, instantly.
    huge = png_claiming(9000, 9000)
    assert probe_image(huge, max_pixels=None) == ImageInfo("PNG", 9000, 9000, "RGB")
    tiff = encode(Image.new("F", (30, 7)), "TIFF")
    assert probe_image(tiff, max_pixels=None) == ImageInfo("TIFF", 30, 7, "F")
    assert probe_image(mpo(), max_pixels=None).format == "MPO"


def test_probe_applies_the_pixel_limit_like_decode() -> None:
    huge = png_claiming(9000, 9000)
    with pytest.raises(ImageTooLargeError, match="9000x9000"):
        probe_image(huge, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError):
        decode_image(huge, max_pixels=1_000_000)
    with pytest.raises(ImageTooLargeError):  # PIL's own bomb limit, even with ours off
        probe_image(png_claiming(100_000, 100_000), max_pixels=None)


def test_probe_of_paths_and_pil_images(tmp_path) -> None:
    path = tmp_path / "x.bmp"
    SAMPLE.save(path)
    assert probe_image(path, max_pixels=None) == ImageInfo("BMP", 20, 12, "RGB")
    assert probe_image(Image.new("LA", (3, 2)), max_pixels=6) == ImageInfo("", 3, 2, "LA")
    with pytest.raises(ImageTooLargeError):
        probe_image(Image.new("L", (3, 2)), max_pixels=5)
    with pytest.raises(ImageDecodeError, match="cannot read"):
        probe_image(tmp_path / "missing.png", max_pixels=None)
