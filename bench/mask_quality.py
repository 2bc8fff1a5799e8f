"""Mask quality of the refinement modes: foreground IoU, boundary F and their CPU cost.

What it measures, for each refine mode of ``model.masks.postprocess.PostProcess`` (``none``,
``guided``, ``pamr``):

1. **Quality on held-out synthetic scenes** with anti-aliased edges. The model is the tiny
   one trained on the synthetic shapes by the README's recipe (``clipseg-train --init
   random:tiny --dataset synthetic --steps 600 --batch-size 16 --lr 3e-3 --eval-every
   300``; ``--weights`` skips the training). The scenes use the training generator's
   vocabulary (``training/datasets/synthetic.py``: its colours, shapes, phrases, shape
   sizes, gap and background texture) but are drawn here, at 1024x1024 by default, from a
   seed stream of their own (``split_seed(seed, "mask-quality")``; training draws from
   the "train" and "val" splits' streams): each label map is rasterised at 4x
   supersampling with sub-pixel positions and box-filtered down (each output pixel = the
   mean of its 4x4 block, i.e. ``Image.BOX``), so the shapes' coverage gives anti-aliased
   edges blended over the background. Ground truth is that coverage > 0.5. Every shape
   drawn in a scene is a prompt (its phrase, "red circle"); the masks come from
   ``Predictor.segment(image, phrases, post=PostProcess(refine=mode))`` at the
   checkpoint's calibrated threshold.

   * fg IoU: the official CLIPSeg foreground IoU, TP / (1 + TP + FP + FN) with the pixel
     counts summed over every (scene, prompt) first (``training.metrics.fg_iou``).
   * boundary F: DAVIS-style boundary F-measure at a 2 px tolerance, per (scene, prompt),
     then the mean. Boundary pixels (``boundary``): mask pixels with a background pixel
     among their 8 neighbours (the frame is not an edge). Precision: the fraction of the
     prediction's boundary pixels within 2 px (Euclidean, ``scipy.ndimage``'s distance
     transform) of a ground-truth boundary pixel; recall the other way round; F = 2PR /
     (P + R). Conventions (as DAVIS): both boundaries empty -> 1.0, exactly one empty ->
     0.0.
   * "vs none": the relative change (mode - none) / none; "area pred/true": predicted over
     true foreground pixels, (TP + FP) / (TP + FN), > 1 when the masks grow.

   The same scenes are then scored with **oracle maps** in place of the model's: each
   truth area-averaged to the released models' 352x352 grid (as logits; the tiny model
   predicts on a 96x96 one), rendered by ``Predictor.render`` with the image as guide at
   threshold 0.5. That is the best map a 352-grid model could give, so this table shows
   what each refiner does on its own, apart from the tiny model's errors (a refiner that
   is right should keep or raise it).

2. **The same metrics on real photos** (``tests/data/photos``: public-domain photos with
   hand-made masks, see its SOURCES.md), printed in a separate table. It is a smoke check
   of the code path: a model trained only on coloured shapes says nothing about photos.
   With oracle maps (the hand-made masks at the 352 grid) the photos do measure the
   refiners on real edges, on two masks only.

3. **The added CPU cost per 2 MP mask**: ``Predictor.render(logits, (1080, 1920),
   post=PostProcess(refine=mode), guide=guide)`` with ``logits`` float [1, 352, 352] from
   the model on a 1920x1080 synthetic test image (the tiny model's 96x96 map resized to
   the released models' 352 grid) and ``guide`` its uint8 [3, 1080, 1920] pixels, torch
   on 2 threads, after warm-up calls; median and min-max of ``--repeats`` (>= 15) calls
   per mode, and the median minus refine="none"'s. Other work on the cores makes these
   times noisy (two torch threads on two shared cores can be 100x slower): the 1-min load
   average before and after is printed and kept in the JSON. Training and scoring run on
   ``--work-threads`` (1): on 2 shared cores, 2 threads made the 600 training steps take
   15 min instead of 12 s.

    python bench/mask_quality.py        # trains the tiny model first; ~70 s on 2 cores
    python bench/mask_quality.py --weights runs/shapes/best --json mask_quality.json
    python bench/mask_quality.py --smoke --json smoke.json   # tiny scale, for the tests

Each mode is ``PostProcess(refine=mode)`` with its defaults (guided: radius half a token of
the model's patch grid, eps 1e-3; pamr: 10 iterations, then the guided filter) and no
other step.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import this checkout's packages
    sys.path.insert(0, str(ROOT))

from bench.machine import cpu_model  # noqa: E402
from clipseg_serve.model.backends import load_predictor  # noqa: E402
from clipseg_serve.model.codecs.polygons import mask_to_polygons  # noqa: E402
from clipseg_serve.model.inference.batch import Segmentation  # noqa: E402
from clipseg_serve.model.inference.finish import shape_mask  # noqa: E402
from clipseg_serve.model.inference.predictor import Predictor  # noqa: E402
from clipseg_serve.model.masks.mask_ops import feather_alpha, split_instances  # noqa: E402
from clipseg_serve.model.masks.postprocess import PostProcess, Refine  # noqa: E402
from clipseg_serve.model.masks.refine import DEFAULT_GRID, auto_radius  # noqa: E402
from clipseg_serve.training.datasets.sampling import split_seed  # noqa: E402
from clipseg_serve.training.datasets.synthetic import (  # noqa: E402
    _GAP,
    _PLACEMENT_TRIES,
    _SIDE_RANGE,
    COLOURS,
    PHRASES,
    _background,
)
from clipseg_serve.training.metrics import fg_iou as official_fg_iou  # noqa: E402

MODES: tuple[str, ...] = tuple(r.value for r in Refine)  # none, guided, pamr
PHOTOS = ROOT / "tests" / "data" / "photos"
#: The README's demo recipe (Training section), minus ``--output``.
TRAIN_RECIPE: tuple[str, ...] = (
    "--init", "random:tiny", "--dataset", "synthetic", "--steps", "600",
    "--batch-size", "16", "--lr", "3e-3", "--eval-every", "300",
)  # fmt: skip
TOLERANCE_PX = 2.0
SUPERSAMPLE = 4
COST_SIZE = (1080, 1920)
#: The released CLIPSeg models' logit grid (the tiny test model's is 96): the oracle maps
#: and the cost section's logits are at this size.
GRID = 352
#: What ``quality`` scores: an image (PIL, bytes or path), its prompts, one truth each.
Item = tuple[Any, Sequence[str], Sequence[np.ndarray]]


# ---------------------------------------------------------------------------- metrics
def boundary(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: pixels of ``mask`` with a background pixel among their 8 neighbours.

    Outside the image counts as foreground, so an object cut by the frame has no edge
    along it (the frame is not an edge the model could get right or wrong).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros_like(mask)
    inner = ndimage.binary_erosion(mask, structure=np.ones((3, 3), bool), border_value=1)
    return mask & ~inner


def boundary_f(
    pred: np.ndarray, gt: np.ndarray, tolerance: float = TOLERANCE_PX
) -> tuple[float, float, float]:
    """DAVIS-style boundary (precision, recall, F) of two bool [H, W] masks.

    Precision: fraction of ``pred``'s boundary pixels within ``tolerance`` px (Euclidean)
    of a boundary pixel of ``gt``; recall: the same with the roles swapped; F = 2PR/(P+R)
    (0 when P + R = 0). Conventions, as DAVIS's ``f_measure``: both boundaries empty ->
    (1, 1, 1); only ``pred``'s empty -> P = 1, R = 0; only ``gt``'s empty -> P = 0, R = 1;
    so F is 0.0 whenever exactly one of them is empty.
    """
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {gt.shape}")
    pb, gb = boundary(pred), boundary(gt)
    n_pred, n_gt = int(pb.sum()), int(gb.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0:
        return 1.0, 0.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0, 0.0
    # Distance of every pixel to the nearest boundary pixel of the other mask, computed
    # in the union of both boundaries' bounding boxes grown by the tolerance (same result,
    # far fewer pixels than the whole image).
    rows, cols = np.nonzero(pb | gb)
    pad = math.ceil(tolerance) + 1
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, pred.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, pred.shape[1])
    pb, gb = pb[r0:r1, c0:c1], gb[r0:r1, c0:c1]
    to_gt = ndimage.distance_transform_edt(~gb)
    to_pred = ndimage.distance_transform_edt(~pb)
    precision = float(np.mean(to_gt[pb] <= tolerance))
    recall = float(np.mean(to_pred[gb] <= tolerance))
    f = 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f


@dataclass
class Scores:
    """Pixel counts summed over a set of masks, and the per-mask boundary F values."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(4, np.int64))
    boundary_fs: list[float] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        tp = int(np.count_nonzero(pred & gt))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(gt)) - tp
        self.counts += np.array([tp, fp, fn, gt.size - tp - fp - fn], np.int64)
        self.boundary_fs.append(boundary_f(pred, gt)[2])

    @property
    def fg_iou(self) -> float:
        """The official foreground IoU, TP / (1 + TP + FP + FN), over all masks added."""
        return float(official_fg_iou(self.counts.reshape(4, 1))[0])

    @property
    def mean_boundary_f(self) -> float:
        return float(np.mean(self.boundary_fs)) if self.boundary_fs else float("nan")

    @property
    def area_ratio(self) -> float:
        """Predicted over true foreground pixels, (TP + FP) / (TP + FN): > 1 grows."""
        tp, fp, fn, _ = (int(c) for c in self.counts)
        return (tp + fp) / max(tp + fn, 1)


