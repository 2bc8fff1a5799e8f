"""Host mask steps (model.masks.mask_ops, model.inference.finish) against hand-built masks."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as coco

from clipseg_serve.model.inference.finish import shape_mask
from clipseg_serve.model.masks.mask_ops import (
    dilate,
    drop_small,
    erode,
    feather_alpha,
    fill_holes,
    mask_box,
    split_instances,
)
from clipseg_serve.model.masks.postprocess import PostProcess


def blank(height: int = 40, width: int = 60) -> np.ndarray:
    return np.zeros((height, width), dtype=bool)


def test_min_area_drops_only_the_small_components():
    mask = blank()
    mask[2:4, 2:5] = True  # 6 px
    mask[10:15, 10:14] = True  # 20 px
    mask[20:30, 30:40] = True  # 100 px
    mask[30, 5] = mask[31, 6] = True  # 2 px, diagonally connected (8-connectivity)
    kept = drop_small(mask, 21)
    assert kept.sum() == 100 and kept[20:30, 30:40].all()
    assert drop_small(mask, 20).sum() == 120
    assert drop_small(mask, 2).sum() == mask.sum()  # the diagonal pair is one piece
    assert drop_small(mask, 3).sum() == mask.sum() - 2
    assert np.array_equal(drop_small(mask, 0), mask)


def test_fill_holes_fills_enclosed_background_only():
    mask = blank()
    mask[5:20, 5:20] = True
    mask[9:12, 9:12] = False  # a hole
    mask[0:10, 30:40] = True
    mask[0:5, 33:36] = False  # a notch open to the border: not a hole
    filled = fill_holes(mask)
    assert filled[9:12, 9:12].all()
    assert not filled[0:5, 33:36].any()
    assert (filled & ~mask).sum() == 9


def test_fill_holes_respects_8_connected_outlines():
    ys, xs = np.mgrid[0:9, 0:9]
    # A diamond outline, |x - 4| + |y - 4| = 3: only 8-connected, yet it encloses its inside.
    mask = np.abs(xs - 4) + np.abs(ys - 4) == 3
    filled = fill_holes(mask)
    assert filled[np.abs(xs - 4) + np.abs(ys - 4) < 3].all()
    assert not filled[0, 0]


def test_dilate_by_a_disc():
    mask = blank(21, 21)
    mask[10, 10] = True
    grown = dilate(mask, 2)
    ys, xs = np.nonzero(grown)
    assert grown.sum() == 13  # the lattice points within distance 2
    assert ((ys - 10) ** 2 + (xs - 10) ** 2 <= 4).all()
    assert np.array_equal(dilate(mask, 0), mask)


def test_erode_by_a_disc_and_not_from_the_frame():
    mask = blank(30, 30)
    mask[5:16, 5:16] = True  # 11 x 11
    shrunk = erode(mask, 2)
    assert shrunk.sum() == 49 and shrunk[7:14, 7:14].all()
    framed = blank(30, 30)
    framed[0:11, 0:11] = True  # touches the top and left border
    kept = erode(framed, 2)
    assert kept[0:9, 0:9].all() and kept.sum() == 81  # eroded from inside edges only


def test_erode_then_dilate_is_an_opening_in_shape_mask():
    mask = blank()
    mask[10:30, 10:30] = True
    mask[19:21, 30:45] = True  # a 2 px thin spur
    opened = shape_mask(mask, PostProcess(erode=2, dilate=2))
    assert not opened[19:21, 34:45].any()
    assert opened[12:28, 12:28].all()


def test_shape_mask_applies_min_area_before_fill_holes():
    mask = blank()
    mask[5:25, 5:25] = True
    mask[10:16, 10:16] = False  # a 36 px hole
    mask[12, 12] = True  # a speck inside the hole
    out = shape_mask(mask, PostProcess(min_area=2, fill_holes=True))
    assert out[10:16, 10:16].all()  # the speck went first, then the hole was filled


def test_feather_is_a_ramp_centred_on_the_edge():
    mask = blank(20, 60)
    mask[:, 30:] = True
    alpha = feather_alpha(mask, 10).astype(int)
    row = alpha[10]
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)
    # 128 -/+ 255/20 at the two pixels beside the edge; 0/255 five pixels out/in.
    assert abs(row[29] - (0.5 - 0.05) * 255) <= 1 and abs(row[30] - (0.5 + 0.05) * 255) <= 1
    assert row[24] == 0 and row[35] == 255
    assert np.array_equal(feather_alpha(mask, 1), mask.astype(np.uint8) * 255)


def test_two_separated_blobs_are_two_instances_with_their_boxes():
    mask = blank()
    mask[5:10, 4:12] = True  # x 4..11, y 5..9
    mask[20:35, 30:50] = True
    soft = np.zeros(mask.shape, dtype=np.uint8)
    soft[5:10, 4:12] = 250  # the small one is the surer one
    soft[20:35, 30:50] = 150
    soft[25, 40] = 200
    found = split_instances(mask, soft, limit=10)
    assert len(found) == 2 and found.dropped == 0
    assert found.boxes.tolist() == [[4, 5, 8, 5], [30, 20, 20, 15]]
    assert found.areas.tolist() == [40, 300]
    assert found.scores[0] == pytest.approx(250 / 255, abs=1e-6)
    assert found.max_scores[1] == pytest.approx(200 / 255, abs=1e-6)
    assert found.mask(1).sum() == 300 and found.mask(0)[5:10, 4:12].all()
    capped = split_instances(mask, soft, limit=1)
    assert len(capped) == 1 and capped.dropped == 1 and capped.areas.tolist() == [40]
    assert capped.ids.max() == 1


def test_no_instances_in_an_empty_mask():
    found = split_instances(blank(), np.zeros((40, 60), np.uint8), limit=5)
    assert len(found) == 0 and found.dropped == 0 and found.ids.max() == 0


def test_mask_box_agrees_with_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(5):
        mask = rng.random((30, 50)) > 0.97
        rle = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert mask_box(mask) == [int(v) for v in coco.toBbox(rle)]
    assert mask_box(blank()) == [0, 0, 0, 0]
