"""The client's own COCO RLE decoder gives exactly pycocotools' masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco

from clipseg_client.rle import counts_from_string, decode_rle

# pycocotools' decode trips numpy 2's __array__(copy=...) deprecation; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def coco_encode(mask: np.ndarray) -> dict:
    rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def masks() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    blobs = np.zeros((120, 90), dtype=bool)
    blobs[10:70, 5:60] = True  # long runs: multi-group counts
    blobs[80:, 40:] = True
    return [
        np.zeros((7, 5), dtype=bool),
        np.ones((7, 5), dtype=bool),
        rng.random((1, 33)) > 0.5,
        rng.random((33, 1)) > 0.5,
        rng.random((64, 48)) > 0.5,  # short runs, many negative deltas
        rng.random((31, 77)) > 0.9,
        blobs,
        np.pad(np.ones((300, 400), dtype=bool), ((5, 0), (0, 7))),  # runs > 2**15
    ]


@pytest.mark.parametrize("index", range(len(masks())))
def test_decode_matches_pycocotools(index):
    mask = masks()[index]
    rle = coco_encode(mask)
    decoded = decode_rle(rle)
    assert decoded.dtype == np.bool_ and decoded.shape == mask.shape
    theirs = coco.decode(coco.encode(np.asfortranarray(mask.astype(np.uint8))))
    assert np.array_equal(decoded, theirs.astype(bool))
    assert np.array_equal(decoded, mask)


def test_counts_match_pycocotools_uncompressed_runs():
    mask = masks()[4]
    rle = coco_encode(mask)
    # Our runs, handed to pycocotools as an uncompressed RLE, decode to the same mask.
    counts = counts_from_string(rle["counts"])
    assert sum(counts) == mask.size
    ours = coco.frPyObjects({"size": rle["size"], "counts": counts}, *rle["size"])
    assert np.array_equal(coco.decode(ours).astype(bool), mask)


def test_uncompressed_counts_and_bytes_are_accepted():
    assert np.array_equal(decode_rle({"size": [2, 2], "counts": [1, 2, 1]}), [[0, 1], [1, 0]])
    mask = masks()[2]
    rle = coco_encode(mask)
    assert np.array_equal(decode_rle({**rle, "counts": rle["counts"].encode()}), mask)


def test_runs_that_do_not_fill_the_image_are_refused():
    with pytest.raises(ValueError, match="sum to 3"):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