# ----------------------------------------------------------------------------- scenes
@dataclass(frozen=True)
class Scene:
    """An RGB image, its prompts (the shapes' phrases) and one ground-truth mask each."""

    image: Image.Image
    phrases: tuple[str, ...]
    masks: tuple[np.ndarray, ...]


def _draw_shape(
    draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, side: float, s: int
) -> None:
    """One shape on the ``s``-times supersampled canvas (value 1), like the generator's."""
    x0, y0 = round(x * s), round(y * s)
    x1, y1 = round((x + side) * s) - 1, round((y + side) * s) - 1
    if kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=1)
    elif kind == "square":
        draw.rectangle((x0, y0, x1, y1), fill=1)
    else:  # triangle, pointing up
        draw.polygon([((x0 + x1) / 2, y0), (x0, y1), (x1, y1)], fill=1)


def _place(
    rng: np.random.Generator, count: int, height: int, width: int
) -> list[tuple[float, float, float]]:
    """Up to ``count`` non-overlapping (x, y, side) squares at sub-pixel positions; sides
    in the generator's range (a fraction of the shorter image side), the generator's gap."""
    short = min(height, width)
    lo, hi = (f * short for f in _SIDE_RANGE)
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        side = float(rng.uniform(lo, hi))
        for _ in range(_PLACEMENT_TRIES):
            x, y = float(rng.uniform(0, width - side)), float(rng.uniform(0, height - side))
            if all(
                x + side + _GAP <= ox
                or ox + oside + _GAP <= x
                or y + side + _GAP <= oy
                or oy + oside + _GAP <= y
                for ox, oy, oside in placed
            ):
                placed.append((x, y, side))
                break
    return placed


