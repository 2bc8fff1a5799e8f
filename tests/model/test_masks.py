"""Tests of model.codecs.rle: COCO RLE (checked against pycocotools) and PNG mask encodings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from clipseg_serve.model.codecs.rle import (
    decode_png_mask,
    decode_rle,
    encode_png_mask,
    encode_png_probabilities,
    encode_rle,
    mask_bbox,
    rle_area,
)
from clipseg_serve.model.errors import ImageDecodeError, InvalidMaskError


@pytest.fixture(scope="module")
def coco():
    """pycocotools' mask module (a dev dependency); tests needing it skip without it."""
    return pytest.importorskip("pycocotools.mask")


# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; not our concern.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def coco_encode(coco, mask: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))


def random_mask(seed: int, shape: tuple[int, int], density: float, blobby: bool) -> np.ndarray:
    """Pixel noise, or blocks of 5x5 pixels (long runs, multi-character counts)."""
    rng = np.random.default_rng(seed)
    if not blobby:
        return rng.random(shape) < density
    h, w = shape
    coarse = rng.random((h // 5 + 1, w // 5 + 1)) < density
    return np.kron(coarse, np.ones((5, 5), dtype=bool))[:h, :w]


RANDOM_CASES = [
    (seed, shape, density, blobby)
    for seed, shape in enumerate([(1, 1), (2, 3), (7, 5), (31, 64), (64, 31), (120, 90)])
    for density in (0.02, 0.5, 0.97)
    for blobby in (False, True)
]


def _single(shape: tuple[int, int], y: int, x: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[y, x] = True
    return m


def _edge_cases() -> dict[str, np.ndarray]:
    cases = {
        "empty": np.zeros((13, 17), dtype=bool),
        "full": np.ones((13, 17), dtype=bool),
        "1x1_zero": np.zeros((1, 1), dtype=bool),
        "1x1_one": np.ones((1, 1), dtype=bool),
        "1xN": np.array([[0, 1, 1, 0, 1, 0, 0, 0, 1, 1]], dtype=bool),
        "Nx1": np.array([[1], [1], [0], [1], [0], [0], [1]], dtype=bool),
        "1xN_full": np.ones((1, 40), dtype=bool),
        "Nx1_empty": np.zeros((40, 1), dtype=bool),
        "row_stripes": np.tile(np.array([[1], [0]], dtype=bool), (8, 11)),
        "column_stripes": np.tile(np.array([[1, 0]], dtype=bool), (9, 7)),
        "checkerboard": (np.add.outer(np.arange(10), np.arange(12)) % 2).astype(bool),
        "large_random": random_mask(123, (1000, 700), 0.5, blobby=False),
        "large_blobby": random_mask(321, (1000, 700), 0.3, blobby=True),
        # One pixel in 12 million: runs of millions need 5-character varints.
        "huge_single": _single((3000, 4000), 1500, 2000),
    }
    h, w = 9, 14
    for name, (y, x) in {
        "top_left": (0, 0),
        "top_right": (0, w - 1),
        "bottom_left": (h - 1, 0),
        "bottom_right": (h - 1, w - 1),
        "centre": (h // 2, w // 2),
    }.items():
        cases[f"pixel_{name}"] = _single((h, w), y, x)
        cases[f"hole_{name}"] = ~_single((h, w), y, x)
    return cases


EDGE_CASES = _edge_cases()


# --- RLE: round trip and parity with pycocotools -------------------------------------------


@pytest.mark.parametrize(("seed", "shape", "density", "blobby"), RANDOM_CASES)
def test_rle_round_trip_random(seed, shape, density, blobby):
    mask = random_mask(seed, shape, density, blobby)
    rle = encode_rle(mask)
    assert rle["size"] == list(shape)
    assert isinstance(rle["counts"], str)
    decoded = decode_rle(rle)
    assert decoded.dtype == np.bool_
    assert decoded.shape == shape
    np.testing.assert_array_equal(decoded, mask)


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_rle_round_trip_edge_cases(name):
    mask = EDGE_CASES[name]
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)


@pytest.mark.parametrize(("seed", "shape", "density", "blobby"), RANDOM_CASES)
def test_rle_counts_match_pycocotools_random(coco, seed, shape, density, blobby):
    mask = random_mask(seed, shape, density, blobby)
    ours = encode_rle(mask)
    ref = coco_encode(coco, mask)
    assert ours["size"] == [int(v) for v in ref["size"]]
    assert ours["counts"] == ref["counts"].decode("ascii")


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_rle_counts_match_pycocotools_edge_cases(coco, name):
    mask = EDGE_CASES[name]
    ours = encode_rle(mask)
    ref = coco_encode(coco, mask)
    assert ours == {"size": list(mask.shape), "counts": ref["counts"].decode("ascii")}


def test_rle_known_values():
    # Column-major order, counts start with the background run: 0 when pixel (0, 0) is set.
    assert encode_rle(np.zeros((4, 5), dtype=bool)) == {"size": [4, 5], "counts": "d0"}
    assert encode_rle(np.ones((4, 5), dtype=bool)) == {"size": [4, 5], "counts": "0d0"}
    # [[0, 1, 0], [1, 0, 0]] flattens (column-major) to 0 1 1 0 0 0 -> runs 1, 2, 3.
    mask = np.array([[0, 1, 0], [1, 0, 0]], dtype=bool)
    assert encode_rle(mask) == {"size": [2, 3], "counts": "123"}


def test_rle_nonzero_is_foreground_for_any_dtype():
    rng = np.random.default_rng(7)
    mask = rng.random((23, 19)) < 0.4
    expected = encode_rle(mask)
    values = rng.integers(1, 200, size=mask.shape)
    assert encode_rle(np.where(mask, values, 0).astype(np.uint8)) == expected
    assert encode_rle(np.where(mask, -values, 0).astype(np.int32)) == expected
    assert encode_rle(np.where(mask, 0.25, 0.0)) == expected
    # A Fortran-ordered or non-contiguous view encodes the same pixels.
    assert encode_rle(np.asfortranarray(mask)) == expected
    wide = np.repeat(mask, 2, axis=1)
    assert encode_rle(wide[:, ::2]) == expected


@pytest.mark.parametrize("name", ["large_random", "large_blobby", "huge_single", "pixel_centre"])
def test_decode_pycocotools_rle(coco, name):
    mask = EDGE_CASES[name]
    ref = coco_encode(coco, mask)
    # bytes counts straight from pycocotools, and the same as str (JSON-loaded annotations)
    np.testing.assert_array_equal(decode_rle(ref), mask)
    as_str = {"size": list(ref["size"]), "counts": ref["counts"].decode("ascii")}
    np.testing.assert_array_equal(decode_rle(as_str), mask)
    np.testing.assert_array_equal(decode_rle(ref), coco.decode(ref).astype(bool))


# --- uncompressed counts -------------------------------------------------------------------


def test_decode_uncompressed_counts_known():
    decoded = decode_rle({"size": [2, 3], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(decoded, np.array([[0, 1, 0], [1, 0, 0]], dtype=bool))
    full = decode_rle({"size": [2, 2], "counts": [0, 4]})
    np.testing.assert_array_equal(full, np.ones((2, 2), dtype=bool))
    # Zero-length runs in the middle are legal in COCO crowd annotations.
    np.testing.assert_array_equal(
        decode_rle({"size": [1, 4], "counts": [1, 0, 0, 2, 1]}),
        np.array([[0, 1, 1, 0]], dtype=bool),
    )


@pytest.mark.parametrize("seed", range(5))
def test_decode_uncompressed_counts_matches_pycocotools(coco, seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(5, 60, size=2))
    # Random run lengths that start with a (possibly empty) background run and sum to h*w.
    cuts = np.sort(rng.choice(np.arange(1, h * w), size=rng.integers(1, 20), replace=False))
    counts = np.diff(np.concatenate(([0], cuts, [h * w]))).tolist()
    if seed % 2:
        counts = [0, *counts]
    rle = {"size": [h, w], "counts": counts}
    ref = coco.decode(coco.frPyObjects(rle, h, w)).astype(bool)
    np.testing.assert_array_equal(decode_rle(rle), ref)
    assert rle_area(rle) == int(ref.sum())


# --- malformed RLE -------------------------------------------------------------------------


MALFORMED = {
    "list_sum_short": {"size": [3, 4], "counts": [5, 6]},
    "list_sum_long": {"size": [3, 4], "counts": [5, 6, 2]},
    "list_negative": {"size": [2, 2], "counts": [5, -1]},
    "list_floats": {"size": [2, 2], "counts": [1.5, 2.5]},
    "list_nested": {"size": [2, 2], "counts": [[1, 3]]},
    "list_ragged": {"size": [2, 2], "counts": [[1], [1, 2]]},
    "list_huge_int": {"size": [2, 2], "counts": [2**70, 4]},
    "string_sum_short": {"size": [4, 5], "counts": "c0"},
    "string_sum_long": {"size": [4, 5], "counts": "0e0"},
    "string_garbage_chars": {"size": [4, 5], "counts": "!!??"},
    "string_char_above_alphabet": {"size": [4, 5], "counts": "d0z"},
    "string_non_ascii": {"size": [4, 5], "counts": "d0é"},
    "string_truncated": {"size": [4, 5], "counts": "0d"},  # 'd' = 48 + 0x34 says "more"
    "string_negative_count": {"size": [4, 5], "counts": "o"},  # 'o' = 48 + 63 -> -1
    "string_overlong_value": {"size": [4, 5], "counts": "`" * 20 + "0"},
    "bytes_garbage": {"size": [4, 5], "counts": b"\x00\xff"},
    "empty_string_nonempty_size": {"size": [4, 5], "counts": ""},
    "size_one_value": {"size": [20], "counts": "d0"},
    "size_three_values": {"size": [4, 5, 1], "counts": "d0"},
    "size_negative": {"size": [-4, -5], "counts": "d0"},
    "size_float": {"size": [4.0, 5.0], "counts": "d0"},
    "size_bool": {"size": [True, True], "counts": [1]},
    "size_string": {"size": "4x5", "counts": "d0"},
    "counts_wrong_type": {"size": [4, 5], "counts": 20},
    "missing_counts": {"size": [4, 5]},
    "missing_size": {"counts": "d0"},
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_rle_raises(name):
    rle = MALFORMED[name]
    with pytest.raises(InvalidMaskError):
        decode_rle(rle)
    with pytest.raises(InvalidMaskError):
        rle_area(rle)


def test_malformed_rle_messages_say_what_is_wrong():
    with pytest.raises(InvalidMaskError, match=r"cover 11 pixels.*has 12"):
        decode_rle({"size": [3, 4], "counts": [5, 6]})
    with pytest.raises(InvalidMaskError, match="size"):
        decode_rle({"size": [-1, 4], "counts": []})
    with pytest.raises(InvalidMaskError, match="'!'"):
        decode_rle({"size": [4, 5], "counts": "d0!"})
    with pytest.raises(InvalidMaskError, match="truncated"):
        decode_rle({"size": [4, 5], "counts": "0d"})
    with pytest.raises(InvalidMaskError, match="longer than"):
        decode_rle({"size": [4, 5], "counts": "`" * 20 + "0"})
    # Library errors are also ValueErrors, for callers that do not know the hierarchy.
    with pytest.raises(ValueError):
        decode_rle({"size": [4, 5], "counts": "!!"})


def test_decode_rle_rejects_non_mapping():
    with pytest.raises(InvalidMaskError):
        decode_rle([[4, 5], "d0"])  # type: ignore[arg-type]


def test_zero_sized_rle():
    for shape in [(0, 5), (5, 0), (0, 0)]:
        rle = encode_rle(np.zeros(shape, dtype=bool))
        assert rle == {"size": list(shape), "counts": "0"}
        assert decode_rle(rle).shape == shape
        assert decode_rle({"size": list(shape), "counts": []}).shape == shape


# --- area and bounding box -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_area_and_bbox_match_pycocotools_edge_cases(coco, name):
    mask = EDGE_CASES[name]
    ref = coco_encode(coco, mask)
    assert rle_area(encode_rle(mask)) == int(coco.area(ref))
    assert mask_bbox(mask) == [int(v) for v in coco.toBbox(ref)]


@pytest.mark.parametrize(("seed", "shape", "density", "blobby"), RANDOM_CASES)
def test_area_and_bbox_match_pycocotools_random(coco, seed, shape, density, blobby):
    mask = random_mask(seed, shape, density, blobby)
    ref = coco_encode(coco, mask)
    assert rle_area(encode_rle(mask)) == int(coco.area(ref)) == int(mask.sum())
    assert mask_bbox(mask) == [int(v) for v in coco.toBbox(ref)]


def test_area_and_bbox_known_values():
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[2:5, 3:11] = 1
    mask[7, 15] = 9
    assert mask_bbox(mask) == [3, 2, 13, 6]
    assert rle_area(encode_rle(mask)) == 3 * 8 + 1
    assert mask_bbox(np.zeros((4, 4))) == [0, 0, 0, 0]
    assert rle_area({"size": [2, 3], "counts": [1, 2, 3]}) == 2
    assert isinstance(rle_area({"size": [2, 3], "counts": [1, 2, 3]}), int)
    assert all(isinstance(v, int) for v in mask_bbox(mask))


@pytest.mark.parametrize("bad", [np.zeros(5), np.zeros((2, 3, 4)), np.array(1)])
def test_non_2d_masks_rejected(bad):
    with pytest.raises(InvalidMaskError):
        encode_rle(bad)
    with pytest.raises(InvalidMaskError):
        mask_bbox(bad)
    with pytest.raises(InvalidMaskError):
        encode_png_mask(bad)
    with pytest.raises(InvalidMaskError):
        encode_png_probabilities(bad.astype(np.float32))


# --- PNG -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["large_blobby", "large_random", "pixel_top_right", "1xN", "Nx1", "empty", "full"]
)
def test_png_mask_round_trip(name):
    mask = EDGE_CASES[name]
    data = encode_png_mask(mask)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "PNG"
        assert img.mode == "L"
        assert img.size == (mask.shape[1], mask.shape[0])
        pixels = np.asarray(img)
    assert set(np.unique(pixels).tolist()) <= {0, 255}
    np.testing.assert_array_equal(pixels == 255, mask)
    decoded = decode_png_mask(data)
    assert decoded.dtype == np.bool_
    np.testing.assert_array_equal(decoded, mask)


def test_png_mask_values_are_0_and_255_for_any_nonzero():
    mask = np.array([[0, 1, 7], [-3, 0, 0.5]])
    with Image.open(io.BytesIO(encode_png_mask(mask))) as img:
        pixels = np.asarray(img)
    np.testing.assert_array_equal(pixels, [[0, 255, 255], [255, 0, 255]])


def test_png_mask_rejects_empty_mask():
    with pytest.raises(InvalidMaskError):
        encode_png_mask(np.zeros((0, 4), dtype=bool))


def test_png_probabilities_values():
    rng = np.random.default_rng(3)
    probs = rng.random((37, 53)).astype(np.float32)
    probs[0, :8] = [0.0, 1.0, 0.5, 0.5 / 255, 1.5 / 255, 254.5 / 255, 1 / 3, 2 / 3]
    data = encode_png_probabilities(probs)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "L"
        assert img.size == (53, 37)
        pixels = np.asarray(img)
    expected = np.array([[round(float(p) * 255) for p in row] for row in probs.astype(np.float64)])
    np.testing.assert_array_equal(pixels, expected)
    assert pixels[0, 0] == 0
    assert pixels[0, 1] == 255


def test_png_probabilities_clip_out_of_range_and_reject_nan():
    probs = np.array([[-0.5, 0.0, 1.0, 1.7]], dtype=np.float64)
    with Image.open(io.BytesIO(encode_png_probabilities(probs))) as img:
        np.testing.assert_array_equal(np.asarray(img), [[0, 0, 255, 255]])
    with pytest.raises(InvalidMaskError):
        encode_png_probabilities(np.array([[0.2, np.nan]]))


def _png_of(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_decode_png_mask_other_modes():
    mask = EDGE_CASES["large_blobby"][:50, :40]
    gray = Image.fromarray(mask.astype(np.uint8) * 255)
    for mode in ("1", "P", "LA", "RGB", "RGBA", "I;16"):
        np.testing.assert_array_equal(decode_png_mask(_png_of(gray.convert(mode))), mask)
    # Any nonzero grey level is foreground, not just 255.
    faint = Image.fromarray(mask.astype(np.uint8) * 3)
    np.testing.assert_array_equal(decode_png_mask(_png_of(faint)), mask)


def test_decode_png_mask_rejects_unreadable_bytes():
    good = encode_png_mask(EDGE_CASES["large_random"])
    jpeg = io.BytesIO()
    Image.new("L", (8, 8)).save(jpeg, format="JPEG")
    for data in (b"", b"not a png at all", good[: len(good) // 2], jpeg.getvalue()):
        with pytest.raises(ImageDecodeError):
            decode_png_mask(data)
