"""training.metrics: hand-computed counts and ratios, AP integration, streaming and reduction."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from training.metrics import (
    DEFAULT_THRESHOLDS,
    SegmentationMetrics,
    average_precision,
    format_table,
    trapezoid,
)

# A coarse grid makes the hand computations below short; index 1 is t = 0.5.
GRID = (0.25, 0.5, 0.75)

# Two 2x3 samples. Sample A: foreground probs 0.9, 0.6, 0.3; background 0.2, 0.7, 0.1.
PROBS_A = [[0.9, 0.6, 0.2], [0.7, 0.1, 0.3]]
TARGET_A = [[1, 1, 0], [0, 0, 1]]
# Sample B: foreground probs 0.8, 0.4, 0.2, 0.9, 0.1; background 0.6.
PROBS_B = [[0.8, 0.4, 0.6], [0.2, 0.9, 0.1]]
TARGET_B = [[1, 1, 0], [1, 1, 1]]
# Negatives: C predicts nothing (IoU 1), D predicts one pixel at t <= 0.5 (IoU 0).
PROBS_C = [[0.1] * 3] * 2
PROBS_D = [[0.1, 0.6, 0.1], [0.1, 0.1, 0.1]]
EMPTY = [[0] * 3] * 2


def _batch(probs: list, targets: list) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(probs, dtype=torch.float32), torch.tensor(targets, dtype=torch.bool)


def _counts(metrics: SegmentationMetrics) -> np.ndarray:
    """TP, FP, FN, TN as an int [4, K] array (the documented counts_tensor layout)."""
    k = metrics.thresholds.size
    return metrics.counts_tensor()[: 4 * k].numpy().astype(np.int64).reshape(4, k)


def _assert_close(a: Any, b: Any) -> None:
    """Recursive equality of compute() results, floats up to rounding."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=1e-12)
    else:
        assert a == b


def test_default_grid_holds_service_threshold_exactly() -> None:
    assert len(DEFAULT_THRESHOLDS) == 19
    assert DEFAULT_THRESHOLDS[0] == 0.05 and DEFAULT_THRESHOLDS[-1] == 0.95
    assert 0.4 in DEFAULT_THRESHOLDS.tolist() and 0.5 in DEFAULT_THRESHOLDS.tolist()


def test_hand_counts_and_ratios_at_half() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([PROBS_A, PROBS_B], [TARGET_A, TARGET_B]))
    # t = 0.5: A has TP 2, FP 1, FN 1, TN 2; B has TP 2, FP 1, FN 3, TN 0.
    assert _counts(metrics)[:, 1].tolist() == [4, 2, 4, 2]
    # t = 0.25: A TP 3 FP 1 FN 0 TN 2; B TP 3 FP 1 FN 2 TN 0.
    assert _counts(metrics)[:, 0].tolist() == [6, 2, 2, 2]
    r = metrics.compute()
    assert r["fg_iou"][1] == pytest.approx(4 / 10)
    assert r["bg_iou"][1] == pytest.approx(2 / 8)
    assert r["miou"][1] == pytest.approx((4 / 10 + 2 / 8) / 2)
    assert r["binary_iou"][1] == pytest.approx((2 / 4 + 2 / 6) / 2)
    assert r["precision"][1] == pytest.approx(4 / 6)
    assert r["recall"][1] == pytest.approx(4 / 8)
    assert r["samples"] == 2


def test_binary_iou_counts_negatives() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([PROBS_A, PROBS_B], [TARGET_A, TARGET_B]))
    metrics.update(*_batch([PROBS_C, PROBS_D], [EMPTY, EMPTY]))
    r = metrics.compute()
    # t = 0.5: per-sample IoU A 1/2, B 1/3, C 1 (nothing to find, nothing predicted), D 0.
    assert r["binary_iou"][1] == pytest.approx((1 / 2 + 1 / 3 + 1 + 0) / 4)
    # Aggregated: D adds one FP, C and D add 6 + 5 TN.
    assert r["fg_iou"][1] == pytest.approx(4 / 11)
    assert r["bg_iou"][1] == pytest.approx(13 / 20)
    # t = 0.75: D's 0.6 is no longer predicted, so D scores 1 as well.
    assert r["binary_iou"][2] == pytest.approx((1 / 3 + 2 / 5 + 1 + 1) / 4)