def render_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    shapes: tuple[int, int] = (1, 3),
    supersample: int = SUPERSAMPLE,
) -> Scene:
    """A synthetic scene with anti-aliased edges; see the module docstring.

    Each shape's label map is drawn at ``supersample`` x the size and box-filtered down to
    its coverage in [0, 1]; the image is the background blended with each shape's colour
    by coverage; the ground truth is coverage > 0.5.
    """
    count = int(rng.integers(shapes[0], shapes[1] + 1))
    phrases = [PHRASES[i] for i in rng.permutation(len(PHRASES))[:count]]
    boxes = _place(rng, count, height, width)
    s = supersample
    pixels = _background(rng, max(height, width))[:height, :width].astype(np.float32)
    kept, masks = [], []
    for phrase, (x, y, side) in zip(phrases, boxes, strict=False):
        colour, kind = phrase.split(" ")
        canvas = Image.new("L", (width * s, height * s), 0)
        _draw_shape(ImageDraw.Draw(canvas), kind, x, y, side, s)
        fine = np.asarray(canvas, dtype=np.float32)
        coverage = fine.reshape(height, s, width, s).mean(axis=(1, 3))  # = Image.BOX
        tint = np.asarray(COLOURS[colour], np.float32)
        pixels += coverage[..., None] * (tint - pixels)
        kept.append(phrase)
        masks.append(coverage > 0.5)
    image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    return Scene(image, tuple(kept), tuple(masks))


