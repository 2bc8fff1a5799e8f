"""A small, dependency-free, thread-safe Prometheus metrics registry.

The service records metrics from the event loop, the model thread and the threadpool, so
every metric guards its samples with its own lock. ``Registry.render`` produces the text
exposition format, version 0.0.4 (``CONTENT_TYPE``), for the ``/metrics`` route.

We implement the handful of features the service needs instead of depending on
``prometheus_client``: counters, gauges (optionally computed at scrape time) and histograms,
each with optional labels.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

LabelKey = tuple[str, ...]


# ---------------------------------------------------------------------- formatting
def format_float(value: float) -> str:
    """A sample value as Prometheus writes it: ``+Inf``, ``NaN``, ``3.0``, ``0.25``."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # repr switches to exponent notation from 1e16 on; big counters read better in full.
    if value.is_integer() and abs(value) < 2**63:
        return f"{int(value)}.0"
    return repr(value)


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    inner = ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in pairs)
    return "{" + inner + "}"


def _sample(name: str, pairs: Sequence[tuple[str, str]], value: float) -> str:
    return f"{name}{_format_labels(pairs)} {format_float(value)}"


# ---------------------------------------------------------------------- metrics
class _Metric:
    """Name, help, label validation and the HELP/TYPE header shared by all metric kinds."""

    kind: ClassVar[str]
    # Label names that would collide with a keyword parameter of the recording methods.
    reserved_labels: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        if isinstance(labelnames, str):  # ("reason") instead of ("reason",) would split it
            raise ValueError(f"{name}: labelnames must be a sequence of names, not a string")
        self.name = name
        self.help = help
        self.labelnames: LabelKey = tuple(labelnames)
        self._check_labelnames()
        self._lock = threading.Lock()

    def _check_labelnames(self) -> None:
        if len(set(self.labelnames)) != len(self.labelnames):
            raise ValueError(f"{self.name}: duplicate label names {self.labelnames}")
        for label in self.labelnames:
            # Names starting with "__" are reserved for Prometheus itself.
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{self.name}: invalid label name {label!r}")
            if label in self.reserved_labels:
                raise ValueError(f"{self.name}: label name {label!r} is reserved")

    def _key(self, labels: Mapping[str, object]) -> LabelKey:
        """Label values in ``labelnames`` order; the exact set of names is required."""
        if labels.keys() != set(self.labelnames):
            raise ValueError(
                f"{self.name}: expected labels {sorted(self.labelnames)}, got {sorted(labels)}"
            )
        return tuple(str(labels[label]) for label in self.labelnames)

    def _pairs(self, key: LabelKey) -> list[tuple[str, str]]:
        return list(zip(self.labelnames, key, strict=True))

    def sample_names(self) -> set[str]:
        """Every sample name this metric writes, to catch clashes at registration."""
        return {self.name}

    def render(self) -> list[str]:
        header = [
            f"# HELP {self.name} {_escape_help(self.help)}",
            f"# TYPE {self.name} {self.kind}",
        ]
        return header + self._render_samples()

    def _render_samples(self) -> list[str]:
        raise NotImplementedError