def test_all_empty_set_ratios_are_one_and_ap_undefined() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([PROBS_C], [EMPTY]))
    r = metrics.compute()
    assert r["fg_iou"] == [1.0] * 3 and r["binary_iou"] == [1.0] * 3
    assert r["precision"] == [1.0] * 3 and r["recall"] == [1.0] * 3
    assert r["ap"] is None


def test_prediction_is_strictly_greater_than_threshold() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([[[0.5, 0.25]]], [[[1, 0]]]))
    tp, fp, fn, _ = _counts(metrics)
    # 0.5 is predicted at 0.25 but not at 0.5; 0.25 is predicted nowhere.
    assert tp.tolist() == [1, 0, 0] and fn.tolist() == [0, 1, 1]
    assert fp.tolist() == [0, 0, 0]


def test_float32_comparison_matches_service_at_default_threshold() -> None:
    probs = torch.tensor([[[0.4, 0.35]]], dtype=torch.float32)
    metrics = SegmentationMetrics()
    metrics.update(probs, torch.ones_like(probs, dtype=torch.bool))
    tp = _counts(metrics)[0]
    grid = DEFAULT_THRESHOLDS.tolist()
    # Same decisions as the service's ``probs > threshold`` with a Python float.
    assert tp.tolist() == [int((probs > t).sum()) for t in grid]
    assert tp[grid.index(0.4)] == 0 and tp[grid.index(0.35)] == 1


def test_best_threshold_picks_grid_point() -> None:
    metrics = SegmentationMetrics()
    # Only 0.60 separates foreground (0.62) from the 0.58 background pixel.
    metrics.update(*_batch([[[0.62, 0.62, 0.58, 0.3]]], [[[1, 1, 0, 0]]]))
    r = metrics.compute()
    assert r["best_threshold"] == pytest.approx(0.6)
    assert r["best_fg_iou"] == 1.0
    assert r["fg_iou_at"] == pytest.approx({"0.3": 2 / 3, "0.4": 2 / 3, "0.5": 2 / 3})


def test_best_threshold_ties_go_to_lower() -> None:
    metrics = SegmentationMetrics()
    # IoU 1 for every t in [0.30, 0.70]; 0.30 itself is not above 0.30.
    metrics.update(*_batch([[[0.72, 0.3]]], [[[1, 0]]]))
    assert metrics.compute()["best_threshold"] == pytest.approx(0.3)


def test_ap_perfect_separation_is_one() -> None:
    metrics = SegmentationMetrics()
    metrics.update(*_batch([[[0.97, 1.0, 0.02, 0.0]]], [[[1, 1, 0, 0]]]))
    assert metrics.compute()["ap"] == pytest.approx(1.0)


def test_ap_hand_integral_uniform() -> None:
    # Foreground 0.9, 0.9, 0.6, 0.6; background 0.6 x4 and 0.3.
    probs = [[[0.9, 0.9, 0.6], [0.6, 0.6, 0.6], [0.6, 0.6, 0.3]]]
    target = [[[1, 1, 1], [1, 0, 0], [0, 0, 0]]]
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch(probs, target))
    r = metrics.compute()
    # (recall, precision): t=.75 (0.5, 1), t=.5 (1, 1/2), t=.25 (1, 4/9) dropped (same recall,
    # lower precision), start (0, 1). Trapezoid on 0, .5, 1: 0.5 * 1 + 0.5 * (1 + 1/2) / 2
    # = 7/8.
    assert r["recall"] == pytest.approx([1.0, 1.0, 0.5])
    assert r["precision"] == pytest.approx([4 / 9, 1 / 2, 1.0])
    assert r["ap"] == pytest.approx(7 / 8)


def test_trapezoid() -> None:
    x = np.array([0.0, 0.1, 0.4, 1.0])
    assert trapezoid(2 * x, x) == pytest.approx(1.0)  # exact for straight lines
    assert trapezoid(np.array([1.0, 3.0]), np.array([0.0, 2.0])) == pytest.approx(4.0)
    assert trapezoid(np.array([5.0]), np.array([0.3])) == 0.0


def test_average_precision_survives_a_recall_jump() -> None:
    """Regression: a real coarse-grid curve jumping from recall 0 to 0.65 between two
    thresholds (Simpson's parabolas gave a negative area here, clipped to 0)."""
    recall = np.array([0.933, 0.853, 0.799, 0.649, 0.0, 0.0])
    precision = np.array([0.379, 0.456, 0.498, 0.586, 0.667, 1.0])
    expected = (
        0.649 * (1.0 + 0.586) / 2
        + 0.150 * (0.586 + 0.498) / 2
        + 0.054 * (0.498 + 0.456) / 2
        + 0.080 * (0.456 + 0.379) / 2
    )
    assert average_precision(precision, recall) == pytest.approx(expected)
    assert 0.5 < expected < 0.8