def scenes(count: int, size: int, seed: int) -> list[Scene]:
    """``count`` held-out square scenes; scene ``i`` depends only on (seed, i)."""
    base = split_seed(seed, "mask-quality")
    return [render_scene(np.random.default_rng([base, i]), size, size) for i in range(count)]


def photos(root: Path = PHOTOS) -> list[tuple[str, Path, str, np.ndarray]]:
    """(name, image path, prompt, ground truth bool [H, W]) of each photo in ``root``."""
    found = []
    for spec in sorted(root.glob("*_polygon.json")):
        meta = json.loads(spec.read_text())
        truth = np.asarray(Image.open(root / meta["mask"]).convert("L")) > 127
        found.append((spec.name.removesuffix("_polygon.json"), root / meta["image"],
                      meta["prompt"], truth))  # fmt: skip
    return found


# -------------------------------------------------------------------------- the model
def train_tiny(output: Path, steps: int) -> Path:
    """The README's recipe (``steps`` replacing its 600) in this process; ``best/``."""
    from clipseg_serve.training.train import main as train_main

    args = list(TRAIN_RECIPE)
    args[args.index("--steps") + 1] = str(steps)
    every = min(300, steps)
    args[args.index("--eval-every") + 1] = str(every)
    if train_main([*args, "--output", str(output)]) != 0:
        raise SystemExit("mask_quality: training failed")
    return output / "best"


def oracle_logits(truth: np.ndarray, side: int) -> torch.Tensor:
    """float [1, side, side]: the logit of ``truth`` area-averaged to the model's grid —
    the best map a model of that resolution could give (clipped to logit(1e-3..1-1e-3))."""
    mask = torch.from_numpy(truth.astype(np.float32))[None, None]
    small = F.interpolate(mask, size=(side, side), mode="area")[0]
    return torch.logit(small.clamp(1e-3, 1 - 1e-3))


def quality(
    predictor: Predictor, mode: str, items: Sequence[Item], oracle: bool = False
) -> tuple[Scores, float]:
    """Scores of refine ``mode`` over (image, phrases, truths) items, and the seconds the
    segmentations took (the image's decoding included: refinement needs it in full).

    ``oracle``: the model's maps are replaced by ``oracle_logits`` of each truth and
    rendered (``Predictor.render`` with the image as guide) at threshold 0.5.
    """
    post, scores = PostProcess(refine=Refine(mode)), Scores()
    start = time.perf_counter()
    for image, phrases, truths in items:
        if oracle:
            guide = predictor.prepare_image(image, guide=True).guide
            # The default radius follows the model's patch grid (the tiny model's is 6);
            # these maps stand for the released models', so they get those models' radius.
            fair = dataclasses.replace(post, radius=auto_radius(truths[0].shape, DEFAULT_GRID))
            masks = [
                predictor.render(oracle_logits(truth, GRID), truth.shape, threshold=0.5,
                                 post=fair, guide=guide).mask(0)
                for truth in truths
            ]  # fmt: skip
        else:
            result = predictor.segment(image, list(phrases), post=post)
            masks = [result.mask(i) for i in range(len(truths))]
        for mask, truth in zip(masks, truths, strict=True):
            if mask.shape != truth.shape:
                raise RuntimeError(f"mask size {mask.shape} != image size {truth.shape}")
            scores.add(mask, truth)
    return scores, time.perf_counter() - start


