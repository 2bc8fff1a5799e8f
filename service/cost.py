"""What a batch costs on this device, learned online from the batches the model runs.

A batch's wall time on the model thread is modelled as a linear function of what it does:

    seconds = per_batch + per_image * images + per_row * rows
              + per_megapixel * output_megapixels + per_support * supports

``images`` are distinct query images (backbone passes), ``rows`` decoder rows (prompts),
``output_megapixels`` the mask (and soft-map) pixels rendered at the images' own sizes,
``supports`` support images through the full vision tower. The coefficients come from an
exponentially weighted least-squares fit (recent batches count most, so the model follows
a device that gets busier or a GPU that warms up), regularised toward a prior — the
warm-up calibration's figures — so that a term the traffic has not exercised yet (no
supports so far, say) keeps a sensible value instead of an arbitrary one. Coefficients
are kept non-negative: no work makes a batch cheaper.

Plain numpy on a 5x5 system; no web stack, no torch.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

TERMS = ("per_batch", "per_image", "per_row", "per_megapixel", "per_support")

#: Weight kept by past observations at each new one: ~30 batches of memory.
FORGETTING = 0.97
#: How many observations' worth of confidence the prior carries.
PRIOR_WEIGHT = 0.05
#: An observation counts as at most this many times its prediction: one stalled batch (a
#: pause, a blocked thread) must not make every later request look unaffordable, while a
#: device that really got slower is still learned within a few batches.
OUTLIER_FACTOR = 3.0


@dataclass(frozen=True)
class Work:
    """What a job (or a batch) asks of the model; additive over the jobs of a batch."""

    images: float = 0.0
    rows: float = 0.0
    megapixels: float = 0.0
    supports: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(
            self.images + other.images,
            self.rows + other.rows,
            self.megapixels + other.megapixels,
            self.supports + other.supports,
        )

    def __sub__(self, other: Work) -> Work:
        return Work(
            self.images - other.images,
            self.rows - other.rows,
            self.megapixels - other.megapixels,
            self.supports - other.supports,
        )

    def features(self, batches: float = 1.0) -> np.ndarray:
        """float64 [5]: (batches, images, rows, megapixels, supports)."""
        return np.array([batches, self.images, self.rows, self.megapixels, self.supports])


#: Refinement's cost in bilinear-map equivalents per row at full size (``model.refine``,
#: measured on 2 CPU cores for a 2 MP map: bilinear 2.1 ms, guided 12 ms).
REFINE_MAPS = {"none": 0.0, "guided": 5.0, "pamr": 5.0}
#: PAMR's fixed cost per row in full-size megapixel equivalents: it runs at <= 384 px on
#: the long side whatever the image (~110 ms on 2 CPU cores, ~50x a 1 MP bilinear map).
PAMR_MEGAPIXELS = 50.0
#: The host steps (components, distance transforms) per mask, in map equivalents.
HOST_STEP_MAPS = 4.0


def work_for(
    pixels: int,
    rows: int,
    masks: int,
    soft: bool,
    supports: int,
    refine: str = "none",
    host_steps: bool = False,
) -> Work:
    """The cost model's view of a request: one image, its decoder rows, the full-size maps
    it renders (each row, plus each mask again when soft maps are returned, plus what
    ``refine`` (none | guided | pamr) and the ``host_steps`` cost in maps), supports."""
    maps = rows * (1.0 + REFINE_MAPS[refine]) + (masks if soft else 0)
    maps += masks * HOST_STEP_MAPS if host_steps else 0.0
    megapixels = pixels * maps / 1e6
    if refine == "pamr":
        megapixels += rows * PAMR_MEGAPIXELS
    return Work(images=1.0, rows=float(rows), megapixels=megapixels, supports=supports)


def batch_work(parts: Iterable[tuple[Work, Hashable]]) -> Work:
    """The work of a batch from its jobs' (work, image key): shared images count once."""
    total, keys = Work(), set()
    for work, key in parts:
        total = total + work
        keys.add(key)
    return Work(float(len(keys)), total.rows, total.megapixels, total.supports)


class CostModel:
    """Online estimate of batch cost in seconds; thread-safe (observed on the model thread,
    read on the event loop).

    Args:
        prior: seconds per term, in ``TERMS`` order (e.g. from a calibration run).
    """

    def __init__(self, prior: Sequence[float]) -> None:
        if len(prior) != len(TERMS) or any(not math.isfinite(p) or p < 0 for p in prior):
            raise ValueError(f"prior must be {len(TERMS)} non-negative numbers, got {prior}")
        self._prior = np.asarray(prior, dtype=np.float64)
        self._gram = np.zeros((len(TERMS), len(TERMS)))  # sum of w * x x^T
        self._moment = np.zeros(len(TERMS))  # sum of w * seconds * x
        self._weight = 0.0  # sum of w: the effective number of observations
        self._coef = self._prior.copy()
        self._error = 0.1  # EWMA of |actual - predicted| / predicted
        self._lock = threading.Lock()
        self.observations = 0

    @property
    def coefficients(self) -> dict[str, float]:
        with self._lock:
            return dict(zip(TERMS, (float(c) for c in self._coef), strict=True))

    @property
    def relative_error(self) -> float:
        """Recent mean relative prediction error (0.1 = predictions off by 10%)."""
        return self._error

    def predict(self, work: Work, batches: float = 1.0) -> float:
        """Seconds for ``work`` spread over ``batches`` batches (>= 0)."""
        with self._lock:
            coef = self._coef
        return max(0.0, float(coef @ work.features(batches)))

    def marginal(self, work: Work) -> float:
        """Seconds ``work`` adds to a batch that runs anyway (no per-batch term)."""
        return self.predict(work, batches=0.0)

    def observe(self, work: Work, seconds: float) -> None:
        """Learn from one batch that did ``work`` in ``seconds``."""
        if not math.isfinite(seconds) or seconds < 0:
            return
        x = work.features()
        with self._lock:
            predicted = max(1e-6, float(self._coef @ x))
            self._error = 0.8 * self._error + 0.2 * min(1.0, abs(seconds - predicted) / predicted)
            seconds = min(seconds, OUTLIER_FACTOR * predicted)
            self._gram = FORGETTING * self._gram + np.outer(x, x)
            self._moment = FORGETTING * self._moment + seconds * x
            self._weight = FORGETTING * self._weight + 1.0
            self._coef = self._solve()
            self.observations += 1

    def _solve(self) -> np.ndarray:
        """Ridge fit toward the prior, kept non-negative by pinning negative terms at 0.

        The ridge on each term is ``PRIOR_WEIGHT`` observations of that term's typical
        size, so the prior fades as data arrive; a term the data never exercised (its
        feature always 0) keeps its prior exactly.
        """
        typical = np.diag(self._gram) / max(self._weight, 1.0)
        ridge = np.maximum(PRIOR_WEIGHT * typical, 1e-9)
        free = np.ones(len(TERMS), dtype=bool)
        for _ in range(len(TERMS)):
            a = self._gram[np.ix_(free, free)] + np.diag(ridge[free])
            b = self._moment[free] + ridge[free] * self._prior[free]
            try:
                solved = np.linalg.solve(a, b)
            except np.linalg.LinAlgError:
                return self._coef
            coef = np.zeros(len(TERMS))
            coef[free] = solved
            if (solved >= 0).all():
                return coef
            free &= coef > 0
        return np.maximum(coef, 0.0)