def test_average_precision_uneven_points() -> None:
    # Points (0, 1), (0.4, 1), (0.6, 0.75): 0.4 * 1 + 0.2 * (1 + 0.75) / 2 = 0.575.
    precision = np.array([0.75, 2 / 3, 1.0])
    recall = np.array([0.6, 0.4, 0.4])
    assert average_precision(precision, recall) == pytest.approx(0.575)


def test_per_prompt_breakdown() -> None:
    metrics = SegmentationMetrics(GRID)
    targets = [TARGET_A, TARGET_B, EMPTY, EMPTY]
    probs, targets = _batch([PROBS_A, PROBS_B, PROBS_C, PROBS_D], targets)
    metrics.update(probs, targets, ["cat", "dog", "cat", "bird"])
    r = metrics.compute()
    # Global fg IoU: t=.25 6/11, t=.5 4/11, t=.75 3/8 -> best 0.25.
    assert r["best_threshold"] == 0.25 and r["best_fg_iou"] == pytest.approx(6 / 11)
    assert list(r["per_prompt"]) == ["cat", "bird", "dog"]  # most samples first, then name
    cat, dog, bird = (r["per_prompt"][p] for p in ("cat", "dog", "bird"))
    assert cat["samples"] == 2 and cat["best_fg_iou"] == pytest.approx(3 / 4)
    assert cat["binary_iou"] == pytest.approx((3 / 4 + 1) / 2)
    # dog: fg IoU 3/6, 2/6, 2/5; (recall, precision) (3/5, 3/4), (2/5, 2/3), (2/5, 1) -> AP 0.6.
    assert dog["samples"] == 1 and dog["best_fg_iou"] == pytest.approx(0.5)
    assert dog["fg_iou"] == pytest.approx(0.5) and dog["ap"] == pytest.approx(0.575)
    assert bird == {
        "samples": 1,
        "best_fg_iou": 1.0,
        "best_threshold": 0.75,
        "fg_iou": 0.0,
        "binary_iou": 0.0,
        "ap": None,
    }


def _random_batches(seed: int) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Batches of varying size and shape; a third of the pixels sit exactly on grid points."""
    rng = np.random.default_rng(seed)
    batches = []
    for n, h, w in [(3, 5, 7), (1, 9, 4), (4, 6, 6), (2, 1, 11)]:
        probs = rng.random((n, h, w)).astype(np.float32)
        on_grid = rng.random((n, h, w)) < 1 / 3
        probs[on_grid] = (rng.integers(0, 21, on_grid.sum()) / 20).astype(np.float32)
        targets = rng.random((n, h, w)) < probs * rng.random()
        targets[rng.random(n) < 0.3] = False  # some negatives
        prompts = [str(p) for p in rng.choice(["a", "b", "c"], n)]
        batches.append((probs, targets, prompts))
    return batches


def _brute_force(batches: list, grid: np.ndarray) -> dict[str, list[float]]:
    """Per-threshold loop with plain numpy; 0/0 -> 1 as documented."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else 1.0

    out: dict[str, list[float]] = {k: [] for k in ("fg", "bg", "binary", "precision", "recall")}
    for t in grid.tolist():  # Python floats: compared in float32, like the service's tensors
        tp = fp = fn = tn = 0
        ious = []
        for probs, targets, _ in batches:
            for p, g in zip(probs, targets, strict=True):
                pred = p > t
                s_tp, s_fp, s_fn = (pred & g).sum(), (pred & ~g).sum(), (~pred & g).sum()
                tp, fp, fn, tn = tp + s_tp, fp + s_fp, fn + s_fn, tn + (~pred & ~g).sum()
                ious.append(ratio(s_tp, s_tp + s_fp + s_fn))
        out["fg"].append(ratio(tp, tp + fp + fn))
        out["bg"].append(ratio(tn, tn + fn + fp))
        out["binary"].append(float(np.mean(ious)))
        out["precision"].append(ratio(tp, tp + fp))
        out["recall"].append(ratio(tp, tp + fn))
    return out


