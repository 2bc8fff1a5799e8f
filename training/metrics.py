"""Segmentation metrics over a fixed threshold grid, aggregated over a whole evaluation set.

Follows the CLIPSeg evaluation (Lüddecke & Ecker, CVPR 2022): probabilities are binarised
at every threshold of a fixed grid and pixel counts are summed over the set *before* any
ratio is taken, so large objects weigh more than small ones (as in the paper).

Definitions, for every threshold ``t`` of the grid (``DEFAULT_THRESHOLDS``):

* prediction: ``p > t`` — strictly greater, exactly as the service binarises masks, and
  compared in the probabilities' own dtype (the service compares a float32 tensor with a
  Python float, which torch does in float32).
* TP, FP, FN, TN: pixel counts summed over all samples (int64).
* foreground IoU ``fg_iou(t) = TP / (TP + FP + FN)``.
* background IoU ``bg_iou(t) = TN / (TN + FN + FP)``.
* ``miou(t) = (fg_iou + bg_iou) / 2`` (the paper's "mIoU" of the two classes).
* binary IoU ``binary_iou(t)``: the mean over samples of each sample's own foreground IoU.
  A sample with an empty target and an empty prediction scores 1 and one with an empty
  target but a non-empty prediction scores 0: CLIPSeg is trained and evaluated with
  negative prompts (the object is absent), and this is the metric that rewards predicting
  nothing for them.
* ``precision(t) = TP / (TP + FP)``, ``recall(t) = TP / (TP + FN)``.
* Every ratio with a zero denominator is 1 ("nothing to find / nothing claimed" is not an
  error): e.g. precision is 1 at a threshold where no pixel is predicted.
* AP: area under the precision-recall curve of the grid points. Points are sorted by
  recall; among points of equal recall only the highest-precision one (= the highest
  threshold's) is kept; the curve starts at (recall 0, precision of the highest
  threshold). The area is integrated with the trapezoid rule. (Simpson's rule, which the
  design guide names, assumes a smooth curve; a PR curve sampled on a coarse grid has
  jumps — recall 0 -> 0.65 between two neighbouring thresholds is common — where the
  fitted parabolas overshoot, even to a negative area. The trapezoid never leaves the
  range of its points.) AP is ``None`` when the set has no foreground pixel (recall is
  undefined then).
* best threshold: argmax of ``fg_iou`` over the grid; ties go to the lower threshold.
  ``best_fg_iou``, ``best_miou`` and ``best_binary_iou`` are each the maximum over the grid
  of that metric (as the reference reports them), so they may come from different
  thresholds; the per-threshold lists hold the values at any one threshold.

The accumulator is vectorised: per sample, each pixel's probability is bucketed once into
the grid (``torch.bucketize``) and counted with one ``bincount``; counts at every threshold
follow from suffix sums. Only the tiny histograms ([N, 2, K + 1]) leave the device.

Distributed evaluation: ``counts_tensor()`` packs the global statistics into one float64
tensor that ranks sum with ``torch.distributed.all_reduce``; ``from_counts`` rebuilds an
accumulator from the sum. Per-prompt statistics are not reduced across ranks (each rank
only knows its own prompts); use ``merge`` for in-process accumulators, which does
combine them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# 0.05, 0.10, ..., 0.95. Built as k / 20 (not linspace) so every grid point is the double
# nearest to its decimal, e.g. exactly the literal 0.4, the service's default threshold.
DEFAULT_THRESHOLDS: np.ndarray = np.arange(1, 20, dtype=np.float64) / 20
# Thresholds reported individually in ``compute()["fg_iou_at"]`` when they are on the grid.
STANDARD_THRESHOLDS: tuple[float, ...] = (0.3, 0.4, 0.5)

# Rows of the per-threshold count matrices.
_TP, _FP, _FN, _TN = range(4)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise ``numerator / denominator`` as float64, with 0/0 (and x/0) defined as 1."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    out = np.ones(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _check_thresholds(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """The grid as a float64 [K] array; strictly increasing, within [0, 1]."""
    grid = np.asarray(thresholds, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError("thresholds must be a non-empty 1-D sequence")
    if not (np.all(np.diff(grid) > 0) and grid[0] >= 0 and grid[-1] <= 1):
        raise ValueError("thresholds must be strictly increasing and within [0, 1]")
    return grid


def _histograms(
    probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, grid: np.ndarray
) -> np.ndarray:
    """Per-sample histograms of probabilities over the grid, split by target class.

    Args:
        probs: [N, H, W] float probabilities in [0, 1] (any device).
        targets: [N, H, W] bool (nonzero counts as foreground).
        grid: [K] float64 increasing thresholds.

    Returns:
        int64 [N, 2, K + 1] on CPU: ``[n, c, j]`` counts pixels of sample ``n`` with target
        class ``c`` (0 background, 1 foreground) whose probability exceeds exactly ``j``
        grid thresholds.
    """
    p = torch.as_tensor(probs)
    t = torch.as_tensor(targets, device=p.device)
    if p.ndim != 3 or p.shape != t.shape:
        raise ValueError(f"probs and targets must both be [N, H, W], got {p.shape} {t.shape}")
    if not p.is_floating_point():
        raise ValueError(f"probs must be floating point, got {p.dtype}")
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()  # bucketize has no half kernels everywhere
    if p.numel() and not bool(((p >= 0) & (p <= 1)).all()):  # also rejects NaN
        raise ValueError("probs must lie in [0, 1]")
    n, bins = p.shape[0], grid.size + 1
    # Boundaries in the probabilities' dtype so ``p > t`` matches the service bit for bit.
    edges = torch.as_tensor(grid, dtype=p.dtype, device=p.device)
    # right=False: index = number of thresholds strictly below p = thresholds where p > t.
    above = torch.bucketize(p.reshape(n, -1), edges)
    sample = torch.arange(n, device=p.device).unsqueeze(1) * (2 * bins)
    keys = sample + (t.reshape(n, -1) != 0).long() * bins + above
    hist = torch.bincount(keys.flatten(), minlength=n * 2 * bins)
    return hist.reshape(n, 2, bins).cpu().numpy().astype(np.int64)


def _counts_from_histograms(hist: np.ndarray) -> np.ndarray:
    """TP, FP, FN, TN per sample and threshold.

    Args:
        hist: int64 [N, 2, K + 1] from ``_histograms``.

    Returns:
        int64 [N, 4, K], rows in the order TP, FP, FN, TN.
    """
    # Suffix sums: pixels predicted positive at threshold k are those above > k thresholds.
    positive = np.flip(np.cumsum(np.flip(hist, -1), -1), -1)[..., 1:]
    total = hist.sum(-1, keepdims=True)
    tp, fp = positive[:, 1], positive[:, 0]
    fn, tn = total[:, 1] - tp, total[:, 0] - fp
    return np.stack([tp, fp, fn, tn], axis=1)


@dataclass
class _Stats:
    """Summed statistics of a group of samples over a K-threshold grid."""

    counts: np.ndarray  # int64 [4, K]: TP, FP, FN, TN pixel counts
    iou_sum: np.ndarray  # float64 [K]: sum of per-sample foreground IoU
    samples: int = 0

    @classmethod
    def zeros(cls, k: int) -> _Stats:
        return cls(np.zeros((4, k), np.int64), np.zeros(k, np.float64))

    def add(self, counts: np.ndarray, iou_sum: np.ndarray, samples: int) -> None:
        self.counts += counts
        self.iou_sum += iou_sum
        self.samples += samples

    def fg_iou(self) -> np.ndarray:
        """Foreground IoU per threshold, float64 [K] in [0, 1]."""
        tp, fp, fn = self.counts[_TP], self.counts[_FP], self.counts[_FN]
        return _ratio(tp, tp + fp + fn)

    def bg_iou(self) -> np.ndarray:
        """Background IoU per threshold, float64 [K] in [0, 1]."""
        fp, fn, tn = self.counts[_FP], self.counts[_FN], self.counts[_TN]
        return _ratio(tn, tn + fn + fp)

    def binary_iou(self) -> np.ndarray:
        """Mean per-sample foreground IoU per threshold, float64 [K] in [0, 1]."""
        return self.iou_sum / max(self.samples, 1)

    def precision_recall(self) -> tuple[np.ndarray, np.ndarray]:
        """Precision and recall per threshold, two float64 [K] arrays in [0, 1]."""
        tp, fp, fn = self.counts[_TP], self.counts[_FP], self.counts[_FN]
        return _ratio(tp, tp + fp), _ratio(tp, tp + fn)

    def ap(self) -> float | None:
        """Average precision (module docstring), or None without foreground pixels."""
        if self.counts[_TP, 0] + self.counts[_FN, 0] == 0:
            return None
        precision, recall = self.precision_recall()
        return average_precision(precision, recall)


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid integral of samples ``y`` at increasing abscissae ``x`` (0 for < 2 points)."""
    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if x.size < 2:
        return 0.0
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the precision-recall curve of a threshold grid, in [0, 1].

    Args:
        precision: float [K] precision per threshold, thresholds in increasing order.
        recall: float [K] recall per threshold, same order.

    Returns:
        trapezoid integral of precision over recall (see the module docstring).
    """
    # Start at recall 0 with the highest threshold's precision (the last grid point).
    p = np.concatenate([[precision[-1]], precision])
    r = np.concatenate([[0.0], recall])
    # Sort by recall, higher precision first among equal recalls, then keep that first one:
    # At equal recall (equal TP) the higher threshold has fewer false positives, so its
    # point dominates.
    order = np.lexsort((-p, r))
    r, p = r[order], p[order]
    r, first = np.unique(r, return_index=True)
    return trapezoid(p[first], r)


class SegmentationMetrics:
    """Streaming accumulator of CLIPSeg metrics over a fixed threshold grid.

    Call ``update`` per batch, then ``compute``. See the module docstring for the
    definitions and for distributed use (``counts_tensor`` / ``from_counts``).

    Args:
        thresholds: the grid, strictly increasing within [0, 1]; default
            ``DEFAULT_THRESHOLDS``.
    """

    def __init__(self, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = _check_thresholds(thresholds).copy()
        self._total = _Stats.zeros(self.thresholds.size)
        self._prompts: dict[str, _Stats] = {}

    @property
    def samples(self) -> int:
        """Number of samples accumulated so far."""
        return self._total.samples

    def update(
        self,
        probs: torch.Tensor | np.ndarray,
        targets: torch.Tensor | np.ndarray,
        prompts: Sequence[str] | None = None,
    ) -> None:
        """Add a batch of samples.

        Args:
            probs: [N, H, W] float probabilities in [0, 1]; CPU or CUDA tensor, or array.
            targets: [N, H, W] bool ground-truth masks (nonzero = foreground), same device.
            prompts: N prompt strings for the per-prompt breakdown, or None to skip it.
        """
        if prompts is not None and len(prompts) != len(probs):
            raise ValueError(f"got {len(prompts)} prompts for {len(probs)} samples")
        counts = _counts_from_histograms(_histograms(probs, targets, self.thresholds))
        tp, fp, fn = counts[:, _TP], counts[:, _FP], counts[:, _FN]
        iou = _ratio(tp, tp + fp + fn)  # [N, K]; empty target + empty prediction -> 1
        self._total.add(counts.sum(0), iou.sum(0), len(counts))
        for prompt, sample_counts, sample_iou in zip(prompts or (), counts, iou, strict=False):
            stats = self._prompts.setdefault(prompt, _Stats.zeros(self.thresholds.size))
            stats.add(sample_counts, sample_iou, 1)

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add ``other``'s statistics (global and per prompt) into ``self``; returns self."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge metrics over different threshold grids")
        self._total.add(other._total.counts, other._total.iou_sum, other._total.samples)
        for prompt, stats in other._prompts.items():
            mine = self._prompts.setdefault(prompt, _Stats.zeros(self.thresholds.size))
            mine.add(stats.counts, stats.iou_sum, stats.samples)
        return self

    def counts_tensor(self) -> torch.Tensor:
        """Global statistics as one float64 [5 * K + 1] tensor, summable across ranks.

        Layout: TP, FP, FN, TN (K each), per-sample IoU sums (K), sample count. float64 so
        the IoU sums travel in the same ``all_reduce``; counts stay exact below 2**53 pixels.
        """
        total = self._total
        parts = [total.counts.ravel().astype(np.float64), total.iou_sum, [total.samples]]
        return torch.from_numpy(np.concatenate(parts))

    @classmethod
    def from_counts(
        cls,
        counts: torch.Tensor,
        thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    ) -> SegmentationMetrics:
        """Accumulator holding the (e.g. all-reduced) ``counts_tensor`` of the same grid.

        The per-prompt breakdown of the result is empty.
        """
        metrics = cls(thresholds)
        k = metrics.thresholds.size
        flat = counts.detach().cpu().double().numpy().ravel()
        if flat.size != 5 * k + 1:
            raise ValueError(f"counts has {flat.size} values, expected {5 * k + 1}")
        pixels = np.rint(flat[: 4 * k]).astype(np.int64).reshape(4, k)
        metrics._total = _Stats(pixels, flat[4 * k : 5 * k].copy(), round(flat[-1]))
        return metrics

    def compute(self) -> dict[str, Any]:
        """All metrics as plain Python floats/ints/lists/dicts (JSON-serialisable).

        Keys: thresholds, fg_iou, bg_iou, miou, binary_iou, precision, recall (lists, one
        value per threshold), ap, best_threshold, best_fg_iou, best_miou, best_binary_iou,
        fg_iou_at ({"0.4": ...} for the ``STANDARD_THRESHOLDS`` on the grid), samples and
        per_prompt ({prompt: {samples, best_fg_iou, best_threshold, fg_iou, binary_iou, ap}},
        fg_iou and binary_iou at the global best threshold; most frequent prompts first).

        Raises:
            ValueError: no sample was accumulated.
        """
        total = self._total
        if total.samples == 0:
            raise ValueError("no samples were accumulated")
        fg = total.fg_iou()
        bg = total.bg_iou()
        miou = (fg + bg) / 2
        binary = total.binary_iou()
        precision, recall = total.precision_recall()
        best = int(np.argmax(fg))  # first maximum = lowest threshold among ties
        return {
            "thresholds": self.thresholds.tolist(),
            "fg_iou": fg.tolist(),
            "bg_iou": bg.tolist(),
            "miou": miou.tolist(),
            "binary_iou": binary.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "ap": total.ap(),
            "best_threshold": float(self.thresholds[best]),
            "best_fg_iou": float(fg[best]),
            "best_miou": float(miou.max()),
            "best_binary_iou": float(binary.max()),
            "fg_iou_at": self._standard(fg),
            "samples": int(total.samples),
            "per_prompt": self._per_prompt(best),
        }

    def _standard(self, values: np.ndarray) -> dict[str, float]:
        """``values`` [K] at the standard thresholds on the grid, keyed like "0.4"."""
        out = {}
        for t in STANDARD_THRESHOLDS:
            hits = np.flatnonzero(np.isclose(self.thresholds, t, rtol=0, atol=1e-9))
            if hits.size:
                out[f"{t:g}"] = float(values[hits[0]])
        return out

    def _per_prompt(self, best: int) -> dict[str, dict[str, Any]]:
        """Per-prompt summary; ``best`` is the index of the global best threshold."""
        out = {}
        ranked = sorted(self._prompts.items(), key=lambda kv: (-kv[1].samples, kv[0]))
        for prompt, stats in ranked:
            fg = stats.fg_iou()
            own = int(np.argmax(fg))
            out[prompt] = {
                "samples": int(stats.samples),
                "best_fg_iou": float(fg[own]),
                "best_threshold": float(self.thresholds[own]),
                "fg_iou": float(fg[best]),
                "binary_iou": float(stats.binary_iou()[best]),
                "ap": stats.ap(),
            }
        return out


def _fmt(value: float | None) -> str:
    """A metric with 4 decimals, or "n/a" when undefined (None)."""
    return "n/a" if value is None else f"{value:.4f}"


def format_table(result: dict[str, Any], per_prompt_limit: int = 20) -> str:
    """Plain-text report of a ``SegmentationMetrics.compute()`` result.

    One row per threshold (the best one marked ``*``), summary lines, then the per-prompt
    breakdown of the ``per_prompt_limit`` most frequent prompts.
    """
    lines = [
        f"{'threshold':>10} {'fg IoU':>8} {'mIoU':>8} {'bin IoU':>8} {'precision':>9} {'recall':>8}"
    ]
    columns = zip(
        result["thresholds"],
        result["fg_iou"],
        result["miou"],
        result["binary_iou"],
        result["precision"],
        result["recall"],
        strict=True,
    )
    for t, fg, miou, binary, precision, recall in columns:
        mark = "*" if t == result["best_threshold"] else " "
        lines.append(
            f"{mark}{t:>9.2f} {fg:>8.4f} {miou:>8.4f} {binary:>8.4f} {precision:>9.4f} "
            f"{recall:>8.4f}"
        )
    lines += [
        f"samples {result['samples']}  AP {_fmt(result['ap'])}",
        f"best threshold {result['best_threshold']:.2f}: fg IoU {result['best_fg_iou']:.4f}"
        f"  (best mIoU {result['best_miou']:.4f}, best binary IoU "
        f"{result['best_binary_iou']:.4f})",
    ]
    lines += _prompt_lines(result, per_prompt_limit)
    return "\n".join(lines)


def _prompt_lines(result: dict[str, Any], limit: int) -> list[str]:
    """Per-prompt rows (most samples first), or nothing without a breakdown."""
    prompts = result.get("per_prompt") or {}
    if not prompts or limit <= 0:
        return []
    ranked = sorted(prompts.items(), key=lambda kv: (-kv[1]["samples"], kv[0]))
    at = f"fg IoU@{result['best_threshold']:.2f}"
    lines = [
        f"per prompt ({min(limit, len(ranked))} of {len(ranked)}, most samples first):",
        f"{'samples':>8} {'best fg IoU':>11} {at:>11} {'bin IoU':>8} {'AP':>8}  prompt",
    ]
    for prompt, row in ranked[:limit]:
        lines.append(
            f"{row['samples']:>8} {row['best_fg_iou']:>11.4f} {row['fg_iou']:>11.4f} "
            f"{row['binary_iou']:>8.4f} {_fmt(row['ap']):>8}  {prompt}"
        )
    return lines
