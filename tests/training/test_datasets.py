"""Training datasets: synthetic shapes, PhraseCut, COCO, manifest, augmentation, factory."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
from PIL import Image

from clipseg_serve.model.network.text import TRAINING_TEMPLATES
from clipseg_serve.training.data import DatasetError, Sample, sample_rng
from clipseg_serve.training.datasets import (
    PHRASECUT_PLUS,
    Augmentation,
    CocoDataset,
    ManifestDataset,
    PhraseCutDataset,
    SyntheticShapes,
    build_dataset,
)
from clipseg_serve.training.datasets.augment import allows_flip, random_crop
from clipseg_serve.training.datasets.synthetic import COLOURS, PHRASES

from .fixtures import (
    COCO_MASKS,
    PHRASECUT_IMAGES,
    PHRASECUT_TASKS,
    coco_document,
    rect_mask,
    write_coco,
    write_manifest,
    write_phrasecut,
)


def same(a: Sample, b: Sample) -> bool:
    return (
        a.phrase == b.phrase
        and a.is_negative == b.is_negative
        and np.array_equal(np.asarray(a.image), np.asarray(b.image))
        and np.array_equal(a.mask, b.mask)
    )


def drawn(sample: Sample) -> set[str]:
    """The shapes a synthetic sample's source lists ("synthetic train #3: a, b")."""
    return set(sample.source.split(": ", 1)[1].split(", "))


def dilate(mask: np.ndarray) -> np.ndarray:
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    return grown


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_epoch_index():
    ds = SyntheticShapes(length=20, seed=3, support_prob=0.5, template_prob=0.5)
    first = [ds[i] for i in range(20)]
    again = SyntheticShapes(length=20, seed=3, support_prob=0.5, template_prob=0.5)
    assert all(same(a, b) for a, b in zip(first, (again[i] for i in range(20)), strict=True))
    ds.set_epoch(1)
    assert not any(same(a, ds[i]) for i, a in enumerate(first))
    # Only (seed, epoch, index) matter: ``get`` with the same generator is ``[]``.
    assert same(ds.get(4, sample_rng(ds.seed, 1, 4)), ds[4])


def test_synthetic_splits_and_seeds_differ():
    train = SyntheticShapes(length=10, split="train", augment=False)
    val = SyntheticShapes(length=10, split="val", augment=False)
    other = SyntheticShapes(length=10, seed=1, split="train", augment=False)
    for i in range(10):
        assert not np.array_equal(np.asarray(train[i].image), np.asarray(val[i].image))
        assert not np.array_equal(np.asarray(train[i].image), np.asarray(other[i].image))


def test_synthetic_mask_is_exactly_the_named_shape():
    ds = SyntheticShapes(length=150, negative_prob=0.0, augment=False)
    fill = {"circle": [], "square": [], "triangle": []}
    for i in range(len(ds)):
        sample = ds[i]
        colour, kind = sample.phrase.split(" ")
        pixels = np.asarray(sample.image)
        assert sample.mask.dtype == bool and sample.mask.shape == pixels.shape[:2]
        assert not sample.is_negative and sample.phrase in drawn(sample)
        assert sample.label == sample.phrase  # the (colour, shape) pair is the class
        # Every mask pixel has the shape's colour, and its 1-pixel ring does not
        # (shapes never touch), so the mask is exactly that shape's pixels.
        assert (pixels[sample.mask] == COLOURS[colour]).all()
        ring = dilate(sample.mask) & ~sample.mask
        assert not (pixels[ring] == COLOURS[colour]).all(axis=-1).any()
        rows, cols = np.flatnonzero(sample.mask.any(1)), np.flatnonzero(sample.mask.any(0))
        height, width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert abs(height - width) <= 1
        assert 0.2 * 96 - 1 <= width <= 0.45 * 96 + 1  # large enough to learn
        fill[kind].append(sample.mask.sum() / (height * width))
    # The outline is the one named: bounding-box fill of a square, disc and triangle.
    assert min(fill["square"]) > 0.97
    assert min(fill["circle"]) > 0.7 and max(fill["circle"]) < 0.9
    assert min(fill["triangle"]) > 0.4 and max(fill["triangle"]) < 0.65


def test_synthetic_negatives_rate_empty_masks_and_absent_phrases():
    ds = SyntheticShapes(length=500, negative_prob=0.2)
    samples = [ds[i] for i in range(500)]
    negatives = [s for s in samples if s.is_negative]
    assert 60 <= len(negatives) <= 140  # 100 expected, sd ~ 9
    for s in negatives:
        assert not s.mask.any()
        assert s.phrase in PHRASES and s.phrase not in drawn(s)
    assert all(s.mask.any() for s in samples if not s.is_negative)