def quality_rows(
    predictor: Predictor, items: Sequence[Item], oracle: bool = False
) -> list[dict[str, Any]]:
    """One row per mode: fg IoU, mean boundary F, both relative to "none", the area
    ratio, seconds (``oracle``: see ``quality``)."""
    rows: list[dict[str, Any]] = []
    base: dict[str, Any] | None = None
    for mode in MODES:
        row: dict[str, Any] = {"mode": mode, "fg_iou": None, "boundary_f": None,
                               "fg_iou_vs_none": None, "boundary_f_vs_none": None,
                               "area_ratio": None, "seconds": None, "masks": 0,
                               "error": None}  # fmt: skip
        try:
            scores, seconds = quality(predictor, mode, items, oracle)
        except Exception as exc:  # one failing mode still leaves the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        row.update(fg_iou=scores.fg_iou, boundary_f=scores.mean_boundary_f, seconds=seconds,
                   area_ratio=scores.area_ratio,
                   masks=len(scores.boundary_fs), counts=scores.counts.tolist(),
                   boundary_f_per_mask=scores.boundary_fs)  # fmt: skip
        if base is None and mode == "none":
            base = row
        elif base is not None:
            row["fg_iou_vs_none"] = _relative(row["fg_iou"], base["fg_iou"])
            row["boundary_f_vs_none"] = _relative(row["boundary_f"], base["boundary_f"])
        rows.append(row)
    return rows


def _relative(value: float, reference: float) -> float | None:
    return None if reference == 0 else (value - reference) / reference


# ------------------------------------------------------------------------------- cost
def cost_scene(seed: int) -> Scene:
    """The 1920x1080 test image of the cost section: one shape, its own seed stream."""
    rng = np.random.default_rng([split_seed(seed, "mask-quality-cost")])
    return render_scene(rng, *COST_SIZE, shapes=(1, 1))


def cost_rows(predictor: Predictor, repeats: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    """Per mode: ms per ``Predictor.render`` of one 2 MP mask (median, min, max), and the
    median minus refine="none"'s."""
    scene = cost_scene(seed)
    prepared = predictor.prepare_image(scene.image, guide=True)  # what segment() does
    pixels = prepared.pixels
    assert isinstance(pixels, torch.Tensor)  # a PIL image is decoded on the CPU
    with torch.inference_mode():
        conditionals = predictor.text_embeddings(list(scene.phrases))
        logits = predictor.logits(pixels.unsqueeze(0), conditionals)
    if logits.shape[-1] != GRID:  # the tiny model's 96 grid: time the released models'
        logits = F.interpolate(logits[None], size=(GRID, GRID), mode="bilinear")[0]
    guide = prepared.guide
    assert guide is not None and guide.shape == (3, *COST_SIZE) and guide.dtype == torch.uint8
    rows: list[dict[str, Any]] = []
    base: float | None = None
    for mode in MODES:
        row: dict[str, Any] = {"mode": mode, "median_ms": None, "min_ms": None,
                               "max_ms": None, "added_ms": None, "repeats": repeats,
                               "prompt": scene.phrases[0], "mask_area": None,
                               "error": None}  # fmt: skip
        post = PostProcess(refine=Refine(mode))

        def call(post: PostProcess = post) -> Segmentation:
            return predictor.render(logits, COST_SIZE, post=post, guide=guide)

        try:
            times = _timed(call, repeats, warmup)
            area = int(call().areas[0])  # not empty: the cost of a real mask
        except Exception as exc:  # one failing mode still leaves the others' figures
            row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        median = statistics.median(times)
        row.update(median_ms=median, min_ms=min(times), max_ms=max(times), mask_area=area)
        if base is None and mode == "none":
            base = median
        row["added_ms"] = None if base is None else median - base
        rows.append(row)
    return rows


def host_cost_rows(
    predictor: Predictor, repeats: int, warmup: int, seed: int
) -> list[dict[str, Any]]:
    """ms of the host-side pieces for the cost scene (one 2 MP mask): the JPEG decode a
    guide needs (vs the drafted one), each shape step, instances, feather, polygons."""
    scene = cost_scene(seed)
    buffer = io.BytesIO()
    scene.image.save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    small = scene.masks[0]
    # The steps work on the mask's bounding box: a whole-frame mask is their worst case.
    whole = ~small
    steps: list[tuple[str, Callable[[], object]]] = [
        ("decode 2 MP JPEG, drafted (no refine)", lambda: predictor.prepare_image(jpeg)),
        ("decode 2 MP JPEG, full + guide (refine)",
         lambda: predictor.prepare_image(jpeg, guide=True)),
    ]  # fmt: skip
    for label, mask in (("one shape", small), ("whole frame", whole)):
        soft = (mask * 200).astype(np.uint8)
        steps += [
            (f"{label}: min_area=100", lambda m=mask: shape_mask(m, PostProcess(min_area=100))),
            (f"{label}: fill_holes", lambda m=mask: shape_mask(m, PostProcess(fill_holes=True))),
            (f"{label}: erode=8", lambda m=mask: shape_mask(m, PostProcess(erode=8))),
            (f"{label}: dilate=8", lambda m=mask: shape_mask(m, PostProcess(dilate=8))),
            (f"{label}: instances", lambda m=mask, s=soft: split_instances(m, s, 100)),
            (f"{label}: feather=8", lambda m=mask: feather_alpha(m, 8)),
            (f"{label}: polygon, tolerance 1", lambda m=mask: mask_to_polygons(m, 1.0)),
        ]
    rows = []
    for name, call in steps:
        times = _timed(call, repeats, warmup)
        rows.append({"step": name, "median_ms": statistics.median(times),
                     "min_ms": min(times), "max_ms": max(times)})  # fmt: skip
    return rows


def host_cost_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| step | ms per 2 MP mask, median (min-max) |", "|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['step']} | {r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f}) |"
        )
    return "\n".join(lines)


