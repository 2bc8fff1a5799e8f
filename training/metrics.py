"""Segmentation metrics as the official CLIPSeg evaluation computes them.

The reference is ``FixedIntervalMetrics`` in the CLIPSeg authors' code (``metrics.py`` of
timojl/clipseg), which produced the paper's tables (Lüddecke & Ecker, CVPR 2022).
Probabilities are binarised at every threshold of a fixed grid, and pixel counts are
summed over the whole set *before* any ratio is taken, so large objects weigh more than
small ones.

Grid (``DEFAULT_THRESHOLDS``): ``np.linspace(0, 1, 51)[1:-1]`` = 0.02, 0.04, ..., 0.98,
49 thresholds; 0.1, 0.2, 0.3, 0.4 and 0.5 are exact grid points.

For every threshold ``t`` of the grid:

* prediction: ``p > t`` — strictly greater, compared in the probabilities' own dtype (as
  the service binarises masks, and as torch compares a float32 tensor with a float).
* TP, FP, FN, TN: pixel counts summed over all samples (int64).
* foreground IoU  ``fg_iou(t)     = TP / (1 + TP + FP + FN)``
* background IoU  ``bg_iou(t)     = TN / (1 + TN + FN + FP)``
* binary IoU      ``binary_iou(t) = ½ fg_iou(t) + ½ bg_iou(t)``
* mIoU            ``miou(t)       = mean over classes c of TP_c / (1 + TP_c + FP_c + FN_c)``,
  the counts of class ``c`` summed over that class's samples only. It needs a class
  label for every sample (``update(labels=...)``); otherwise it is None ("no class
  labels"), never a stand-in.
* precision       ``precision(t)  = TP / (1 + TP + FP)``
* recall          ``recall(t)     = TP / (1 + TP + FN)``

The +1 is part of the official definitions (it keeps every ratio defined). On a real
dataset it is invisible; on a tiny one it is not: an empty target with an empty
prediction scores foreground IoU 0.

AP: (1) keep the thresholds at which some pixel is predicted (TP + FP > 0); (2) take
their (recall, precision) pairs, remove duplicate pairs and sort by recall — ties by
precision: the reference sorts by recall alone, which leaves tied pairs in set order;
sorting the pair is deterministic and is the order of the curve the reference reports;
(3) ``ap`` = Simpson integral of precision over recall (``scipy.integrate.simpson``; the
reference called it under its old name ``simps``; scipy 1.11 changed the rule for an
even number of points, so the last digits of the reference depend on its scipy).
``ap_trapezoid`` integrates the same points with the trapezoid rule and is reported
beside it: where the curve jumps between two neighbouring thresholds, Simpson's parabolas
can overshoot (even below 0); the trapezoid never leaves the range of its points. Both
are None when no threshold predicts any pixel (the reference stops with an assertion).

Reported per metric ``m`` in fg_iou, binary_iou, miou: ``best_m`` (the maximum over the
grid) with ``best_m_threshold`` (lowest threshold among ties, ``np.argmax`` as in the
reference), and ``m_<t>`` at the fixed thresholds ``REPORTED_THRESHOLDS`` (``fg_iou_0.5``,
``binary_iou_0.1``, ...). ``best_threshold`` = the best fg IoU's threshold: the calibrated
threshold a trained checkpoint carries.

The accumulator is vectorised: per sample, each pixel's probability is bucketed once into
the grid (``torch.bucketize``) and counted with one ``bincount``; counts at every threshold
follow from suffix sums. Only the tiny histograms ([N, 2, K + 1]) leave the device.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.integrate import simpson, trapezoid

#: The official grid: 0.02, 0.04, ..., 0.98.
DEFAULT_THRESHOLDS: np.ndarray = np.linspace(0, 1, 51)[1:-1]
#: Fixed thresholds every metric is also reported at (0.4 is the service's default).
REPORTED_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5)

# Rows of the per-threshold count matrices.
_TP, _FP, _FN, _TN = range(4)


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


def fg_iou(counts: np.ndarray) -> np.ndarray:
    """TP / (1 + TP + FP + FN) per threshold: int [..., 4, K] counts -> float64 [..., K]."""
    tp, fp, fn = counts[..., _TP, :], counts[..., _FP, :], counts[..., _FN, :]
    return tp / (1.0 + tp + fp + fn)


def bg_iou(counts: np.ndarray) -> np.ndarray:
    """TN / (1 + TN + FN + FP) per threshold: int [..., 4, K] -> float64 [..., K]."""
    fp, fn, tn = counts[..., _FP, :], counts[..., _FN, :], counts[..., _TN, :]
    return tn / (1.0 + tn + fn + fp)


def binary_iou(counts: np.ndarray) -> np.ndarray:
    """½ fg IoU + ½ bg IoU per threshold: int [..., 4, K] -> float64 [..., K]."""
    return 0.5 * fg_iou(counts) + 0.5 * bg_iou(counts)


def precision_recall(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TP / (1 + TP + FP) and TP / (1 + TP + FN): int [4, K] -> two float64 [K] arrays."""
    tp, fp, fn = counts[_TP], counts[_FP], counts[_FN]
    return tp / (1.0 + tp + fp), tp / (1.0 + tp + fn)