class _ScalarMetric(_Metric):
    """One float per label combination (counters and gauges)."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        # An unlabelled metric is exported as 0 before its first update, as Prometheus
        # clients do; labelled ones appear once a label combination is first used.
        self._values: dict[LabelKey, float] = {} if self.labelnames else {(): 0.0}

    def _add(self, amount: float, labels: Mapping[str, object]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: object) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def _snapshot(self) -> list[tuple[LabelKey, float]]:
        with self._lock:
            return sorted(self._values.items())

    def _render_samples(self) -> list[str]:
        return [_sample(self.name, self._pairs(key), v) for key, v in self._snapshot()]


class Counter(_ScalarMetric):
    """A monotonically increasing total."""

    kind = "counter"
    reserved_labels = frozenset({"amount"})

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        amount = float(amount)
        if not amount >= 0:  # also rejects NaN
            raise ValueError(f"{self.name}: counters only go up, got {amount}")
        self._add(amount, labels)


class Gauge(_ScalarMetric):
    """A value that goes up and down, or one computed at scrape time by ``set_function``."""

    kind = "gauge"
    reserved_labels = frozenset({"amount", "value"})

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._function: Callable[[], float] | None = None

    def set(self, value: float, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, **labels: object) -> None:
        self._add(float(amount), labels)

    def dec(self, amount: float = 1.0, **labels: object) -> None:
        self._add(-float(amount), labels)

    def set_function(self, fn: Callable[[], float]) -> None:
        """Compute the (unlabelled) value by calling ``fn`` at each read and scrape.

        While a function is set it supersedes any stored value. Setting another one
        replaces it, so a restarted component can re-register its callback.
        """
        if self.labelnames:
            raise ValueError(f"{self.name}: set_function needs an unlabelled gauge")
        with self._lock:
            self._function = fn

    def value(self, **labels: object) -> float:
        fn = self._function_or_none()
        if fn is not None:
            self._key(labels)  # still reject stray labels
            return float(fn())
        return super().value(**labels)

    def _function_or_none(self) -> Callable[[], float] | None:
        with self._lock:
            return self._function

    def _snapshot(self) -> list[tuple[LabelKey, float]]:
        fn = self._function_or_none()
        # Called outside the lock: the callback may read other metrics or take its own locks.
        if fn is not None:
            return [((), float(fn()))]
        return super()._snapshot()


@dataclass
class _HistogramState:
    bucket_counts: list[int]  # per bucket, not cumulative; the last one is +Inf
    total: float = 0.0
    count: int = 0


@dataclass
class _HistogramSnapshot:
    key: LabelKey
    cumulative: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0


class Histogram(_Metric):
    """Observations counted into cumulative ``le`` buckets, plus their sum and count."""

    kind = "histogram"
    reserved_labels = frozenset({"value", "le"})

    def __init__(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> None:
        super().__init__(name, help, labelnames)
        self.buckets = _check_buckets(name, buckets)
        self._states: dict[LabelKey, _HistogramState] = {}
        if not self.labelnames:
            self._states[()] = self._new_state()

    def _new_state(self) -> _HistogramState:
        return _HistogramState(bucket_counts=[0] * (len(self.buckets) + 1))

    def observe(self, value: float, **labels: object) -> None:
        value = float(value)
        key = self._key(labels)
        # bisect_left finds the first bound >= value, matching "le" (less than or equal).
        # NaN compares false with every bound, so it is sent to +Inf explicitly.
        index = len(self.buckets) if math.isnan(value) else bisect.bisect_left(self.buckets, value)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = self._new_state()
            state.bucket_counts[index] += 1
            state.total += value
            state.count += 1

    def count(self, **labels: object) -> int:
        key = self._key(labels)
        with self._lock:
            state = self._states.get(key)
            return state.count if state else 0

    def sum(self, **labels: object) -> float:
        key = self._key(labels)
        with self._lock:
            state = self._states.get(key)
            return state.total if state else 0.0

    def sample_names(self) -> set[str]:
        return {self.name, f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count"}

    def _snapshot(self) -> list[_HistogramSnapshot]:
        with self._lock:
            states = sorted(self._states.items())
            return [
                _HistogramSnapshot(key, _cumulative(s.bucket_counts), s.total, s.count)
                for key, s in states
            ]

    def _render_samples(self) -> list[str]:
        lines: list[str] = []
        bounds = [format_float(b) for b in self.buckets] + ["+Inf"]
        for snap in self._snapshot():
            pairs = self._pairs(snap.key)
            for bound, cumulative in zip(bounds, snap.cumulative, strict=True):
                lines.append(_sample(f"{self.name}_bucket", [*pairs, ("le", bound)], cumulative))
            lines.append(_sample(f"{self.name}_sum", pairs, snap.total))
            lines.append(_sample(f"{self.name}_count", pairs, snap.count))
        return lines


def _check_buckets(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    """Finite upper bounds, strictly increasing; a trailing +Inf is implied and dropped."""
    bounds = [float(b) for b in buckets]
    if bounds and bounds[-1] == math.inf:
        bounds.pop()
    if not bounds:
        raise ValueError(f"{name}: a histogram needs at least one finite bucket")
    if any(math.isnan(b) or math.isinf(b) for b in bounds):
        raise ValueError(f"{name}: bucket bounds must be finite, got {list(buckets)}")
    if any(b >= a for b, a in itertools.pairwise(bounds)):
        raise ValueError(f"{name}: buckets must be sorted increasing, got {list(buckets)}")
    return tuple(bounds)


def _cumulative(counts: Sequence[int]) -> list[int]:
    running, out = 0, []
    for c in counts:
        running += c
        out.append(running)
    return out


# ---------------------------------------------------------------------- registry
M = TypeVar("M", bound=_Metric)


class Registry:
    """Creates metrics, keeps them in registration order and renders them together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: list[_Metric] = []
        self._sample_names: set[str] = set()

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._register(Counter(name, help, labelnames))

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._register(Gauge(name, help, labelnames))

    def histogram(
        self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()
    ) -> Histogram:
        return self._register(Histogram(name, help, buckets, labelnames))

    def _register(self, metric: M) -> M:
        names = metric.sample_names()
        with self._lock:
            # Also compares generated names, e.g. a counter "x_count" vs a histogram "x".
            clash = names & self._sample_names
            if clash:
                raise ValueError(f"metric name(s) already registered: {sorted(clash)}")
            self._sample_names |= names
            self._metrics.append(metric)
        return metric

    def render(self) -> str:
        """The whole exposition text; it ends with a newline, as the format requires."""
        with self._lock:
            metrics = list(self._metrics)
        lines = [line for metric in metrics for line in metric.render()]
        return "\n".join(lines) + "\n" if lines else ""


# ---------------------------------------------------------------------- the service's set
class ServiceMetrics:
    """The metrics the CLIPSeg service records, on a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter(
            "clipseg_requests_total", "HTTP requests by route and status", ("route", "status")
        )
        self.stage_seconds = r.histogram(
            "clipseg_stage_seconds",
            "Seconds spent per request stage (decode, queue_wait, model, encode, total)",
            LATENCY_BUCKETS,
            ("stage",),
        )
        self.batch_images = r.histogram(
            "clipseg_batch_images", "Distinct images per model batch", BATCH_BUCKETS
        )
        self.batch_rows = r.histogram(
            "clipseg_batch_decoder_rows", "Decoder rows (prompts) per model batch", BATCH_BUCKETS
        )
        self.batches = r.counter("clipseg_batches_total", "Model batches run")
        self.batch_failures = r.counter(
            "clipseg_batch_failures_total", "Failed model batch attempts by reason", ("reason",)
        )
        self.queue_depth = r.gauge("clipseg_queue_depth", "Jobs waiting for the model")
        self.text_cache_hit_ratio = r.gauge(
            "clipseg_text_cache_hit_ratio", "Text-embedding cache hits / lookups"
        )
        self.rejected = r.counter(
            "clipseg_rejected_total",
            "Requests refused or abandoned (queue_full, deadline, disconnected)",
            ("reason",),
        )
        self.dropped = r.counter(
            "clipseg_dropped_jobs_total",
            "Queued jobs dropped before compute (abandoned by their request, or expired)",
            ("reason",),
        )

    def render(self) -> str:
        return self.registry.render()
