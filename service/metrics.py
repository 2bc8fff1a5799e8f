"""The service's Prometheus metrics, on ``prometheus_client`` with one registry per app.

Each ``ServiceMetrics`` owns its ``CollectorRegistry`` rather than using the library's global
one: tests (and a process that builds more than one app) create many instances, and the
global registry would refuse the second registration of every name.

Two kinds of metric live here:

* Recorded metrics (counters, histograms, the cost-model gauge) are plain
  ``prometheus_client`` objects; call sites use the normal API, e.g.
  ``metrics.rejected.labels(reason="queue_full").inc()``.
* Read-at-scrape metrics (queue depth, backlog, device memory, text-cache counts, readiness)
  belong to components that exist only once the model has loaded, which is after the app
  started. They are read through callables handed to ``bind`` by one custom collector, so
  a scrape always shows the current value and never a copy that someone forgot to update.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["BATCH_BUCKETS", "CONTENT_TYPE", "LATENCY_BUCKETS", "RATIO_BUCKETS", "ServiceMetrics"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CONTENT_TYPE: str = CONTENT_TYPE_LATEST

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Estimate / actual: the cost models' target band is 0.5..2.
RATIO_BUCKETS: tuple[float, ...] = (0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.11, 1.25, 1.5, 2.0, 4.0)


class _ScrapeTimeCollector(Collector):
    """Exposes the values that ``ServiceMetrics.bind`` callables return, read at each scrape.

    Every metric is exposed from the first scrape, as 0 while nothing is bound, so that
    dashboards and ``absent()`` alerts see the names before the model has loaded. A callable
    that raises drops only its own samples from that scrape (``clipseg_ready`` and
    ``clipseg_healthy`` read 0 instead: a probe that fails means "no"), and is logged at
    debug level once per bound callable so a broken probe cannot flood the log.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[str, Callable[[], Any]] = {}
        self._logged: set[str] = set()

    def bind(self, sources: Mapping[str, Callable[[], Any] | None]) -> None:
        """Replace the callables given (not None); the others stay as they were."""
        with self._lock:
            for name, fn in sources.items():
                if fn is not None:
                    self._sources[name] = fn
                    self._logged.discard(name)  # a new callable gets its own log line

    def _read(self, name: str, convert: Callable[[Any], T], default: T) -> T | None:
        """``convert(callable())``; ``default`` while unbound; None if either step raised."""
        with self._lock:
            fn = self._sources.get(name)
        if fn is None:
            return default
        # Called outside the lock: the callable may take its own locks (queue, cache).
        try:
            return convert(fn())
        except Exception as exc:
            with self._lock:
                first = name not in self._logged
                self._logged.add(name)
            if first:  # once per bound callable: a broken probe must not flood the log
                log.debug("metrics: reading %r failed (%r); logged once", name, exc)
            return None

    def describe(self) -> Iterable[Metric]:
        # Names only, for the registry's duplicate check; without describe() the registry
        # would not know the names (it does not call collect() at registration by default).
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> list[Metric]:
        depth = GaugeMetricFamily(
            "clipseg_queue_depth", "Jobs admitted and waiting for the model thread."
        )
        backlog = GaugeMetricFamily(
            "clipseg_queue_backlog_seconds",
            "Estimated seconds of model work queued ahead of a new job, from the scheduler's "
            "learned cost model.",
        )
        memory = GaugeMetricFamily(
            "clipseg_memory_reserved_bytes",
            "Bytes the model's device allocator holds reserved (CUDA caching allocator; 0 on CPU).",
        )
        hits = CounterMetricFamily(
            "clipseg_text_cache_hits",
            "Phrase-embedding lookups answered from the text-embedding cache.",
        )
        misses = CounterMetricFamily(
            "clipseg_text_cache_misses",
            "Phrase-embedding lookups that needed a text-encoder pass.",
        )
        entries = GaugeMetricFamily(
            "clipseg_text_cache_entries", "Phrase embeddings currently held by the cache."
        )
        ratio = GaugeMetricFamily(
            "clipseg_text_cache_hit_ratio",
            "Text-embedding cache hits / (hits + misses) since the cache was created; "
            "0 before any lookup.",
        )
        ready = GaugeMetricFamily(
            "clipseg_ready", "1 when the service accepts work (model loaded, not draining)."
        )
        healthy = GaugeMetricFamily(
            "clipseg_healthy", "1 while the model worker is alive and answering."
        )
        families: list[Metric] = [depth, backlog, memory, hits, misses, entries, ratio]
        families += [ready, healthy]
        if not with_samples:
            return families

        for family, name in (
            (depth, "queue_depth"),
            (backlog, "backlog_seconds"),
            (memory, "memory_reserved_bytes"),
        ):
            value = self._read(name, float, 0.0)
            if value is not None:
                family.add_metric([], value)

        counts = self._read("text_cache", _cache_counts, (0.0, 0.0, 0.0))
        if counts is not None:
            n_hits, n_misses, n_entries = counts
            hits.add_metric([], n_hits)
            misses.add_metric([], n_misses)
            entries.add_metric([], n_entries)
            lookups = n_hits + n_misses
            ratio.add_metric([], n_hits / lookups if lookups else 0.0)

        for family, name in ((ready, "ready"), (healthy, "healthy")):
            # A probe that fails (None) means "no", so these two always have a sample.
            family.add_metric([], 1.0 if self._read(name, bool, False) else 0.0)
        return families