def pr_curve(counts: np.ndarray) -> np.ndarray:
    """The AP curve's points: float64 [P, 2] of (recall, precision), sorted, unique.

    Only thresholds where some pixel is predicted (TP + FP > 0) contribute.
    """
    precision, recall = precision_recall(counts)
    made = counts[_TP] + counts[_FP] > 0
    pairs = np.stack([recall[made], precision[made]], axis=1)
    return np.unique(pairs, axis=0)  # unique rows, sorted by recall, then precision


def average_precision(curve: np.ndarray) -> tuple[float | None, float | None]:
    """(Simpson AP, trapezoid AP) of a ``pr_curve``; (None, None) for an empty curve."""
    if len(curve) == 0:
        return None, None
    recall, precision = curve[:, 0], curve[:, 1]
    return float(simpson(precision, x=recall)), float(trapezoid(precision, x=recall))


class _Group:
    """Summed counts (int64 [4, K]) and sample count of a group of samples."""

    def __init__(self, k: int) -> None:
        self.counts = np.zeros((4, k), np.int64)
        self.samples = 0

    def add(self, counts: np.ndarray, samples: int) -> None:
        self.counts += counts
        self.samples += samples


class SegmentationMetrics:
    """Streaming accumulator of the official CLIPSeg metrics (see the module docstring).

    Call ``update`` per batch, then ``compute``.

    Args:
        thresholds: the grid, strictly increasing within [0, 1]; default
            ``DEFAULT_THRESHOLDS``.
    """

    def __init__(self, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS) -> None:
        self.thresholds = _check_thresholds(thresholds).copy()
        self._total = _Group(self.thresholds.size)
        self._prompts: dict[str, _Group] = {}
        self._classes: dict[Hashable, _Group] = {}
        self._unlabelled = 0  # samples without a class label: mIoU is undefined then

    @property
    def samples(self) -> int:
        """Number of samples accumulated so far."""
        return self._total.samples

    def update(
        self,
        probs: torch.Tensor | np.ndarray,
        targets: torch.Tensor | np.ndarray,
        prompts: Sequence[str] | None = None,
        labels: Sequence[Hashable | None] | None = None,
    ) -> None:
        """Add a batch of samples.

        Args:
            probs: [N, H, W] float probabilities in [0, 1]; CPU or CUDA tensor, or array.
            targets: [N, H, W] bool ground-truth masks (nonzero = foreground), same device.
            prompts: N prompt strings for the per-prompt breakdown, or None to skip it.
            labels: N class labels for mIoU (None entries: unlabelled), or None for none.
        """
        n = len(probs)
        for name, values in (("prompts", prompts), ("labels", labels)):
            if values is not None and len(values) != n:
                raise ValueError(f"got {len(values)} {name} for {n} samples")
        counts = _counts_from_histograms(_histograms(probs, targets, self.thresholds))
        self._total.add(counts.sum(0), len(counts))
        k = self.thresholds.size
        for prompt, sample in zip(prompts or (), counts, strict=False):
            self._prompts.setdefault(prompt, _Group(k)).add(sample, 1)
        for label, sample in zip(labels or [None] * n, counts, strict=True):
            if label is None:
                self._unlabelled += 1
            else:
                self._classes.setdefault(label, _Group(k)).add(sample, 1)

    def merge(self, other: SegmentationMetrics) -> SegmentationMetrics:
        """Add ``other``'s statistics (global, per prompt, per class) into ``self``."""
        if not np.array_equal(self.thresholds, other.thresholds):
            raise ValueError("cannot merge metrics over different threshold grids")
        k = self.thresholds.size
        self._total.add(other._total.counts, other._total.samples)
        for mine, theirs in ((self._prompts, other._prompts), (self._classes, other._classes)):
            for key, group in theirs.items():
                mine.setdefault(key, _Group(k)).add(group.counts, group.samples)
        self._unlabelled += other._unlabelled
        return self

    def counts_tensor(self) -> torch.Tensor:
        """Global counts as one float64 [4 * K + 1] tensor (TP, FP, FN, TN, samples) that
        ranks can ``all_reduce``; exact below 2**53 pixels."""
        flat = np.concatenate([self._total.counts.ravel(), [self._total.samples]])
        return torch.from_numpy(flat.astype(np.float64))

    @classmethod
    def from_counts(
        cls, counts: torch.Tensor, thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS
    ) -> SegmentationMetrics:
        """Accumulator holding the (e.g. all-reduced) ``counts_tensor`` of the same grid.

        Per-prompt and per-class statistics do not travel: mIoU is None in the result.
        """
        metrics = cls(thresholds)
        k = metrics.thresholds.size
        flat = np.rint(counts.detach().cpu().double().numpy().ravel()).astype(np.int64)
        if flat.size != 4 * k + 1:
            raise ValueError(f"counts has {flat.size} values, expected {4 * k + 1}")
        metrics._total.add(flat[: 4 * k].reshape(4, k), int(flat[-1]))
        metrics._unlabelled = int(flat[-1])
        return metrics

    def class_iou(self) -> np.ndarray | None:
        """mIoU per threshold (float64 [K]), or None unless every sample has a label."""
        if self._unlabelled or not self._classes:
            return None
        per_class = np.stack([group.counts for group in self._classes.values()])
        return fg_iou(per_class).mean(0)

    def compute(self) -> dict[str, Any]:
        """All metrics as plain Python values (JSON-serialisable); None where undefined.

        Keys: thresholds, fg_iou, bg_iou, binary_iou, miou, precision, recall (one value
        per threshold; miou None without class labels), pr_curve ([[recall, precision],
        ...]), ap, ap_trapezoid, best_threshold (of fg IoU), best_fg_iou, best_binary_iou,
        best_binary_iou_threshold, best_miou, best_miou_threshold, ``<metric>_<t>`` for
        the ``REPORTED_THRESHOLDS`` on the grid, samples, classes (None without labels),
        per_prompt ({prompt: {samples, best_fg_iou, best_threshold, fg_iou, ap}}, fg_iou at
        the global best threshold; most frequent prompts first).

        Raises:
            ValueError: no sample was accumulated.
        """
        if self.samples == 0:
            raise ValueError("no samples were accumulated")
        counts = self._total.counts
        curves = {"fg_iou": fg_iou(counts), "binary_iou": binary_iou(counts)}
        miou = self.class_iou()
        precision, recall = precision_recall(counts)
        curve = pr_curve(counts)
        ap, ap_trapezoid = average_precision(curve)
        result: dict[str, Any] = {
            "thresholds": self.thresholds.tolist(),
            "fg_iou": curves["fg_iou"].tolist(),
            "bg_iou": bg_iou(counts).tolist(),
            "binary_iou": curves["binary_iou"].tolist(),
            "miou": None if miou is None else miou.tolist(),
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "pr_curve": curve.tolist(),
            "ap": ap,
            "ap_trapezoid": ap_trapezoid,
        }
        for name, values in (*curves.items(), ("miou", miou)):
            result.update(self._summary(name, values))
        result["best_threshold"] = result.pop("best_fg_iou_threshold")
        result["samples"] = self.samples
        result["classes"] = None if miou is None else len(self._classes)
        result["per_prompt"] = self._per_prompt(int(np.argmax(curves["fg_iou"])))
        return result

    def _summary(self, name: str, values: np.ndarray | None) -> dict[str, float | None]:
        """best_<name>, best_<name>_threshold and <name>_<t> of a [K] curve (or Nones)."""
        best = None if values is None else int(np.argmax(values))  # first max: lowest t
        out: dict[str, float | None] = {
            f"best_{name}": None if best is None else float(values[best]),
            f"best_{name}_threshold": None if best is None else float(self.thresholds[best]),
        }
        for t in REPORTED_THRESHOLDS:
            hits = np.flatnonzero(np.isclose(self.thresholds, t, rtol=0, atol=1e-9))
            if hits.size:
                out[f"{name}_{t:g}"] = None if values is None else float(values[hits[0]])
        return out

    def _per_prompt(self, best: int) -> dict[str, dict[str, Any]]:
        """Per-prompt summary; ``best`` is the index of the global best threshold."""
        out = {}
        ranked = sorted(self._prompts.items(), key=lambda kv: (-kv[1].samples, kv[0]))
        for prompt, group in ranked:
            iou = fg_iou(group.counts)
            own = int(np.argmax(iou))
            out[prompt] = {
                "samples": group.samples,
                "best_fg_iou": float(iou[own]),
                "best_threshold": float(self.thresholds[own]),
                "fg_iou": float(iou[best]),
                "ap": average_precision(pr_curve(group.counts))[0],
            }
        return out
