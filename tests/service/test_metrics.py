"""ServiceMetrics: names, types, labels and buckets as scraped, and the scrape-time bindings.

Every check parses ``render()`` with prometheus_client's own parser, i.e. reads the metrics
the way a Prometheus server would, instead of poking at the metric objects.
"""

from __future__ import annotations

import logging
import threading

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from clipseg_serve.service.metrics import (
    BATCH_BUCKETS,
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    ServiceMetrics,
)

# Family name as the parser reports it (counters lose "_total") -> type.
RECORDED = {
    "clipseg_requests": "counter",
    "clipseg_stage_seconds": "histogram",
    "clipseg_batch_images": "histogram",
    "clipseg_batch_decoder_rows": "histogram",
    "clipseg_batches": "counter",
    "clipseg_batch_failures": "counter",
    "clipseg_rejected": "counter",
    "clipseg_dropped_jobs": "counter",
    "clipseg_batch_cost_seconds": "gauge",
}
SCRAPE_TIME = {
    "clipseg_queue_depth": "gauge",
    "clipseg_queue_backlog_seconds": "gauge",
    "clipseg_memory_reserved_bytes": "gauge",
    "clipseg_text_cache_hits": "counter",
    "clipseg_text_cache_misses": "counter",
    "clipseg_text_cache_entries": "gauge",
    "clipseg_text_cache_hit_ratio": "gauge",
    "clipseg_ready": "gauge",
    "clipseg_healthy": "gauge",
}
# The sample each scrape-time family writes (counters with their "_total" suffix).
SCRAPE_TIME_SAMPLE = {
    name: f"{name}_total" if kind == "counter" else name for name, kind in SCRAPE_TIME.items()
}


def scrape(m: ServiceMetrics) -> dict[str, prometheus_client.Metric]:
    text = m.render()
    assert isinstance(text, bytes)
    families = {f.name: f for f in text_string_to_metric_families(text.decode("utf-8"))}
    return families


def samples(m: ServiceMetrics) -> list[Sample]:
    return [s for family in scrape(m).values() for s in family.samples]


def value(m: ServiceMetrics, name: str, **labels: str) -> float | None:
    """The value of the one sample called ``name`` with exactly ``labels``; None if absent."""
    found = [s.value for s in samples(m) if s.name == name and s.labels == labels]
    assert len(found) <= 1, f"duplicate series {name}{labels}"
    return found[0] if found else None


def scrape_time_values(m: ServiceMetrics) -> dict[str, float | None]:
    return {name: value(m, sample) for name, sample in SCRAPE_TIME_SAMPLE.items()}


# ---------------------------------------------------------------------- names and types
def test_constants():
    assert CONTENT_TYPE == prometheus_client.CONTENT_TYPE_LATEST
    assert LATENCY_BUCKETS == (
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    )  # fmt: skip
    assert BATCH_BUCKETS == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def test_every_metric_is_exposed_with_its_type_and_a_help_text_from_the_first_scrape():
    families = scrape(ServiceMetrics())
    for name, kind in {**RECORDED, **SCRAPE_TIME}.items():
        assert name in families, f"{name} missing"
        assert families[name].type == kind, name
        help_text = families[name].documentation
        assert len(help_text) > 20 and help_text != name, f"{name}: help {help_text!r}"
    assert families["clipseg_batch_images"].documentation.startswith(
        "Distinct images per model batch"
    )