def _cache_counts(stats: Mapping[str, int]) -> tuple[float, float, float]:
    """(hits, misses, entries) from the text cache's stats; raises if a key is missing."""
    return float(stats["hits"]), float(stats["misses"]), float(stats["entries"])


class ServiceMetrics:
    """The metrics the CLIPSeg service records, on a registry of their own."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "clipseg_requests_total",
            "HTTP requests answered, by route template and status code.",
            ("route", "status"),
            registry=r,
        )
        self.stage_seconds = Histogram(
            "clipseg_stage_seconds",
            "Seconds a request spent in each stage (decode, queue_wait, model, encode, total).",
            ("stage",),
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.batch_images = Histogram(
            "clipseg_batch_images",
            "Distinct images per model batch (one backbone pass each).",
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.batch_rows = Histogram(
            "clipseg_batch_decoder_rows",
            "Decoder rows (image x prompt pairs) per model batch.",
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.batches = Counter(
            "clipseg_batches_total", "Model batches run to completion.", registry=r
        )
        self.batch_failures = Counter(
            "clipseg_batch_failures_total",
            "Model batch attempts that failed, by reason (e.g. oom, error).",
            ("reason",),
            registry=r,
        )
        self.rejected = Counter(
            "clipseg_rejected_total",
            "Requests refused or given up before a result, by reason "
            "(queue_full, deadline, disconnected, budget, ...).",
            ("reason",),
            registry=r,
        )
        self.dropped = Counter(
            "clipseg_dropped_jobs_total",
            "Queued jobs dropped before compute, by reason (abandoned by their request, "
            "expired past their deadline, hopeless: could not finish in time).",
            ("reason",),
            registry=r,
        )
        self.batch_cost = Gauge(
            "clipseg_batch_cost_seconds",
            "The scheduler's learned batch cost model: seconds per term (per batch, per "
            "image, per decoder row, per text, per support image, per megapixel of each "
            "kind of pixel work).",
            ("term",),
            registry=r,
        )
        self.host_cost = Gauge(
            "clipseg_host_cost_seconds",
            "The learned cost of a request's decoding and encoding: seconds per term (per "
            "request, per decoded MB, per megapixel encoded as png / rle / polygon / soft).",
            ("term",),
            registry=r,
        )
        self.estimate_ratio = Histogram(
            "clipseg_cost_estimate_ratio",
            "Estimated / actual seconds, before each observation is learned: of each model "
            "batch (kind=batch) and of each request's decoding and encoding (kind=host).",
            ("kind",),
            registry=r,
            buckets=RATIO_BUCKETS,
        )
        self._scrape_time = _ScrapeTimeCollector()
        r.register(self._scrape_time)
        # process_* (memory, CPU, fds), python_info and python_gc_*, as the library's
        # global registry would have them.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def bind(
        self,
        *,
        queue_depth: Callable[[], float] | None = None,
        backlog_seconds: Callable[[], float] | None = None,
        memory_reserved_bytes: Callable[[], float] | None = None,
        text_cache: Callable[[], Mapping[str, int]] | None = None,
        ready: Callable[[], bool] | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        """Set the callables read at each scrape; may be called any number of times.

        A callable given here replaces the one bound before under that name; a name left as
        None keeps its current binding, so the app can bind readiness at start-up and the
        model's values once it has loaded. ``text_cache`` returns a mapping with ``hits``,
        ``misses`` and ``entries`` (``TextEmbeddingCache.stats`` does).
        """
        self._scrape_time.bind(
            {
                "queue_depth": queue_depth,
                "backlog_seconds": backlog_seconds,
                "memory_reserved_bytes": memory_reserved_bytes,
                "text_cache": text_cache,
                "ready": ready,
                "healthy": healthy,
            }
        )

    def render(self) -> bytes:
        """The exposition text of every metric on this instance's registry."""
        return generate_latest(self.registry)