def test_vectorised_matches_brute_force() -> None:
    batches = _random_batches(0)
    metrics = SegmentationMetrics()
    for probs, targets, prompts in batches:
        metrics.update(probs, targets, prompts)
    r = metrics.compute()
    ref = _brute_force(batches, DEFAULT_THRESHOLDS)
    assert r["fg_iou"] == pytest.approx(ref["fg"])
    assert r["bg_iou"] == pytest.approx(ref["bg"])
    assert r["miou"] == pytest.approx((np.array(ref["fg"]) + np.array(ref["bg"])) / 2)
    assert r["binary_iou"] == pytest.approx(ref["binary"])
    assert r["precision"] == pytest.approx(ref["precision"])
    assert r["recall"] == pytest.approx(ref["recall"])
    best = int(np.argmax(ref["fg"]))
    assert r["best_threshold"] == DEFAULT_THRESHOLDS[best]
    assert r["samples"] == sum(len(p) for p, _, _ in batches)


def test_streaming_equals_single_update() -> None:
    batches = _random_batches(1)[:1]  # one batch of 3 same-shaped samples
    probs, targets, prompts = batches[0]
    whole = SegmentationMetrics()
    whole.update(torch.from_numpy(probs), torch.from_numpy(targets), prompts)
    chunked = SegmentationMetrics()
    for i in range(len(probs)):  # numpy input, one sample at a time
        chunked.update(probs[i : i + 1], targets[i : i + 1], prompts[i : i + 1])
    assert np.array_equal(_counts(whole), _counts(chunked))
    _assert_close(whole.compute(), chunked.compute())


def test_merge_and_count_reduction_equal_single_accumulator() -> None:
    batches = _random_batches(2)
    single, parts = SegmentationMetrics(), [SegmentationMetrics(), SegmentationMetrics()]
    for i, (probs, targets, prompts) in enumerate(batches):
        single.update(probs, targets, prompts)
        parts[i % 2].update(probs, targets, prompts)
    expected = single.compute()
    # What all_reduce(SUM) over two ranks would produce.
    summed = parts[0].counts_tensor() + parts[1].counts_tensor()
    reduced = SegmentationMetrics.from_counts(summed).compute()
    assert reduced["per_prompt"] == {}  # per-prompt stats are not reduced across ranks
    _assert_close({**expected, "per_prompt": {}}, reduced)
    merged = SegmentationMetrics().merge(parts[0]).merge(parts[1])
    _assert_close(expected, merged.compute())


def test_compute_is_json_serialisable() -> None:
    metrics = SegmentationMetrics()
    for probs, targets, prompts in _random_batches(3):
        metrics.update(probs, targets, prompts)
    result = metrics.compute()
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_format_table_contains_numbers() -> None:
    metrics = SegmentationMetrics(GRID)
    probs, targets = _batch([PROBS_A, PROBS_B, PROBS_C], [TARGET_A, TARGET_B, EMPTY])
    metrics.update(probs, targets, ["cat", "dog", "cat"])
    r = metrics.compute()
    text = format_table(r)
    assert "0.4000" in text  # fg IoU at 0.5 (4/10)
    assert "0.6000" in text  # best fg IoU at 0.25 (6/10)
    assert f"AP {r['ap']:.4f}" in text
    assert "cat" in text and "dog" in text
    short = format_table(r, per_prompt_limit=1)
    assert "cat" in short and "dog" not in short


@pytest.mark.parametrize(
    ("probs", "targets", "prompts"),
    [
        (torch.full((1, 2, 2), 1.5), torch.ones(1, 2, 2, dtype=torch.bool), None),
        (torch.full((1, 2, 2), float("nan")), torch.ones(1, 2, 2, dtype=torch.bool), None),
        (torch.zeros(1, 2, 2), torch.ones(1, 2, 3, dtype=torch.bool), None),
        (torch.zeros(2, 2, 2), torch.ones(2, 2, 2, dtype=torch.bool), ["only one"]),
    ],
)
def test_update_rejects_bad_input(probs, targets, prompts) -> None:
    with pytest.raises(ValueError):
        SegmentationMetrics().update(probs, targets, prompts)


def test_compute_without_samples_raises() -> None:
    with pytest.raises(ValueError, match="no samples"):
        SegmentationMetrics().compute()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_input_matches_cpu() -> None:
    probs, targets, prompts = _random_batches(4)[0]
    cpu, cuda = SegmentationMetrics(), SegmentationMetrics()
    cpu.update(torch.from_numpy(probs), torch.from_numpy(targets), prompts)
    cuda.update(torch.from_numpy(probs).cuda(), torch.from_numpy(targets).cuda(), prompts)
    _assert_close(cpu.compute(), cuda.compute())