def _timed(call: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


# ---------------------------------------------------------------------------- reports
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def quality_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| refine | fg IoU | vs none | boundary F (2 px) | vs none | area pred/true "
             "| masks | s | note |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['mode']} | {_fmt(r['fg_iou'], '.4f')} | {_fmt(r['fg_iou_vs_none'], '+.1%')} "
            f"| {_fmt(r['boundary_f'], '.4f')} | {_fmt(r['boundary_f_vs_none'], '+.1%')} "
            f"| {_fmt(r['area_ratio'], '.3f')} | {r['masks']} | {_fmt(r['seconds'], '.1f')} "
            f"| {r['error'] or ''} |"
        )
    return "\n".join(lines)


def cost_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| refine | ms per 2 MP mask, median (min-max) | added vs none, ms | note |",
             "|---|---|---|---|"]  # fmt: skip
    for r in rows:
        spread = "n/a" if r["median_ms"] is None else (
            f"{r['median_ms']:.1f} ({r['min_ms']:.1f}-{r['max_ms']:.1f})"
        )  # fmt: skip
        added = _fmt(r["added_ms"], "+.1f")
        lines.append(f"| {r['mode']} | {spread} | {added} | {r['error'] or ''} |")
    return "\n".join(lines)


def environment(threads: int, work_threads: int) -> dict[str, Any]:
    return {"cpu": cpu_model(), "host_cpus": os.cpu_count(), "torch_threads": threads,
            "work_threads": work_threads,
            "torch": torch.__version__, "python": platform.python_version(),
            "modes": list(MODES)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a checkpoint; default: train the tiny model")
    parser.add_argument("--steps", type=int, help="training steps (default 600; smoke 20)")
    parser.add_argument("--images", type=int, help="synthetic scenes (default 40; smoke 3)")
    parser.add_argument("--size", type=int, help="scene side in px (default 1024; smoke 256)")
    parser.add_argument("--repeats", type=int, help="timed renders per mode (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed renders per mode")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, cost section")
    parser.add_argument(
        "--work-threads", type=int, default=1, help="torch threads for training and scoring"
    )
    parser.add_argument(
        "--device", default="cpu",
        help="where the model, refinement and rendering run (cpu, cuda, ...); training "
        "always runs on the CPU. Default: %(default)s",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="tiny scale, for the tests")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    steps = args.steps or (20 if args.smoke else 600)
    count = args.images or (3 if args.smoke else 40)
    size = args.size or (256 if args.smoke else 1024)
    repeats = args.repeats or (3 if args.smoke else 15)
    warmup = min(args.warmup, 1) if args.smoke else args.warmup

    torch.set_num_threads(args.work_threads)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mask-quality-") as tmp:
        weights = args.weights or str(train_tiny(Path(tmp) / "run", steps))
        predictor = load_predictor(weights, device=args.device)
    trained_s = time.monotonic() - started
    env = environment(args.threads, args.work_threads)
    env["device"] = str(predictor.device)
    if predictor.device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(predictor.device)

    synthetic = scenes(count, size, args.seed)
    synthetic_items = [(s.image, s.phrases, s.masks) for s in synthetic]
    synthetic_rows = quality_rows(predictor, synthetic_items)
    oracle_rows = quality_rows(predictor, synthetic_items, oracle=True)
    photo_items = [(path, [prompt], [truth]) for _, path, prompt, truth in photos()]
    photo_rows = quality_rows(predictor, photo_items)
    photo_oracle_rows = quality_rows(predictor, photo_items, oracle=True)
    load_before = os.getloadavg()
    torch.set_num_threads(args.threads)
    costs = cost_rows(predictor, repeats, warmup, args.seed)
    host_costs = host_cost_rows(predictor, repeats, warmup, args.seed)
    env["load_average_around_cost"] = [load_before[0], os.getloadavg()[0]]

    result = {
        "bench": "mask_quality",
        "smoke": args.smoke,
        "environment": env,
        "weights": args.weights or f"random:tiny trained {steps} steps (README recipe)",
        "threshold": predictor.config.threshold,
        "synthetic": {"images": count, "size": [size, size], "supersample": SUPERSAMPLE,
                      "tolerance_px": TOLERANCE_PX, "rows": synthetic_rows},
        "oracle": {"images": count, "size": [size, size], "threshold": 0.5,
                   "rows": oracle_rows},
        "photos": {"images": [name for name, *_ in photos()], "rows": photo_rows,
                   "oracle_rows": photo_oracle_rows},
        "cost": {"size": list(COST_SIZE), "repeats": repeats, "warmup": warmup,
                 "prompt": costs[0]["prompt"], "rows": costs, "host_rows": host_costs},
        "train_s": None if args.weights else trained_s,
        "wall_s": time.monotonic() - started,
    }  # fmt: skip
    where = f"{env['device']}: {env.get('gpu', env['cpu'])}"
    print(f"mask quality on {where}, torch {env['torch']}, {args.work_threads} thread(s) "
          f"for training and scoring, {args.threads} for the cost section; "
          f"weights: {result['weights']}, threshold {result['threshold']:.2f}")  # fmt: skip
    print(f"\n### Synthetic scenes: {count} at {size}x{size}, anti-aliased "
          f"({SUPERSAMPLE}x supersampled), held-out seeds\n")  # fmt: skip
    print(quality_table(synthetic_rows))
    print(
        "\n### The same scenes, oracle maps: each truth area-averaged to the released "
        f"models' {GRID}x{GRID} grid, threshold 0.5 (the refiners alone)\n"
    )
    print(quality_table(oracle_rows))
    print("\n### Real photos (smoke check only: a model trained on shapes, not a quality "
          f"claim): {', '.join(result['photos']['images'])}\n")  # fmt: skip
    print(quality_table(photo_rows))
    print(
        f"\nThe photos with oracle maps (the hand-made masks at the {GRID}x{GRID} grid, "
        "threshold 0.5): the refiners on real edges, apart from the model\n"
    )
    print(quality_table(photo_oracle_rows))
    print(f"\n### CPU cost of Predictor.render, one {COST_SIZE[1]}x{COST_SIZE[0]} mask, "
          f"{args.threads} torch threads, {repeats} repeats\n")  # fmt: skip
    print(cost_table(costs))
    print("\nHost-side pieces (the same mask; decoding is the query image's, which refine "
          "needs in full)\n")  # fmt: skip
    print(host_cost_table(host_costs))
    before, after = env["load_average_around_cost"]
    print(f"\n1-min load average {before:.2f} before, {after:.2f} after the cost section"
          f" ({os.cpu_count()} CPUs): other work on the cores makes these times noisy")  # fmt: skip
    print(f"\nwall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
