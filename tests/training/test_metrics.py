"""training.metrics against the official CLIPSeg formulas, computed by hand.

Every expected number below is worked out from the definitions (sums over the set, +1 in
every denominator) in the comments, not by calling the implementation.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from clipseg_serve.training.metrics import (
    DEFAULT_THRESHOLDS,
    SegmentationMetrics,
    average_precision,
)
from clipseg_serve.training.report import format_table

# A coarse grid keeps the hand computations short; index 1 is t = 0.5.
GRID = (0.25, 0.5, 0.75)

# Two 2x3 samples. Sample A: foreground probs 0.9, 0.6, 0.3; background 0.2, 0.7, 0.1.
PROBS_A = [[0.9, 0.6, 0.2], [0.7, 0.1, 0.3]]
TARGET_A = [[1, 1, 0], [0, 0, 1]]
# Sample B: foreground probs 0.8, 0.4, 0.2, 0.9, 0.1; background 0.6.
PROBS_B = [[0.8, 0.4, 0.6], [0.2, 0.9, 0.1]]
TARGET_B = [[1, 1, 0], [1, 1, 1]]
# Negatives (empty targets): C predicts nothing; D predicts one pixel (0.6) at t <= 0.5.
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


def test_default_grid_is_the_official_one() -> None:
    # np.linspace(0, 1, 51)[1:-1]: 0.02, 0.04, ..., 0.98; the fixed thresholds are on it.
    assert len(DEFAULT_THRESHOLDS) == 49
    assert DEFAULT_THRESHOLDS[0] == pytest.approx(0.02)
    assert DEFAULT_THRESHOLDS[-1] == pytest.approx(0.98)
    assert np.allclose(np.diff(DEFAULT_THRESHOLDS), 0.02)
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        assert t in DEFAULT_THRESHOLDS.tolist()


def test_hand_counts_and_official_ratios() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([PROBS_A, PROBS_B], [TARGET_A, TARGET_B]))
    # t = 0.25: A TP 3 FP 1 FN 0 TN 2; B TP 3 FP 1 FN 2 TN 0.
    # t = 0.5:  A TP 2 FP 1 FN 1 TN 2; B TP 2 FP 1 FN 3 TN 0.
    # t = 0.75: A TP 1 FP 0 FN 2 TN 3; B TP 2 FP 0 FN 3 TN 1.
    assert _counts(metrics).T.tolist() == [[6, 2, 2, 2], [4, 2, 4, 2], [3, 0, 5, 4]]
    r = metrics.compute()
    # fg IoU = TP / (1 + TP + FP + FN); bg IoU = TN / (1 + TN + FN + FP).
    assert r["fg_iou"] == pytest.approx([6 / 11, 4 / 11, 3 / 9])
    assert r["bg_iou"] == pytest.approx([2 / 7, 2 / 9, 4 / 10])
    assert r["binary_iou"] == pytest.approx(
        [(6 / 11 + 2 / 7) / 2, (4 / 11 + 2 / 9) / 2, (3 / 9 + 4 / 10) / 2]
    )
    # precision = TP / (1 + TP + FP), recall = TP / (1 + TP + FN).
    assert r["precision"] == pytest.approx([6 / 9, 4 / 7, 3 / 4])
    assert r["recall"] == pytest.approx([6 / 9, 4 / 9, 3 / 9])
    assert r["best_threshold"] == 0.25 and r["best_fg_iou"] == pytest.approx(6 / 11)
    # binary IoU: 0.4151 at 0.25, 0.2929 at 0.5, 0.3667 at 0.75.
    assert r["best_binary_iou"] == pytest.approx((6 / 11 + 2 / 7) / 2)
    assert r["best_binary_iou_threshold"] == 0.25
    assert r["samples"] == 2


def test_fixed_thresholds_are_reported_on_the_default_grid() -> None:
    metrics = SegmentationMetrics()
    # Foreground 0.45 and 0.15; background 0.25. At 0.1: TP 2 FP 1 FN 0 -> 2/4; at 0.2:
    # TP 1 FP 1 FN 1 -> 1/4; at 0.3 and 0.4: TP 1 FP 0 FN 1 -> 1/3; at 0.5: 0 / 3.
    metrics.update(*_batch([[[0.45, 0.15, 0.25]]], [[[1, 1, 0]]]))
    r = metrics.compute()
    expected = {"0.1": 2 / 4, "0.2": 1 / 4, "0.3": 1 / 3, "0.4": 1 / 3, "0.5": 0.0}
    assert {t: r[f"fg_iou_{t}"] for t in expected} == pytest.approx(expected)
    # bg IoU at 0.1: TN 0 FN 0 FP 1 -> 0; at 0.3: TN 1 FN 1 FP 0 -> 1/3.
    assert r["binary_iou_0.1"] == pytest.approx(0.5 * 2 / 4)
    assert r["binary_iou_0.3"] == pytest.approx(0.5 * 1 / 3 + 0.5 * 1 / 3)
    assert r["miou_0.5"] is None  # no class labels given


def test_miou_is_the_mean_over_classes_not_samples() -> None:
    metrics = SegmentationMetrics(GRID)
    probs, targets = _batch([PROBS_A, PROBS_B, PROBS_D], [TARGET_A, TARGET_B, EMPTY])
    metrics.update(probs, targets, labels=["cat", "cat", "dog"])
    r = metrics.compute()
    # cat = A + B summed: fg IoU 6/11, 4/11, 3/9. dog = D: TP 0, FP 1, 1, 0 -> 0/2, 0/2, 0/1.
    assert r["miou"] == pytest.approx([(6 / 11 + 0) / 2, (4 / 11 + 0) / 2, (3 / 9 + 0) / 2])
    assert r["best_miou"] == pytest.approx(3 / 11) and r["best_miou_threshold"] == 0.25
    assert r["miou_0.5"] == pytest.approx(2 / 11)
    assert r["classes"] == 2
    # Per-sample classes give the mean of the samples' own (+1) IoUs instead.
    per_sample = SegmentationMetrics(GRID)
    per_sample.update(probs, targets, labels=[0, 1, 2])
    # t = 0.5: A 2 / (1 + 2 + 1 + 1), B 2 / (1 + 2 + 1 + 3), D 0.
    assert per_sample.compute()["miou"][1] == pytest.approx((2 / 5 + 2 / 7 + 0) / 3)


def test_miou_needs_a_label_for_every_sample() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([PROBS_A, PROBS_B], [TARGET_A, TARGET_B]))
    r = metrics.compute()
    assert r["miou"] is None and r["best_miou"] is None and r["classes"] is None
    partly = SegmentationMetrics(GRID)
    partly.update(*_batch([PROBS_A, PROBS_B], [TARGET_A, TARGET_B]), labels=["cat", None])
    assert partly.compute()["miou"] is None


def test_negatives_score_zero_foreground_iou() -> None:
    # The +1 of the official definition: nothing to find and nothing predicted is 0/1.
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([PROBS_C], [EMPTY]))
    r = metrics.compute()
    assert r["fg_iou"] == [0.0] * 3
    assert r["bg_iou"] == pytest.approx([6 / 7] * 3)
    assert r["precision"] == [0.0] * 3 and r["recall"] == [0.0] * 3
    assert r["ap"] is None and r["ap_trapezoid"] is None  # nothing is ever predicted


def test_ap_simpson_over_deduplicated_sorted_pairs() -> None:
    # Foreground 0.7, 0.5, 0.3, 0.1, 0.1 (5 pixels, recall = TP / 6); background 0.5 x2,
    # 0.3 x3, 0.0 x2. Grid 0.2, 0.4, 0.6, 0.8:
    #   t=0.8: TP 0 FP 0 -> no prediction, left out
    #   t=0.6: TP 1 FP 0 -> (1/6, 1/2);  t=0.4: TP 2 FP 2 -> (2/6, 2/5);
    #   t=0.2: TP 3 FP 5 -> (3/6, 3/9).
    probs = [[[0.7, 0.5, 0.3, 0.1, 0.1, 0.5, 0.5, 0.3, 0.3, 0.3, 0.0, 0.0]]]
    target = [[[1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]]]
    metrics = SegmentationMetrics((0.2, 0.4, 0.6, 0.8))
    metrics.update(*_batch(probs, target))
    r = metrics.compute()
    assert np.allclose(r["pr_curve"], [[1 / 6, 1 / 2], [2 / 6, 2 / 5], [3 / 6, 3 / 9]])
    # Simpson, h = 1/6: h/3 (y0 + 4 y1 + y2) = 1/18 (1/2 + 8/5 + 1/3) = 73/540.
    assert r["ap"] == pytest.approx(73 / 540)
    # Trapezoid: h (y0/2 + y1 + y2/2) = 1/6 (1/4 + 2/5 + 1/6) = 49/360.
    assert r["ap_trapezoid"] == pytest.approx(49 / 360)


def test_pr_curve_removes_duplicates_and_breaks_recall_ties_by_precision() -> None:
    # Foreground 0.9, 0.9, 0.6, 0.6; background 0.6 x4 and 0.3; grid 0.2, 0.25, 0.5, 0.75.
    # t=0.2 and t=0.25 both: TP 4 FP 5 -> (4/5, 4/10), one pair; t=0.5: TP 4 FP 4 ->
    # (4/5, 4/9); t=0.75: TP 2 FP 0 -> (2/5, 2/3).
    probs = [[[0.9, 0.9, 0.6], [0.6, 0.6, 0.6], [0.6, 0.6, 0.3]]]
    target = [[[1, 1, 1], [1, 0, 0], [0, 0, 0]]]
    metrics = SegmentationMetrics((0.2, 0.25, 0.5, 0.75))
    metrics.update(*_batch(probs, target))
    curve = metrics.compute()["pr_curve"]
    assert np.allclose(curve, [[2 / 5, 2 / 3], [4 / 5, 4 / 10], [4 / 5, 4 / 9]])


def test_simpson_ap_is_exact_on_a_known_curve() -> None:
    """Simpson's rule integrates a parabola exactly, even on uneven points, for odd and
    even numbers of points; the trapezoid rule does not."""
    for recall in ([0.0, 0.2, 0.5, 0.7, 1.0], [0.0, 0.3, 0.6, 1.0], [0.0, 0.5, 1.0]):
        r = np.array(recall)
        curve = np.stack([r, 1 - r**2], axis=1)  # area under 1 - r^2 on [0, 1] = 2/3
        ap, ap_trapezoid = average_precision(curve)
        assert ap == pytest.approx(2 / 3)
        assert ap_trapezoid < 2 / 3 - 0.01
    assert average_precision(np.zeros((0, 2))) == (None, None)
    assert average_precision(np.array([[0.5, 0.5]])) == (0.0, 0.0)  # one point: no area


def test_prediction_is_strictly_greater_than_threshold() -> None:
    metrics = SegmentationMetrics(GRID)
    metrics.update(*_batch([[[0.5, 0.25]]], [[[1, 0]]]))
    tp, fp, fn, _ = _counts(metrics)
    # 0.5 is predicted at 0.25 but not at 0.5; 0.25 is predicted nowhere.
    assert tp.tolist() == [1, 0, 0] and fn.tolist() == [0, 1, 1]
    assert fp.tolist() == [0, 0, 0]


def test_float32_comparison_matches_service_at_default_threshold() -> None:
    probs = torch.tensor([[[0.4, 0.39]]], dtype=torch.float32)
    metrics = SegmentationMetrics()
    metrics.update(probs, torch.ones_like(probs, dtype=torch.bool))
    tp = _counts(metrics)[0]
    grid = DEFAULT_THRESHOLDS.tolist()
    # Same decisions as the service's ``probs > threshold`` with a Python float.
    assert tp.tolist() == [int((probs > t).sum()) for t in grid]
    assert tp[grid.index(0.4)] == 0 and tp[grid.index(0.4) - 1] == 2


def test_best_threshold_ties_go_to_lower() -> None:
    metrics = SegmentationMetrics()
    # Foreground 0.63 x2, background 0.57: perfect at t = 0.58, 0.60, 0.62 -> 2/3 each.
    metrics.update(*_batch([[[0.63, 0.63, 0.57, 0.3]]], [[[1, 1, 0, 0]]]))
    r = metrics.compute()
    assert r["best_threshold"] == pytest.approx(0.58)
    assert r["best_fg_iou"] == pytest.approx(2 / 3)


def test_per_prompt_breakdown() -> None:
    metrics = SegmentationMetrics(GRID)
    targets = [TARGET_A, TARGET_B, EMPTY, EMPTY]
    probs, targets = _batch([PROBS_A, PROBS_B, PROBS_C, PROBS_D], targets)
    metrics.update(probs, targets, ["cat", "dog", "cat", "bird"])
    r = metrics.compute()
    # Global: TP 6/4/3, FP 3/3/0 (D adds one at t <= 0.5), FN 2/4/5
    # -> fg IoU 6/12, 4/12, 3/9: best 0.25.
    assert r["best_threshold"] == 0.25 and r["best_fg_iou"] == pytest.approx(1 / 2)
    assert list(r["per_prompt"]) == ["cat", "bird", "dog"]  # most samples first, then name
    cat, dog, bird = (r["per_prompt"][p] for p in ("cat", "dog", "bird"))
    # cat = A + C: TP 3/2/1, FP 1/1/0, FN 0/1/2 -> fg IoU 3/5, 2/5, 1/4.
    assert cat["samples"] == 2 and cat["best_fg_iou"] == pytest.approx(3 / 5)
    # cat's (recall, precision): (3/4, 3/5), (2/4, 2/4), (1/4, 1/2): equally spaced,
    # Simpson = (1/4)/3 (1/2 + 4 * 1/2 + 3/5) = 31/120.
    assert cat["ap"] == pytest.approx(31 / 120)
    # dog = B: fg IoU 3/7, 2/7, 2/6.
    assert dog["samples"] == 1 and dog["best_fg_iou"] == pytest.approx(3 / 7)
    # bird = D: no foreground; its one pair (0, 0) has no area.
    assert bird == {
        "samples": 1,
        "best_fg_iou": 0.0,
        "best_threshold": 0.25,
        "fg_iou": 0.0,
        "ap": 0.0,
    }


def _random_batches(seed: int) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
    """Batches of varying size and shape; a third of the pixels sit exactly on grid points."""
    rng = np.random.default_rng(seed)
    batches = []
    for n, h, w in [(3, 5, 7), (1, 9, 4), (4, 6, 6), (2, 1, 11)]:
        probs = rng.random((n, h, w)).astype(np.float32)
        on_grid = rng.random((n, h, w)) < 1 / 3
        probs[on_grid] = (rng.integers(0, 51, on_grid.sum()) / 50).astype(np.float32)
        targets = rng.random((n, h, w)) < probs * rng.random()
        targets[rng.random(n) < 0.3] = False  # some negatives
        prompts = [str(p) for p in rng.choice(["a", "b", "c"], n)]
        batches.append((probs, targets, prompts))
    return batches


def _brute_force(batches: list, grid: np.ndarray) -> dict[str, list[float]]:
    """Per-threshold loop with plain numpy on the official formulas; classes = prompts."""
    out: dict[str, list[float]] = {k: [] for k in ("fg", "bg", "miou", "precision", "recall")}
    for t in grid.tolist():  # Python floats: compared in float32, like the service's tensors
        tp = fp = fn = tn = 0
        per_class: dict[str, list[int]] = {}
        for probs, targets, prompts in batches:
            for p, g, prompt in zip(probs, targets, prompts, strict=True):
                pred = p > t
                s_tp, s_fp, s_fn = (pred & g).sum(), (pred & ~g).sum(), (~pred & g).sum()
                tp, fp, fn, tn = tp + s_tp, fp + s_fp, fn + s_fn, tn + (~pred & ~g).sum()
                c = per_class.setdefault(prompt, [0, 0, 0])
                c[0], c[1], c[2] = c[0] + s_tp, c[1] + s_fp, c[2] + s_fn
        out["fg"].append(tp / (1 + tp + fp + fn))
        out["bg"].append(tn / (1 + tn + fn + fp))
        out["miou"].append(np.mean([a / (1 + a + b + c) for a, b, c in per_class.values()]))
        out["precision"].append(tp / (1 + tp + fp))
        out["recall"].append(tp / (1 + tp + fn))
    return out


def test_vectorised_matches_brute_force() -> None:
    batches = _random_batches(0)
    metrics = SegmentationMetrics()
    for probs, targets, prompts in batches:
        metrics.update(probs, targets, prompts, labels=prompts)
    r = metrics.compute()
    ref = _brute_force(batches, DEFAULT_THRESHOLDS)
    assert r["fg_iou"] == pytest.approx(ref["fg"])
    assert r["bg_iou"] == pytest.approx(ref["bg"])
    assert r["binary_iou"] == pytest.approx((np.array(ref["fg"]) + np.array(ref["bg"])) / 2)
    assert r["miou"] == pytest.approx(ref["miou"])
    assert r["precision"] == pytest.approx(ref["precision"])
    assert r["recall"] == pytest.approx(ref["recall"])
    best = int(np.argmax(ref["fg"]))
    assert r["best_threshold"] == DEFAULT_THRESHOLDS[best]
    assert r["samples"] == sum(len(p) for p, _, _ in batches)


def test_streaming_equals_single_update() -> None:
    probs, targets, prompts = _random_batches(1)[0]  # one batch of 3 same-shaped samples
    whole = SegmentationMetrics()
    whole.update(torch.from_numpy(probs), torch.from_numpy(targets), prompts, prompts)
    chunked = SegmentationMetrics()
    for i in range(len(probs)):  # numpy input, one sample at a time
        s = slice(i, i + 1)
        chunked.update(probs[s], targets[s], prompts[s], prompts[s])
    assert np.array_equal(_counts(whole), _counts(chunked))
    _assert_close(whole.compute(), chunked.compute())


def test_merge_and_count_reduction_equal_single_accumulator() -> None:
    batches = _random_batches(2)
    single, parts = SegmentationMetrics(), [SegmentationMetrics(), SegmentationMetrics()]
    for i, (probs, targets, prompts) in enumerate(batches):
        single.update(probs, targets, prompts, prompts)
        parts[i % 2].update(probs, targets, prompts, prompts)
    expected = single.compute()
    merged = SegmentationMetrics().merge(parts[0]).merge(parts[1])
    _assert_close(expected, merged.compute())
    # What all_reduce(SUM) over two ranks would produce: global counts only.
    summed = parts[0].counts_tensor() + parts[1].counts_tensor()
    reduced = SegmentationMetrics.from_counts(summed).compute()
    assert reduced["per_prompt"] == {} and reduced["miou"] is None
    for key in ("fg_iou", "binary_iou", "pr_curve", "ap", "best_threshold", "samples"):
        _assert_close(expected[key], reduced[key])


def test_compute_is_json_serialisable() -> None:
    metrics = SegmentationMetrics()
    for probs, targets, prompts in _random_batches(3):
        metrics.update(probs, targets, prompts, prompts)
    result = metrics.compute()
    assert json.loads(json.dumps(result, allow_nan=False)) == result


def test_format_table_contains_numbers() -> None:
    metrics = SegmentationMetrics(GRID)
    probs, targets = _batch([PROBS_A, PROBS_B, PROBS_C], [TARGET_A, TARGET_B, EMPTY])
    metrics.update(probs, targets, ["cat", "dog", "cat"])
    r = metrics.compute()
    text = format_table(r)
    assert f"{4 / 11:.4f}" in text  # fg IoU at 0.5: TP 4 / (1 + 4 + 2 + 4)
    assert f"AP {r['ap']:.4f}" in text and f"trapezoid {r['ap_trapezoid']:.4f}" in text
    assert "no class labels" in text  # mIoU is not invented
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
