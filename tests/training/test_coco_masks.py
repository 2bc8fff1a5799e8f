"""COCO masks equal COCO's official ones (pycocotools' ``COCO.annToMask``) pixel for pixel:
float-coordinate circles of several sizes, multi-part polygons, and RLE with holes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO

from clipseg_serve.training.data import DatasetError
from clipseg_serve.training.datasets import CocoDataset
from clipseg_serve.training.datasets.loading import rasterize_polygons

from .fixtures import uncompressed_rle, write_image

WIDTH, HEIGHT = 120, 110
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools/numpy 2


def circle(cx: float, cy: float, radius: float, points: int = 24) -> list[float]:
    """A polygon approximating a circle, as COCO's flat [x1, y1, x2, y2, ...]."""
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False)
    xy = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return xy.ravel().round(2).tolist()


def ring(outer: int, inner: int) -> np.ndarray:
    """A bool [HEIGHT, WIDTH] annulus around (60, 55): a mask with a hole."""
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    d2 = (xx - 60) ** 2 + (yy - 55) ** 2
    return (d2 <= outer**2) & (d2 > inner**2)


def compressed(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [HEIGHT, WIDTH], "counts": rle["counts"].decode("ascii")}


#: (category name, iscrowd, segmentation) per annotation; one image, one category each
#: except "donut" (two annotations, one of them in two parts).
ANNOTATIONS = [
    ("ball", 0, [circle(20.3, 15.7, 5)]),
    ("plate", 0, [circle(40.5, 60.2, 15)]),
    ("table", 0, [circle(60.1, 55.4, 50, points=64)]),
    ("donut", 0, [circle(15.5, 90.5, 6), [70.2, 80.1, 90.7, 82.3, 80.4, 100.9]]),
    ("donut", 0, [[100.5, 10.5, 115.2, 12.1, 112.8, 30.3, 101.1, 25.6]]),
    ("crowd", 1, uncompressed_rle(ring(30, 12))),
    ("hole", 0, compressed(ring(20, 8))),
]


def write_document(folder: Path) -> Path:
    names = sorted({name for name, _, _ in ANNOTATIONS}, key=[a[0] for a in ANNOTATIONS].index)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    ids = {c["name"]: c["id"] for c in categories}
    annotations = [
        {"id": n + 1, "image_id": 1, "category_id": ids[name], "iscrowd": crowd,
         "segmentation": segmentation, "area": 1.0, "bbox": [0, 0, 1, 1]}
        for n, (name, crowd, segmentation) in enumerate(ANNOTATIONS)
    ]  # fmt: skip
    document = {
        "images": [{"id": 1, "file_name": "img.png", "width": WIDTH, "height": HEIGHT}],
        "categories": categories,
        "annotations": annotations,
    }
    write_image(folder / "img.png", WIDTH, HEIGHT)
    path = folder / "instances.json"
    path.write_text(json.dumps(document))
    return path


def official_masks(path: Path) -> dict[str, np.ndarray]:
    """Category name -> union of COCO.annToMask over its annotations on the image."""
    coco = COCO(str(path))
    out = {}
    for category in coco.loadCats(coco.getCatIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[category["id"]]))
        out[category["name"]] = np.logical_or.reduce([coco.annToMask(a) > 0 for a in anns])
    return out


def test_coco_masks_equal_the_official_api(tmp_path, capsys):
    path = write_document(tmp_path)
    reference = official_masks(path)
    capsys.readouterr()  # COCO() prints its loading messages
    ds = CocoDataset(path, augment=False)
    assert ds.phrases == list(reference)
    for sample, (name, expected) in zip(ds, reference.items(), strict=False):
        assert sample.phrase == name and sample.label == name
        assert expected.any() and np.array_equal(sample.mask, expected), name
    # The holes of the RLE masks are kept (not filled).
    assert not reference["crowd"][55, 60] and not reference["hole"][55, 60]


def test_phrasecut_fill_would_be_too_large_for_coco(tmp_path, capsys):
    """Why COCO does not use PhraseCut's fill-and-outline: at radius 5 it marks about a
    quarter more pixels than COCO's own mask (so the test above would catch it)."""
    reference = official_masks(write_document(tmp_path))["ball"]
    capsys.readouterr()
    points = np.asarray(circle(20.3, 15.7, 5)).reshape(-1, 2)
    filled = rasterize_polygons([points], WIDTH, HEIGHT)
    assert (filled & reference).sum() == reference.sum()  # a superset...
    assert filled.sum() > 1.15 * reference.sum()  # ...and much larger


def test_rle_is_checked_before_pycocotools_decodes_it(tmp_path):
    path = write_document(tmp_path)
    document = json.loads(path.read_text())
    document["annotations"][5]["segmentation"]["counts"][-1] += 7  # runs overrun the image
    path.write_text(json.dumps(document))
    ds = CocoDataset(path, augment=False)
    crowd = ds.phrases.index("crowd")
    with pytest.raises(DatasetError, match=r"annotation 6: bad RLE"):
        ds[crowd]


def test_unrasterisable_polygon_names_the_annotation(tmp_path):
    path = write_document(tmp_path)
    document = json.loads(path.read_text())
    document["annotations"][0]["segmentation"] = [[1.0, 2.0]]  # one point: no polygon
    path.write_text(json.dumps(document))
    with pytest.raises(DatasetError, match=r"annotation 1: pycocotools cannot rasterise"):
        CocoDataset(path, augment=False)[0]