def test_synthetic_support_shows_the_same_phrase():
    ds = SyntheticShapes(length=30, support_prob=1.0, augment=False)
    for i in range(len(ds)):
        sample = ds[i]
        assert sample.support is not None
        colour = sample.phrase.split(" ")[0]
        support = np.asarray(sample.support.image)
        assert sample.support.mask.any()
        assert (support[sample.support.mask] == COLOURS[colour]).all()


def test_synthetic_templates_wrap_the_phrase():
    ds = SyntheticShapes(length=40, template_prob=1.0, negative_prob=0.0, augment=False)
    used = set()
    for i in range(len(ds)):
        sample = ds[i]
        matches = [t for t in TRAINING_TEMPLATES if t.format(drawn_phrase(sample)) == sample.phrase]
        assert matches
        used.update(matches)
    assert len(used) > 3


def drawn_phrase(sample: Sample) -> str:
    return next(p for p in drawn(sample) if p in sample.phrase)


def test_synthetic_augmented_mask_stays_on_the_shape():
    ds = SyntheticShapes(length=60, negative_prob=0.0, augment=True)
    for i in range(len(ds)):
        sample = ds[i]
        pixels = np.asarray(sample.image)
        assert sample.mask.shape == pixels.shape[:2]
        colours = np.unique(pixels[sample.mask], axis=0)
        assert len(colours) == 1  # jitter maps one solid colour to one solid colour
        ring = dilate(sample.mask) & ~sample.mask
        assert not (pixels[ring] == colours[0]).all(axis=-1).any()


def test_synthetic_rejects_bad_options():
    with pytest.raises(ValueError, match="negative_prob"):
        SyntheticShapes(negative_prob=1.5)
    with pytest.raises(ValueError, match="shapes_per_image"):
        SyntheticShapes(shapes_per_image=(3, 1))
    with pytest.raises(IndexError):
        SyntheticShapes(length=5)[5]


# ----------------------------------------------------------------------------- PhraseCut


@pytest.fixture
def phrasecut_root(tmp_path):
    return write_phrasecut(tmp_path / "VGPhraseCut_v0", splits=("train", "val"))


def plain(root, **options) -> PhraseCutDataset:
    defaults = {"negative_prob": 0.0, "template_prob": 0.0, "support_prob": 0.0}
    return PhraseCutDataset(root, "train", 0, augment=False, **{**defaults, **options})


def expected_phrasecut_mask(k: int) -> np.ndarray:
    task, boxes = PHRASECUT_TASKS[k]
    return rect_mask(*PHRASECUT_IMAGES[task["image_id"]], *boxes)


def test_phrasecut_exact_masks_and_raw_phrases(phrasecut_root):
    ds = plain(phrasecut_root)
    assert len(ds) == 3
    assert ds.phrases == ["red car", "red car", "tree on the left"]
    for k in range(3):
        sample = ds[k]
        assert sample.image.size == PHRASECUT_IMAGES[PHRASECUT_TASKS[k][0]["image_id"]]
        np.testing.assert_array_equal(sample.mask, expected_phrasecut_mask(k))
        assert sample.phrase == ds.phrases[k] and not sample.is_negative
        assert sample.support is None
        assert (
            "refer_train.json" in sample.source
            and PHRASECUT_TASKS[k][0]["task_id"] in sample.source
        )
        # Each task is its own class for mIoU, as in the official evaluation.
        assert sample.label == PHRASECUT_TASKS[k][0]["task_id"]


def test_phrasecut_skips_and_counts_tasks_without_polygons(phrasecut_root, caplog):
    with caplog.at_level(logging.WARNING):
        ds = plain(phrasecut_root)
    assert ds.skipped == {"no polygons": 2, "no phrase_structure": 1}
    assert "no polygons" in caplog.text and "3__d" in caplog.text
    assert "no phrase_structure" in caplog.text
    # Without the structure requirement only the polygon-less tasks are skipped.
    relaxed = plain(phrasecut_root, require_structure=False)
    assert len(relaxed) == 4 and relaxed.skipped == {"no polygons": 2}


def test_phrasecut_templates(phrasecut_root):
    ds = plain(phrasecut_root, template_prob=1.0)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        phrase = ds[0].phrase
        assert phrase in {t.format("red car") for t in TRAINING_TEMPLATES}
        seen.add(phrase)
    assert len(seen) > 2


