"""What work costs on this device: calibrated at warm-up, learned online, robust.

Two linear models of the same kind (``LinearCost``), one per place where time is spent:

* ``CostModel``, a batch's wall time on the model thread::

      seconds = per_batch + per_image * images + per_row * rows + per_text * texts
                + per_support * supports + per_render_mp * render_mp + ...

  ``images`` are distinct query images (backbone passes: a batch runs each once),
  ``rows`` decoder rows, ``texts`` CLIP text sequences not in the embedding cache, and the
  ``*_mp`` terms megapixels of each kind of pixel work at the image's own size (``Work``).
* ``HostCost``, one request's time off the model thread: decoding its upload and
  encoding its answer (``HostWork``).

Each term's coefficient is the warm-up calibration's figure on this device
(``service.calibrate``) times a learned scale. Every observation (a batch, a request)
moves the scales multiplicatively by the log of actual / predicted, each term by its share
of the prediction: a device that got uniformly slower moves every term, a term the
calibration got wrong is corrected by the observations it dominates, and a term the
traffic never exercises keeps its calibrated figure. A least-squares fit over a dozen
terms is ill-posed on real traffic (one image, one prompt, batch after batch makes
per_batch, per_image and per_row collinear, and the fit then splits time between them
arbitrarily); the multiplicative update keeps the calibrated structure. Robust: a ratio
counts at most ``CLIP_RATIO`` either way and scales stay within ``SCALE_LIMIT``, so one
stalled batch cannot make everything look unaffordable.

Pure numpy; no web stack, no torch.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from clipseg_serve.model.masks.postprocess import PostProcess, Refine
from clipseg_serve.model.masks.refine import DEFAULT_GRID, PAMR_LONG_SIDE, auto_radius, working_size

#: Weight of one observation in the log-scale update (~10 observations to follow a change).
LEARNING_RATE = 0.2
#: An observation's actual / predicted counts as at most this factor (or its inverse).
CLIP_RATIO = 3.0
#: A learned scale stays within [1 / SCALE_LIMIT, SCALE_LIMIT] of the calibrated figure.
SCALE_LIMIT = 1000.0


@dataclass(frozen=True)
class Work:
    """What a job (or a batch) asks of the model thread; additive over jobs except
    ``images``, which a batch counts once per distinct image (``batch_work``).

    images: backbone passes; rows: decoder rows; texts: CLIP text sequences to encode;
    supports: support images through the vision tower. Megapixels at the image's size:
    render_mp (every row, bilinear, thresholded, packed), guided_mp (the guided filter's
    full-size step, every row), guided_work_mp (its solve at the working scale), pamr_mp
    (PAMR at <= 384 px: rows x iterations), pamr_setup_mp (its 48 affinities per pixel,
    once a request: at 384 px this outweighs ten iterations), soft_mp (8-bit maps),
    shape_mp (components / holes / distance transforms, each mask and step),
    instances_mp (connected components, scored, each mask).
    """

    images: float = 0.0
    rows: float = 0.0
    texts: float = 0.0
    supports: float = 0.0
    render_mp: float = 0.0
    guided_mp: float = 0.0
    guided_work_mp: float = 0.0
    pamr_mp: float = 0.0
    pamr_setup_mp: float = 0.0
    soft_mp: float = 0.0
    shape_mp: float = 0.0
    instances_mp: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(*(a + b for a, b in zip(self.vector(), other.vector(), strict=True)))

    def __sub__(self, other: Work) -> Work:
        return Work(*(a - b for a, b in zip(self.vector(), other.vector(), strict=True)))

    def vector(self) -> tuple[float, ...]:
        return dataclasses.astuple(self)

    def features(self, batches: float = 1.0) -> np.ndarray:
        """float64 [len(TERMS)]: (batches, images, rows, ...), in ``TERMS`` order."""
        return np.array((batches, *self.vector()), dtype=np.float64)

    def with_images(self, images: float) -> Work:
        return dataclasses.replace(self, images=images)


TERMS = ("per_batch", *(f"per_{f.name.removesuffix('s')}" for f in dataclasses.fields(Work)))


@dataclass(frozen=True)
class HostWork:
    """What a request costs off the model thread (threadpool): decoding and encoding.

    decode_mb: decoded megabytes (``service.budget.decode_bytes``). Mask megapixels
    encoded: png_mp, polygon_mp; rle_mp (runs found on the host: masks reshaped or split
    into instances), runs_mp (runs found on the device: only written out here);
    soft_mp (8-bit maps as PNGs); instances_mp (each mask's instances, each encoded).
    """

    decode_mb: float = 0.0
    png_mp: float = 0.0
    polygon_mp: float = 0.0
    rle_mp: float = 0.0
    runs_mp: float = 0.0
    soft_mp: float = 0.0
    instances_mp: float = 0.0

    def features(self) -> np.ndarray:
        """float64 [len(HOST_TERMS)]: (1 request, decode_mb, ...)."""
        return np.array((1.0, *dataclasses.astuple(self)), dtype=np.float64)


HOST_TERMS = ("per_request", *(f"per_{f.name}" for f in dataclasses.fields(HostWork)))


def work_for(
    size: tuple[int, int],
    rows: int,
    masks: int,
    *,
    soft: bool = False,
    supports: int = 0,
    texts: int = 0,
    post: PostProcess | None = None,
    grid: int = DEFAULT_GRID,
) -> Work:
    """The model thread's work for one request on an image of ``size`` (height, width):
    ``rows`` decoder rows (prompts, negatives, the visual and background rows), ``masks``
    in the answer, ``soft`` maps returned, ``supports`` images, ``texts`` sequences to
    encode, ``post``'s steps, a model of ``grid`` tokens a side."""
    post = post or PostProcess()
    height, width = size
    mp = height * width / 1e6
    work = Work(
        images=1.0,
        rows=float(rows),
        texts=float(texts),
        supports=float(supports),
        render_mp=rows * mp,
        soft_mp=masks * mp if (soft or post.instances) else 0.0,
        shape_mp=masks * mp * shape_steps(post),
        instances_mp=masks * mp if post.instances else 0.0,
    )
    if post.refine is Refine.NONE:
        return work
    radius = post.radius or auto_radius(size, grid)
    (work_h, work_w), _ = working_size(size, radius)
    work = dataclasses.replace(
        work, guided_mp=rows * mp, guided_work_mp=rows * work_h * work_w / 1e6
    )
    if post.refine is not Refine.PAMR:
        return work
    scale = min(1.0, PAMR_LONG_SIDE / max(size))
    pamr_mp = max(1, round(height * scale)) * max(1, round(width * scale)) / 1e6
    return dataclasses.replace(
        work, pamr_mp=rows * post.pamr_iterations * pamr_mp, pamr_setup_mp=pamr_mp
    )


def shape_steps(post: PostProcess) -> int:
    """How many whole-mask host passes ``post``'s shape steps make."""
    return (post.min_area > 0) + post.fill_holes + (post.erode > 0) + (post.dilate > 0)


def host_work_for(
    size: tuple[int, int],
    masks: int,
    decode_bytes: int,
    fmt: str,
    soft: bool,
    post: PostProcess | None = None,
) -> HostWork:
    """A request's host work: ``decode_bytes`` to decode, ``masks`` at ``size`` (h, w)
    to encode as ``fmt`` (png | rle | polygon), and as 8-bit PNGs when ``soft``, after
    ``post``'s steps (reshaped masks and instances have no runs from the device)."""
    post = post or PostProcess()
    mp = masks * size[0] * size[1] / 1e6
    host_runs = post.reshapes or post.instances
    return HostWork(
        decode_mb=decode_bytes / 1e6,
        png_mp=mp if fmt == "png" else 0.0,
        polygon_mp=mp if fmt == "polygon" else 0.0,
        rle_mp=mp if fmt == "rle" and host_runs else 0.0,
        runs_mp=mp if fmt == "rle" and not host_runs else 0.0,
        soft_mp=mp if soft else 0.0,
        instances_mp=mp if post.instances else 0.0,
    )


def batch_work(parts: Iterable[tuple[Work, Hashable]]) -> Work:
    """The work of a batch from its jobs' (work, image key): shared images count once."""
    total, keys = Work(), set()
    for work, key in parts:
        total = total + work
        keys.add(key)
    return total.with_images(float(len(keys)))


class LinearCost:
    """seconds = sum over terms of calibrated coefficient x learned scale x amount.

    Thread-safe: observed on one thread (the model's, the threadpool's), read on the event
    loop. ``prior``: seconds per unit of each of ``terms`` on this device (>= 0).
    """

    def __init__(self, terms: Sequence[str], prior: Sequence[float]) -> None:
        if len(prior) != len(terms) or any(not math.isfinite(p) or p < 0 for p in prior):
            raise ValueError(f"prior must be {len(terms)} non-negative numbers, got {prior}")
        self.terms = tuple(terms)
        self._prior = np.asarray(prior, dtype=np.float64)
        self._log_scale = np.zeros(len(terms))
        self._coef = self._prior.copy()
        self._error = 0.1  # EWMA of |actual - predicted| / predicted, capped at 1
        self._ratio = 1.0  # the last observation's predicted / actual
        self._lock = threading.Lock()
        self.observations = 0

    @property
    def coefficients(self) -> dict[str, float]:
        with self._lock:
            return dict(zip(self.terms, (float(c) for c in self._coef), strict=True))

    @property
    def relative_error(self) -> float:
        """Recent mean relative prediction error (0.1 = predictions off by 10%)."""
        return self._error

    def _predict(self, x: np.ndarray) -> float:
        with self._lock:
            coef = self._coef
        return max(0.0, float(coef @ x))

    def _observe(self, x: np.ndarray, seconds: float) -> float | None:
        """Learn from ``seconds`` taken by work ``x``; the prediction / actual ratio (None
        when there was nothing to learn)."""
        if not math.isfinite(seconds) or seconds <= 0:
            return None
        with self._lock:
            parts = self._coef * x
            predicted = float(parts.sum())
            if predicted <= 0:
                return None
            ratio = seconds / predicted
            self._error = 0.8 * self._error + 0.2 * min(1.0, abs(ratio - 1.0))
            step = LEARNING_RATE * math.log(min(CLIP_RATIO, max(1 / CLIP_RATIO, ratio)))
            limit = math.log(SCALE_LIMIT)
            self._log_scale = np.clip(self._log_scale + step * parts / predicted, -limit, limit)
            self._coef = self._prior * np.exp(self._log_scale)
            self.observations += 1
            return predicted / seconds


class CostModel(LinearCost):
    """A batch's seconds on the model thread (``TERMS``)."""

    def __init__(self, prior: Sequence[float]) -> None:
        super().__init__(TERMS, prior)

    def predict(self, work: Work, batches: float = 1.0) -> float:
        """Seconds for ``work`` spread over ``batches`` batches (>= 0)."""
        return self._predict(work.features(batches))

    def marginal(self, work: Work) -> float:
        """Seconds ``work`` adds to a batch that runs anyway (no per-batch term)."""
        return self.predict(work, batches=0.0)

    def observe(self, work: Work, seconds: float) -> float | None:
        """Learn from one batch that did ``work`` in ``seconds``; predicted / actual."""
        return self._observe(work.features(), seconds)


class HostCost(LinearCost):
    """A request's seconds off the model thread (``HOST_TERMS``)."""

    def __init__(self, prior: Sequence[float]) -> None:
        super().__init__(HOST_TERMS, prior)

    def predict(self, work: HostWork) -> float:
        return self._predict(work.features())

    def observe(self, work: HostWork, seconds: float) -> float | None:
        return self._observe(work.features(), seconds)
