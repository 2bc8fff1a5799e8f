"""COCO polygons (model.polygons) round-trip through pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as coco
from scipy import ndimage

from model.polygons import mask_to_polygons


def decode(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """What COCO's own API makes of the polygons: frPyObjects -> merge -> decode."""
    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = coco.frPyObjects(polygons, height, width)
    return coco.decode(coco.merge(rles)).astype(bool)


def boundary_distance(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the mask's boundary (0 on boundary pixels)."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    return np.where(mask, inside - 1, outside)


def shapes() -> dict[str, np.ndarray]:
    size = (80, 120)
    out = {}
    image = Image.new("1", size[::-1])
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 50, 40), fill=1)
    out["rectangle"] = np.asarray(image).copy()
    image = Image.new("1", size[::-1])
    ImageDraw.Draw(image).ellipse((20, 5, 90, 70), fill=1)
    out["disc"] = np.asarray(image).copy()
    ring = out["disc"].copy()
    inner = Image.new("1", size[::-1])
    ImageDraw.Draw(inner).ellipse((40, 22, 70, 52), fill=1)
    ring &= ~np.asarray(inner)
    out["ring"] = ring
    two_holes = np.zeros(size, dtype=bool)
    two_holes[5:70, 5:110] = True
    two_holes[15:30, 15:40] = False
    two_holes[40:60, 60:100] = False
    two_holes[45:50, 75:80] = True  # an island inside a hole
    out["two holes and an island"] = two_holes
    pieces = np.zeros(size, dtype=bool)
    pieces[5:15, 5:15] = True
    pieces[50:75, 60:115] = True
    pieces[30, 40] = True  # a single pixel
    pieces[60, 10:12] = True  # two pixels
    out["pieces"] = pieces
    return out


@pytest.mark.parametrize("name", sorted(shapes()))
@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_polygons_round_trip_within_a_pixel_of_the_boundary(name, tolerance):
    mask = shapes()[name]
    polygons = mask_to_polygons(mask, tolerance)
    assert all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
    back = decode(polygons, *mask.shape)
    wrong = back != mask
    if tolerance == 0:
        assert not wrong.any()  # the traced outline is the mask, pixel for pixel
    # Every pixel that differs is on (or beside) the true boundary; holes stay holes.
    assert boundary_distance(mask)[wrong].max(initial=0) <= 1
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.95, iou


def test_ragged_masks_with_many_holes_round_trip_exactly():
    rng = np.random.default_rng(0)
    mask = rng.random((64, 96)) > 0.5  # hundreds of pieces, holes and diagonal contacts
    assert np.array_equal(decode(mask_to_polygons(mask, 0.0), *mask.shape), mask)


def test_holes_are_empty_after_decoding():
    mask = shapes()["two holes and an island"]
    back = decode(mask_to_polygons(mask, 1.0), *mask.shape)
    assert not back[18:27, 18:37].any() and not back[42:45, 63:97].any()
    assert back[46:49, 76:79].all()  # the island is its own polygon


def test_tolerance_simplifies_and_empty_masks_have_no_polygons():
    disc = shapes()["disc"]
    exact = mask_to_polygons(disc, 0.0)
    rough = mask_to_polygons(disc, 3.0)
    assert sum(map(len, rough)) < sum(map(len, exact)) / 2
    assert mask_to_polygons(np.zeros((10, 10), bool)) == []
    with pytest.raises(ValueError, match="tolerance"):
        mask_to_polygons(disc, -1.0)