def test_labels_of_recorded_metrics():
    m = ServiceMetrics()
    m.requests.labels(route="/segment/text", status="200").inc()
    m.stage_seconds.labels(stage="decode").observe(0.01)
    m.batch_failures.labels(reason="oom").inc()
    m.rejected.labels(reason="queue_full").inc()
    m.dropped.labels(reason="expired").inc()
    m.batch_cost.labels(term="per_image").set(0.4)

    families = scrape(m)
    expected = {
        "clipseg_requests": {"route", "status"},
        "clipseg_stage_seconds": {"stage"},
        "clipseg_batch_failures": {"reason"},
        "clipseg_rejected": {"reason"},
        "clipseg_dropped_jobs": {"reason"},
        "clipseg_batch_cost_seconds": {"term"},
        "clipseg_batch_images": set(),
        "clipseg_batch_decoder_rows": set(),
        "clipseg_batches": set(),
    }
    for name, labelnames in expected.items():
        assert families[name].samples, name
        for s in families[name].samples:
            assert set(s.labels) - {"le"} == labelnames, (name, s)
    for name in SCRAPE_TIME:
        assert [s.labels for s in families[name].samples] == [{}], name


# ---------------------------------------------------------------------- recorded values
def test_counters_count_per_label_set():
    m = ServiceMetrics()
    for _ in range(3):
        m.requests.labels(route="/segment/text", status="200").inc()
    m.requests.labels(route="/segment/image", status="429").inc(2)
    m.batches.inc()
    m.batches.inc()
    m.rejected.labels(reason="queue_full").inc()
    m.rejected.labels(reason="deadline").inc(4)
    m.dropped.labels(reason="abandoned").inc()
    m.batch_failures.labels(reason="oom").inc()

    assert value(m, "clipseg_requests_total", route="/segment/text", status="200") == 3
    assert value(m, "clipseg_requests_total", route="/segment/image", status="429") == 2
    assert value(m, "clipseg_requests_total", route="/segment/text", status="500") is None
    assert value(m, "clipseg_batches_total") == 2
    assert value(m, "clipseg_rejected_total", reason="queue_full") == 1
    assert value(m, "clipseg_rejected_total", reason="deadline") == 4
    assert value(m, "clipseg_dropped_jobs_total", reason="abandoned") == 1
    assert value(m, "clipseg_batch_failures_total", reason="oom") == 1


def test_batches_counter_is_zero_before_the_first_batch():
    assert value(ServiceMetrics(), "clipseg_batches_total") == 0