def test_phrasecut_negatives_come_from_other_images(phrasecut_root):
    ds = plain(phrasecut_root, negative_prob=1.0)
    sample = ds[0]  # image 1 shows only "red car"
    assert sample.is_negative and sample.phrase == "tree on the left"
    assert sample.mask.shape == (30, 40) and not sample.mask.any()
    # Image 2 shows both phrases: no negative exists, so the sample stays positive.
    sample = ds[1]
    assert not sample.is_negative and sample.mask.any()


def test_phrasecut_supports_come_from_another_task_with_the_phrase(phrasecut_root):
    ds = plain(phrasecut_root, support_prob=1.0)
    for k, other in ((0, 1), (1, 0)):
        support = ds[k].support
        assert support is not None
        image_id = PHRASECUT_TASKS[other][0]["image_id"]
        assert support.image.size == PHRASECUT_IMAGES[image_id]
        np.testing.assert_array_equal(support.mask, expected_phrasecut_mask(other))
    assert ds[2].support is None  # the only task with its phrase


def test_phrasecut_plus_defaults_for_train_only(phrasecut_root):
    train = PhraseCutDataset(phrasecut_root, "train")
    assert (train.negative_prob, train.template_prob, train.support_prob) == (
        PHRASECUT_PLUS["negative_prob"],
        PHRASECUT_PLUS["template_prob"],
        PHRASECUT_PLUS["support_prob"],
    )
    assert train.augment
    val = PhraseCutDataset(phrasecut_root, "val")
    assert (val.negative_prob, val.template_prob, val.support_prob, val.augment) == (0, 0, 0, False)
    assert [val[k].phrase for k in range(3)] == val.phrases


def test_phrasecut_plus_sampling_is_deterministic_and_mixed(phrasecut_root):
    ds = PhraseCutDataset(phrasecut_root, "train", seed=5)
    samples = [ds[i % 3] for i in range(3)]
    assert all(same(a, ds[i]) for i, a in enumerate(samples))
    kinds = set()
    for epoch in range(40):
        ds.set_epoch(epoch)
        s = ds[0]
        assert s.mask.shape == np.asarray(s.image).shape[:2]
        assert s.is_negative == (not s.mask.any())
        kinds.add((s.is_negative, s.support is not None))
    assert len(kinds) >= 3


def test_phrasecut_malformed_task_names_file_and_task(tmp_path):
    bad = {"task_id": "9__bad", "image_id": 1, "phrase": "car", "Polygons": [[[[1, 2, 3]]]]}
    root = write_phrasecut(tmp_path, tasks=[PHRASECUT_TASKS[0][0], bad])
    with pytest.raises(DatasetError, match=r"refer_train\.json.*9__bad"):
        PhraseCutDataset(root, "train")
    missing = {"task_id": "9__nophrase", "image_id": 1, "Polygons": []}
    (root / "refer_train.json").write_text(json.dumps([missing]))
    with pytest.raises(DatasetError, match=r"refer_train\.json.*9__nophrase.*phrase"):
        PhraseCutDataset(root, "train")
    with pytest.raises(DatasetError, match=r"refer_test\.json"):
        PhraseCutDataset(root, "test")


def test_phrasecut_missing_image_is_a_dataset_error(phrasecut_root):
    (phrasecut_root / "images" / "2.jpg").unlink()
    ds = plain(phrasecut_root)
    with pytest.raises(DatasetError, match=r"2__b.*2\.jpg"):
        ds[1]


# ----------------------------------------------------------------------------- COCO


@pytest.fixture
def coco_path(tmp_path):
    return write_coco(tmp_path / "coco")


def test_coco_masks_are_the_union_per_category(coco_path):
    ds = CocoDataset(coco_path, augment=False)
    assert ds.phrases == ["traffic light", "dog", "person"]
    light, dog, person = ds[0], ds[1], ds[2]
    np.testing.assert_array_equal(light.mask, COCO_MASKS["polygon"] | COCO_MASKS["rle"])
    np.testing.assert_array_equal(dog.mask, COCO_MASKS["crowd"])
    np.testing.assert_array_equal(person.mask, COCO_MASKS["person"])
    assert light.image.size == (24, 20) and person.image.size == (16, 16)
    assert light.phrase == "traffic light" and not light.is_negative


def test_coco_skip_crowd(coco_path):
    ds = CocoDataset(coco_path, skip_crowd=True, augment=False)
    assert ds.phrases == ["traffic light", "person"]


def test_coco_negatives_are_categories_absent_from_the_image(coco_path):
    ds = CocoDataset(coco_path, negative_prob=1.0, augment=False)
    seen = set()
    for epoch in range(30):
        ds.set_epoch(epoch)
        sample = ds[0]  # image 1 shows traffic light and dog
        assert sample.is_negative and not sample.mask.any()
        assert sample.label == sample.phrase  # the category asked for is the class
        seen.add(sample.phrase)
    assert seen == {"person", "cat"}


