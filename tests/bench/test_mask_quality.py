"""The mask-quality bench (``bench/mask_quality.py``) at smoke scale, and its metrics.

The smoke run is the bench's whole code path (20 training steps of the tiny model, three
256x256 scenes with the model's and with oracle maps, the photos, three timed renders per
mode) as a subprocess like a person
runs it: every refine mode must have its row with finite scores in [0, 1]. The boundary-F
unit tests pin its tolerance and its conventions for empty masks.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench.mask_quality import MODES, Scores, boundary, boundary_f, render_scene

ROOT = Path(__file__).resolve().parents[2]


def _square(size: int = 64, top: int = 16, left: int = 16, side: int = 30) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _disk(size: int = 96, cy: float = 48.0, cx: float = 48.0, r: float = 25.0) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_identical_masks_score_one():
    for mask in (_square(), _disk()):
        assert boundary_f(mask, mask) == (1.0, 1.0, 1.0)


def test_one_pixel_shift_is_within_the_two_pixel_tolerance():
    for mask in (_square(), _disk()):
        for dy, dx in ((1, 0), (0, 1), (1, 1), (-1, 0)):
            shifted = np.roll(mask, (dy, dx), axis=(0, 1))
            assert boundary_f(shifted, mask)[2] == 1.0


def test_five_pixel_shift_is_clearly_penalised():
    for mask in (_square(), _disk()):
        _, _, f = boundary_f(np.roll(mask, 5, axis=1), mask)
        assert f < 0.8
        _, _, f_loose = boundary_f(np.roll(mask, 5, axis=1), mask, tolerance=5.0)
        assert f_loose == 1.0


def test_empty_masks_follow_the_davis_conventions():
    empty, full = np.zeros((32, 32), bool), _square(32, 8, 8, 10)
    assert boundary_f(empty, empty) == (1.0, 1.0, 1.0)  # nothing to find, nothing found
    assert boundary_f(empty, full) == (1.0, 0.0, 0.0)  # a missed object
    assert boundary_f(full, empty) == (0.0, 1.0, 0.0)  # a hallucinated one


def test_boundary_is_the_inner_edge_and_not_the_frame():
    mask = _square(16, 4, 4, 6)
    edge = boundary(mask)
    assert edge.sum() == 4 * 6 - 4 and not edge[5:9, 5:9].any()
    assert not boundary(np.ones((8, 8), bool)).any()  # the frame is not an edge


def test_fg_iou_is_the_official_one_summed_over_masks():
    scores = Scores()
    a, b = _square(), np.roll(_square(), 3, axis=1)
    scores.add(a, a)
    scores.add(b, a)
    tp = a.sum() + (a & b).sum()
    union = a.sum() + (a | b).sum()
    assert math.isclose(scores.fg_iou, tp / (1 + union))


def test_scenes_have_anti_aliased_edges_and_masks_at_their_size():
    scene = render_scene(np.random.default_rng(3), 128, 160)
    assert scene.image.size == (160, 128) and scene.phrases
    pixels = np.asarray(scene.image).reshape(-1, 3)
    for mask in scene.masks:
        assert mask.shape == (128, 160) and mask.any()
    # Blended edge pixels: colours that are neither a shape's tint nor near-grey.
    chroma = pixels.max(1).astype(int) - pixels.min(1)
    assert ((chroma > 40) & (chroma < 120)).sum() > 10


def test_smoke_run_gives_every_mode_finite_scores(tmp_path):
    out = tmp_path / "quality.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        # One torch thread: the scores do not depend on it, and two threads on a shared
        # 2-core CI machine can be 100x slower (each op waits for a descheduled thread).
        [sys.executable, "bench/mask_quality.py", "--smoke", "--threads", "1", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wall time" in done.stdout and "smoke check only" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert result["environment"]["modes"] == list(MODES) == ["none", "guided", "pamr"]
    for section, rows_key in (("synthetic", "rows"), ("oracle", "rows"), ("photos", "rows"),
                         ("photos", "oracle_rows")):  # fmt: skip
        rows = {r["mode"]: r for r in result[section][rows_key]}
        assert set(rows) == set(MODES), rows
        for mode, row in rows.items():
            assert row["error"] is None, (section, mode, row["error"])
            for key in ("fg_iou", "boundary_f"):
                value = row[key]
                assert value is not None and math.isfinite(value) and 0 <= value <= 1, row
            assert row["masks"] > 0
    oracle = {r["mode"]: r for r in result["oracle"]["rows"]}
    assert oracle["none"]["fg_iou"] > 0.95  # the truth at 352 px, upsampled
    costs = {r["mode"]: r for r in result["cost"]["rows"]}
    assert set(costs) == set(MODES)
    for row in costs.values():
        assert row["error"] is None and row["median_ms"] > 0
        assert row["min_ms"] <= row["median_ms"] <= row["max_ms"]
