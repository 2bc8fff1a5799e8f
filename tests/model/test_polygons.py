"""COCO polygons (model.codecs.polygons) round-trip through pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as coco
from scipy import ndimage

from clipseg_serve.model.codecs import polygons
from clipseg_serve.model.codecs.polygons import (
    DEFAULT_MAX_VERTICES,
    least_vertices,
    mask_to_polygons,
)
from clipseg_serve.model.errors import PolygonTooComplexError


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


# --- the vertex cap and the checkpoint ------------------------------------------------------


def vertices(polygons: list[list[float]]) -> int:
    return sum(len(p) for p in polygons) // 2


def noise(side: int, seed: int = 0) -> np.ndarray:
    """Salt and pepper: hundreds of specks and holes per 100x100 (deterministic)."""
    return np.random.default_rng(seed).random((side, side)) < 0.5


@pytest.mark.parametrize("tolerance", [0.0, 1.0])
def test_the_cap_is_exact_and_raises_a_typed_error_naming_it(tolerance):
    mask = noise(120)
    exact = vertices(mask_to_polygons(mask, tolerance, max_vertices=None))
    assert mask_to_polygons(mask, tolerance, max_vertices=exact) == mask_to_polygons(
        mask, tolerance, max_vertices=None
    )
    with pytest.raises(PolygonTooComplexError, match=f"more than {exact - 1} vertices") as err:
        mask_to_polygons(mask, tolerance, max_vertices=exact - 1)
    assert err.value.limit == exact - 1
    assert isinstance(err.value, ValueError)  # a bad value, for plain library callers
    with pytest.raises(ValueError, match="max_vertices"):
        mask_to_polygons(mask, tolerance, max_vertices=-1)


def test_the_default_cap_refuses_a_million_specks_before_tracing(monkeypatch):
    specks = np.zeros((2000, 2000), dtype=bool)
    specks[::2, ::2] = True  # 1M one-pixel pieces: at least 4M vertices
    assert 4 * specks.sum() > DEFAULT_MAX_VERTICES
    traced = []
    monkeypatch.setattr(polygons.cv2, "findContours", lambda *a: traced.append(a))
    with pytest.raises(PolygonTooComplexError) as err:
        mask_to_polygons(specks)
    assert err.value.limit == DEFAULT_MAX_VERTICES
    assert not traced  # refused from the bound: no contour was built


def test_least_vertices_is_a_lower_bound_that_refuses_noise_at_tolerance_zero():
    rng = np.random.default_rng(1)
    for _ in range(200):
        height, width = rng.integers(1, 40, 2)
        mask = rng.random((height, width)) < rng.random()
        for tolerance in (0.0, 1.0):
            traced = vertices(mask_to_polygons(mask, tolerance, max_vertices=None))
            assert least_vertices(mask, tolerance) <= traced, (mask.tolist(), tolerance)
    mask = noise(200)  # tight enough that noise at tolerance 0 is refused before tracing
    exact = vertices(mask_to_polygons(mask, 0.0, max_vertices=None))
    assert least_vertices(mask, 0.0) > 0.6 * exact


def test_past_the_cap_tracing_stops_before_any_polygon_is_built(monkeypatch):
    mask = noise(200)
    exact = vertices(mask_to_polygons(mask, 1.0, max_vertices=None))
    calls = {"checkpoint": 0, "keyholed": 0}

    def checkpoint() -> None:
        calls["checkpoint"] += 1

    keyholed = polygons._keyholed

    def counted(ring, holes):
        calls["keyholed"] += 1
        return keyholed(ring, holes)

    monkeypatch.setattr(polygons, "_keyholed", counted)
    mask_to_polygons(mask, 1.0, max_vertices=None, checkpoint=checkpoint)
    every = calls["checkpoint"]  # between contours while counting, then per polygon
    calls.update(checkpoint=0, keyholed=0)
    cap = least_vertices(mask, 1.0)  # passes the bound before tracing, not the count after
    assert cap < exact / 1.5
    with pytest.raises(PolygonTooComplexError):
        mask_to_polygons(mask, 1.0, max_vertices=cap, checkpoint=checkpoint)
    assert calls["keyholed"] == 0  # not one polygon built
    assert 0 < calls["checkpoint"] < every * 0.5  # the count stopped when it passed the cap


def test_a_raising_checkpoint_stops_the_tracing_at_once():
    mask = noise(100)
    seen = []

    def checkpoint() -> None:
        seen.append(None)
        if len(seen) == 3:
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        mask_to_polygons(mask, 0.0, checkpoint=checkpoint)
    assert len(seen) == 3


def test_a_ring_with_thousands_of_holes_round_trips_exactly_and_fast():
    cheese = np.zeros((400, 400), dtype=bool)
    cheese[10:390, 10:390] = True
    cheese[12:388:3, 12:388:3] = False  # 15,876 one-pixel holes in one ring
    polygons_ = mask_to_polygons(cheese, 0.0, max_vertices=None)
    assert len(polygons_) == 1
    assert np.array_equal(decode(polygons_, *cheese.shape), cheese)