def test_coco_supports_and_templates(coco_path):
    ds = CocoDataset(coco_path, support_prob=1.0, template_prob=1.0, augment=False)
    sample = ds[0]
    assert sample.support is None  # no other image shows a traffic light
    assert sample.phrase in {t.format("traffic light") for t in TRAINING_TEMPLATES}


def test_coco_unknown_category_names_file_and_annotation(tmp_path):
    document = coco_document()
    document["annotations"].append(
        {"id": 99, "image_id": 1, "category_id": 42, "segmentation": [[0, 0, 1, 0, 1, 1]]}
    )
    path = write_coco(tmp_path, document)
    with pytest.raises(DatasetError, match=r"instances\.json: annotation 99: unknown category_id"):
        CocoDataset(path)


def test_coco_malformed_annotations(tmp_path):
    document = coco_document()
    document["annotations"][0]["segmentation"] = [[1, 2, 3]]
    with pytest.raises(DatasetError, match=r"instances\.json: annotation 10: .*even"):
        CocoDataset(write_coco(tmp_path / "odd", document))
    document = coco_document()
    del document["annotations"][3]["image_id"]
    with pytest.raises(DatasetError, match=r"annotation 13: missing key\(s\) image_id"):
        CocoDataset(write_coco(tmp_path / "key", document))
    document = coco_document()
    document["annotations"][2]["segmentation"]["counts"][-1] += 1  # runs overrun the image
    ds = CocoDataset(write_coco(tmp_path / "rle", document), augment=False)
    with pytest.raises(DatasetError, match=r"annotation 12: bad RLE"):
        ds[1]
    del document["categories"]
    with pytest.raises(DatasetError, match="categories"):
        CocoDataset(write_coco(tmp_path / "top", document))


def test_coco_root_layout_through_the_factory(tmp_path):
    path = write_coco(tmp_path / "val2017")
    (tmp_path / "annotations").mkdir()
    path.rename(tmp_path / "annotations" / "instances_val2017.json")
    ds = build_dataset("coco", str(tmp_path), "val2017", 0)
    assert isinstance(ds, CocoDataset) and len(ds) == 3 and not ds.augment
    assert ds[2].image.size == (16, 16)


# ----------------------------------------------------------------------------- manifest


def test_manifest_happy_path(tmp_path):
    path = write_manifest(tmp_path)
    ds = ManifestDataset(path, augment=False)
    assert len(ds) == 2 and ds.phrases == ["cat", "dog"]
    sample = ds[0]
    assert sample.image.size == (20, 16) and sample.phrase == "cat"
    np.testing.assert_array_equal(sample.mask, rect_mask(20, 16, (3, 2, 9, 7)))
    assert "line 1" in sample.source
    assert "line 3" in ds[1].source  # numbering counts the blank line
    negative = ManifestDataset(path, negative_prob=1.0, augment=False)[0]
    assert negative.is_negative and negative.phrase == "dog" and not negative.mask.any()
    assert sample.label is None  # no "class" key: no class labels, mIoU is n/a


def test_manifest_class_labels(tmp_path):
    records = [
        {"image": "images/one.png", "mask": "masks/one.png", "phrase": "tabby", "class": "cat"},
        {"image": "images/two.png", "mask": "masks/two.png", "phrase": "a puppy", "class": "dog"},
    ]
    ds = ManifestDataset(write_manifest(tmp_path, [json.dumps(r) for r in records]))
    assert [ds[0].label, ds[1].label] == ["cat", "dog"]
    records[1]["class"] = ""
    with pytest.raises(DatasetError, match=r"line 2: class must be a non-empty string"):
        ManifestDataset(write_manifest(tmp_path, [json.dumps(r) for r in records]))


def test_manifest_bad_lines_name_the_line(tmp_path):
    good = json.dumps({"image": "images/one.png", "mask": "masks/one.png", "phrase": "cat"})
    with pytest.raises(DatasetError, match=r"data\.jsonl: line 2: not valid JSON"):
        ManifestDataset(write_manifest(tmp_path, [good, "{not json"]))
    no_phrase = json.dumps({"image": "images/one.png", "mask": "masks/one.png"})
    with pytest.raises(DatasetError, match=r"line 2: missing key\(s\) phrase"):
        ManifestDataset(write_manifest(tmp_path, [good, no_phrase]))
    with pytest.raises(DatasetError, match="no records"):
        ManifestDataset(write_manifest(tmp_path, [""]))