def test_stage_histogram_buckets_are_the_latency_buckets_and_cumulative():
    m = ServiceMetrics()
    for v in (0.0005, 0.001, 0.003, 0.2, 45.0):  # 0.001 lands in le="0.001": inclusive
        m.stage_seconds.labels(stage="model").observe(v)

    buckets = {
        s.labels["le"]: s.value
        for s in samples(m)
        if s.name == "clipseg_stage_seconds_bucket" and s.labels["stage"] == "model"
    }
    assert list(buckets) == [str(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert buckets["0.001"] == 2
    assert buckets["0.0025"] == 2
    assert buckets["0.005"] == 3
    assert buckets["0.25"] == 4
    assert buckets["30.0"] == 4
    assert buckets["+Inf"] == 5
    assert value(m, "clipseg_stage_seconds_count", stage="model") == 5
    assert value(m, "clipseg_stage_seconds_sum", stage="model") == pytest.approx(45.2045)


@pytest.mark.parametrize("attr", ["batch_images", "batch_rows"])
def test_batch_histograms_use_the_batch_buckets(attr):
    m = ServiceMetrics()
    name = {"batch_images": "clipseg_batch_images", "batch_rows": "clipseg_batch_decoder_rows"}
    getattr(m, attr).observe(3)
    getattr(m, attr).observe(600)
    buckets = {s.labels["le"]: s.value for s in samples(m) if s.name == f"{name[attr]}_bucket"}
    assert list(buckets) == [str(float(b)) for b in BATCH_BUCKETS] + ["+Inf"]
    assert buckets["2.0"] == 0
    assert buckets["4.0"] == 1
    assert buckets["512.0"] == 1
    assert buckets["+Inf"] == 2
    assert value(m, f"{name[attr]}_sum") == 603


def test_batch_cost_gauge_holds_the_latest_coefficients():
    m = ServiceMetrics()
    m.batch_cost.labels(term="per_image").set(0.4)
    m.batch_cost.labels(term="per_batch").set(0.02)
    m.batch_cost.labels(term="per_image").set(0.35)
    assert value(m, "clipseg_batch_cost_seconds", term="per_image") == 0.35
    assert value(m, "clipseg_batch_cost_seconds", term="per_batch") == 0.02


# ---------------------------------------------------------------------- scrape-time values
def test_unbound_scrape_time_metrics_read_zero():
    assert scrape_time_values(ServiceMetrics()) == dict.fromkeys(SCRAPE_TIME, 0.0)


def test_bound_callables_are_read_at_each_scrape():
    m = ServiceMetrics()
    state = {"depth": 2, "backlog": 0.5, "mem": 1 << 30, "ready": False, "healthy": True}
    cache = {"hits": 3, "misses": 1, "entries": 4}
    m.bind(
        queue_depth=lambda: state["depth"],
        backlog_seconds=lambda: state["backlog"],
        memory_reserved_bytes=lambda: state["mem"],
        text_cache=lambda: dict(cache),
        ready=lambda: state["ready"],
        healthy=lambda: state["healthy"],
    )
    assert scrape_time_values(m) == {
        "clipseg_queue_depth": 2,
        "clipseg_queue_backlog_seconds": 0.5,
        "clipseg_memory_reserved_bytes": 1 << 30,
        "clipseg_text_cache_hits": 3,
        "clipseg_text_cache_misses": 1,
        "clipseg_text_cache_entries": 4,
        "clipseg_text_cache_hit_ratio": 0.75,
        "clipseg_ready": 0,
        "clipseg_healthy": 1,
    }

    state.update(depth=7, backlog=3.25, mem=2 << 30, ready=True, healthy=False)
    cache.update(hits=9, misses=11, entries=5)
    assert scrape_time_values(m) == {
        "clipseg_queue_depth": 7,
        "clipseg_queue_backlog_seconds": 3.25,
        "clipseg_memory_reserved_bytes": 2 << 30,
        "clipseg_text_cache_hits": 9,
        "clipseg_text_cache_misses": 11,
        "clipseg_text_cache_entries": 5,
        "clipseg_text_cache_hit_ratio": 0.45,
        "clipseg_ready": 1,
        "clipseg_healthy": 0,
    }


def test_hit_ratio_is_zero_without_lookups():
    m = ServiceMetrics()
    m.bind(text_cache=lambda: {"hits": 0, "misses": 0, "entries": 0})
    assert value(m, "clipseg_text_cache_hit_ratio") == 0


def test_text_cache_stats_with_extra_keys_are_accepted():
    """TextEmbeddingCache.stats() also reports its capacity; bind must take it as it is."""
    m = ServiceMetrics()
    m.bind(text_cache=lambda: {"hits": 1, "misses": 1, "entries": 1, "capacity": 8})
    assert value(m, "clipseg_text_cache_hit_ratio") == 0.5


def test_rebinding_replaces_only_the_callables_given():
    m = ServiceMetrics()
    m.bind(queue_depth=lambda: 1, ready=lambda: True)
    m.bind(queue_depth=lambda: 5)  # e.g. a restarted batcher
    assert value(m, "clipseg_queue_depth") == 5
    assert value(m, "clipseg_ready") == 1  # not passed again, so still bound
    m.bind(ready=lambda: False)
    assert value(m, "clipseg_ready") == 0
    assert value(m, "clipseg_queue_depth") == 5


def test_a_raising_callable_does_not_break_the_scrape(caplog):
    def boom() -> float:
        raise RuntimeError("queue gone")

    m = ServiceMetrics()
    m.requests.labels(route="/healthz", status="200").inc()
    m.bind(
        queue_depth=boom,
        backlog_seconds=lambda: 1.5,
        text_cache=boom,
        ready=boom,
        healthy=lambda: True,
    )
    with caplog.at_level(logging.DEBUG, logger="clipseg_serve.service.metrics"):
        got = scrape_time_values(m)  # one scrape per value read: several scrapes
        families = scrape(m)

    assert got["clipseg_queue_depth"] is None
    assert families["clipseg_queue_depth"].type == "gauge"  # the name stays visible
    for name in ("hits", "misses", "entries", "hit_ratio"):
        assert got[f"clipseg_text_cache_{name}"] is None
    assert got["clipseg_ready"] == 0  # a failing readiness probe means not ready
    assert got["clipseg_queue_backlog_seconds"] == 1.5
    assert got["clipseg_healthy"] == 1
    assert value(m, "clipseg_requests_total", route="/healthz", status="200") == 1
    assert value(m, "process_resident_memory_bytes") is not None

    failures = [r for r in caplog.records if r.name == "clipseg_serve.service.metrics"]
    assert all(r.levelno == logging.DEBUG for r in failures)
    # Once per failing callable however many scrapes there were.
    assert sorted(r.getMessage().split("'")[1] for r in failures) == [
        "queue_depth",
        "ready",
        "text_cache",
    ]

    m.bind(queue_depth=lambda: 3)  # a fixed callable brings the value back
    assert value(m, "clipseg_queue_depth") == 3


@pytest.mark.parametrize("stats", [{"hits": 1}, None, {"hits": "many", "misses": 0, "entries": 0}])
def test_malformed_text_cache_stats_are_omitted(stats):
    m = ServiceMetrics()
    m.bind(text_cache=lambda: stats, queue_depth=lambda: 2)
    got = scrape_time_values(m)
    assert got["clipseg_text_cache_hits"] is None
    assert got["clipseg_text_cache_hit_ratio"] is None
    assert got["clipseg_queue_depth"] == 2


def test_a_non_numeric_value_is_omitted():
    m = ServiceMetrics()
    m.bind(queue_depth=lambda: "lots")  # type: ignore[arg-type, return-value]
    assert value(m, "clipseg_queue_depth") is None


def test_callables_run_outside_the_collector_lock():
    """A callable that itself binds (or scrapes) must not deadlock the scrape."""
    m = ServiceMetrics()

    def rebinding_depth() -> float:
        m.bind(backlog_seconds=lambda: 2.0)
        return 1.0

    m.bind(queue_depth=rebinding_depth)
    result: list[bytes] = []
    worker = threading.Thread(target=lambda: result.append(m.render()), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert result, "render() deadlocked"
    assert value(m, "clipseg_queue_backlog_seconds") == 2.0


# ---------------------------------------------------------------------- instances
def test_two_instances_share_no_values():
    a, b = ServiceMetrics(), ServiceMetrics()  # no global registry, no duplicate names
    a.batches.inc()
    a.rejected.labels(reason="budget").inc()
    a.stage_seconds.labels(stage="total").observe(0.2)
    a.bind(queue_depth=lambda: 9, ready=lambda: True)

    assert value(b, "clipseg_batches_total") == 0
    assert value(b, "clipseg_rejected_total", reason="budget") is None
    assert value(b, "clipseg_stage_seconds_count", stage="total") is None
    assert value(b, "clipseg_queue_depth") == 0
    assert value(b, "clipseg_ready") == 0
    assert value(a, "clipseg_batches_total") == 1
    assert value(a, "clipseg_queue_depth") == 9


def test_nothing_lands_on_the_global_registry():
    before = set(prometheus_client.REGISTRY._names_to_collectors)
    ServiceMetrics().batches.inc()
    assert set(prometheus_client.REGISTRY._names_to_collectors) == before


def test_process_and_runtime_metrics_are_present():
    families = scrape(ServiceMetrics())
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_cpu_seconds"].type == "counter"
    assert families["process_open_fds"].samples[0].value > 0
    assert families["python_info"].samples[0].labels["implementation"]
    assert families["python_gc_objects_collected"].type == "counter"


def test_render_is_the_text_exposition_format():
    text = ServiceMetrics().render()
    assert isinstance(text, bytes)
    assert text.endswith(b"\n")
    assert b"# TYPE clipseg_queue_depth gauge\n" in text