def test_manifest_files_are_checked_when_read(tmp_path):
    mismatch = json.dumps({"image": "images/one.png", "mask": "masks/two.png", "phrase": "cat"})
    missing = json.dumps({"image": "images/nope.png", "mask": "masks/one.png", "phrase": "x"})
    ds = ManifestDataset(write_manifest(tmp_path, [mismatch, missing]))  # opening is lazy
    with pytest.raises(DatasetError, match=r"line 1: mask .*two\.png is 12x10 but image"):
        ds[0]
    with pytest.raises(DatasetError, match=r"line 2: image file .*nope\.png does not exist"):
        ds[1]


# ----------------------------------------------------------------------------- augmentation


def test_crop_keeps_the_whole_mask():
    rng = np.random.default_rng(0)
    image = Image.new("RGB", (80, 60))
    for _ in range(200):
        mask = np.zeros((60, 80), dtype=bool)
        x, y = rng.integers(0, 70), rng.integers(0, 50)
        mask[y : y + rng.integers(1, 60 - y), x : x + rng.integers(1, 80 - x)] = True
        cropped, kept = random_crop(image, mask, rng, (0.3, 1.0))
        assert kept.shape == (cropped.height, cropped.width)
        assert kept.sum() == mask.sum()  # every object pixel survived
    empty = np.zeros((60, 80), dtype=bool)
    sizes = {random_crop(image, empty, rng, (0.3, 0.5))[0].size for _ in range(20)}
    assert all(w <= 40 and h <= 30 for w, h in sizes)


def test_flip_is_skipped_for_left_and_right():
    flip_only = Augmentation(
        crop_scale=(1.0, 1.0), flip_prob=1.0, brightness=0, contrast=0, saturation=0
    )
    image = Image.new("RGB", (10, 4))
    mask = np.zeros((4, 10), dtype=bool)
    mask[:, :3] = True
    rng = np.random.default_rng(0)
    for phrase in ("dog on the left", "Rightmost car", "left-hand door"):
        assert not allows_flip(phrase)
        assert np.array_equal(flip_only(image, mask, phrase, rng)[1], mask)
    for phrase in ("dog", "bright lamp", "upright piano"):
        assert allows_flip(phrase)
        assert np.array_equal(flip_only(image, mask, phrase, rng)[1], mask[:, ::-1])


def test_augmentation_keeps_image_and_mask_aligned():
    mask = np.zeros((48, 64), dtype=bool)
    mask[5:20, 8:30] = True
    mask[30:44, 40:47] = True  # asymmetric, so a flip of only one of them would show
    pixels = np.full((48, 64, 3), 128, dtype=np.uint8)
    pixels[mask] = (255, 0, 0)
    image = Image.fromarray(pixels, "RGB")
    augment = Augmentation()
    for seed in range(50):
        out_image, out_mask = augment(image, mask, "red thing", np.random.default_rng(seed))
        out = np.asarray(out_image).astype(int)
        assert out_mask.shape == out.shape[:2] and out_mask.sum() == mask.sum()
        red = (out[..., 0] > 150) & (out[..., 1] < 80) & (out[..., 2] < 80)
        np.testing.assert_array_equal(red, out_mask)


# ----------------------------------------------------------------------------- factory


def test_build_dataset_kinds_and_options(tmp_path):
    ds = build_dataset("synthetic", "", "val", 1, length=7, shapes_per_image=[1, 2])
    assert isinstance(ds, SyntheticShapes) and len(ds) == 7 and not ds.augment
    assert isinstance(
        build_dataset("manifest", str(write_manifest(tmp_path)), "train", 0), ManifestDataset
    )
    root = write_phrasecut(tmp_path / "pc")
    pc = build_dataset("phrasecut", str(root), "train", 0, support_prob=0.0)
    assert isinstance(pc, PhraseCutDataset) and pc.support_prob == 0.0
    with pytest.raises(ValueError, match="unknown dataset kind"):
        build_dataset("imagenet", "", "train", 0)
    with pytest.raises(ValueError, match=r"unknown option.*negativ_prob"):
        build_dataset("synthetic", "", "train", 0, negativ_prob=0.1)


def test_datasets_pickle_for_dataloader_workers(tmp_path, phrasecut_root):
    datasets = [
        SyntheticShapes(length=4),
        ManifestDataset(write_manifest(tmp_path)),
        CocoDataset(write_coco(tmp_path / "coco")),
        PhraseCutDataset(phrasecut_root),
    ]
    for ds in datasets:
        clone = pickle.loads(pickle.dumps(ds))
        assert same(clone[0], ds[0])
