"""The metrics registry: values, exposition text, validation and thread safety."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable, Iterator

import pytest

from service.metrics import (
    BATCH_BUCKETS,
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
    ServiceMetrics,
    format_float,
)


def lines_of(text: str) -> list[str]:
    assert text.endswith("\n"), "the exposition text must end with a newline"
    return text.splitlines()


def samples(text: str) -> dict[str, str]:
    """Sample lines as {"name{labels}": "value"}; label values here never contain spaces."""
    out = {}
    for line in lines_of(text):
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            assert series not in out, f"duplicate series {series}"
            out[series] = value
    return out


@pytest.fixture
def tiny_switch_interval() -> Iterator[None]:
    """Switch threads very often, so that an unlocked read-modify-write would lose updates."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def run_threads(n: int, target: Callable[[], None]) -> None:
    barrier = threading.Barrier(n)

    def worker() -> None:
        barrier.wait()
        target()

    threads = [threading.Thread(target=worker) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ---------------------------------------------------------------------- counters and gauges
def test_counter_values_and_rendered_lines():
    reg = Registry()
    requests = reg.counter("clipseg_requests_total", "Requests", ("route", "status"))
    for _ in range(3):
        requests.inc(route="/segment/text", status="200")
    requests.inc(2.5, route="/segment/image", status="429")

    assert requests.value(route="/segment/text", status="200") == 3.0
    assert requests.value(route="/segment/image", status="429") == 2.5
    assert requests.value(route="/segment/text", status="500") == 0.0
    lines = lines_of(reg.render())
    assert lines[:2] == [
        "# HELP clipseg_requests_total Requests",
        "# TYPE clipseg_requests_total counter",
    ]
    assert 'clipseg_requests_total{route="/segment/text",status="200"} 3.0' in lines
    assert 'clipseg_requests_total{route="/segment/image",status="429"} 2.5' in lines
    assert len(lines) == 4


def test_unlabelled_metrics_render_zero_before_first_update_labelled_ones_nothing():
    reg = Registry()
    reg.counter("plain_total", "p")
    reg.counter("labelled_total", "l", ("reason",))
    assert samples(reg.render()) == {"plain_total": "0.0"}


def test_gauge_set_inc_dec():
    reg = Registry()
    g = reg.gauge("temperature", "t", ("room",))
    g.set(20.5, room="a")
    g.inc(room="a")
    g.dec(3, room="a")
    g.dec(room="b")
    assert g.value(room="a") == 18.5
    assert g.value(room="b") == -1.0
    assert samples(reg.render()) == {
        'temperature{room="a"}': "18.5",
        'temperature{room="b"}': "-1.0",
    }


def test_set_function_is_evaluated_at_render_time():
    reg = Registry()
    depth = reg.gauge("queue_depth", "q")
    queue = [1, 2]
    depth.set_function(lambda: len(queue))
    assert samples(reg.render())["queue_depth"] == "2.0"
    queue.extend([3, 4, 5])
    assert samples(reg.render())["queue_depth"] == "5.0"
    assert depth.value() == 5.0
    depth.set_function(lambda: 7)  # replacing the callback is allowed (batcher restarts)
    assert samples(reg.render())["queue_depth"] == "7.0"


def test_set_function_refused_on_labelled_gauge():
    g = Gauge("g", "g", ("a",))
    with pytest.raises(ValueError, match="unlabelled"):
        g.set_function(lambda: 1.0)


# ---------------------------------------------------------------------- histograms
def test_histogram_buckets_are_cumulative_with_inf_sum_and_count():
    reg = Registry()
    h = reg.histogram("latency_seconds", "l", [0.1, 0.5, 1.0], ("stage",))
    for v in (0.05, 0.1, 0.3, 0.7, 2.0, 5.0):  # 0.1 lands in le="0.1": bounds are inclusive
        h.observe(v, stage="model")

    assert h.count(stage="model") == 6
    assert h.sum(stage="model") == pytest.approx(8.15)
    assert h.count(stage="decode") == 0
    s = samples(reg.render())
    assert s['latency_seconds_bucket{stage="model",le="0.1"}'] == "2.0"
    assert s['latency_seconds_bucket{stage="model",le="0.5"}'] == "3.0"
    assert s['latency_seconds_bucket{stage="model",le="1.0"}'] == "4.0"
    assert s['latency_seconds_bucket{stage="model",le="+Inf"}'] == "6.0"
    assert s['latency_seconds_count{stage="model"}'] == "6.0"
    assert float(s['latency_seconds_sum{stage="model"}']) == pytest.approx(8.15)
    assert len(s) == 6  # 4 buckets + sum + count


def test_histogram_line_order_and_type_header():
    reg = Registry()
    h = reg.histogram("batch_images", "b", [1, 2])
    h.observe(2)
    assert lines_of(reg.render()) == [
        "# HELP batch_images b",
        "# TYPE batch_images histogram",
        'batch_images_bucket{le="1.0"} 0.0',
        'batch_images_bucket{le="2.0"} 1.0',
        'batch_images_bucket{le="+Inf"} 1.0',
        "batch_images_sum 2.0",
        "batch_images_count 1.0",
    ]


def test_histogram_nan_observation_counts_only_in_inf_bucket():
    h = Histogram("h", "h", [1.0])
    h.observe(float("nan"))
    s = samples("\n".join(h.render()) + "\n")
    assert s['h_bucket{le="1.0"}'] == "0.0"
    assert s['h_bucket{le="+Inf"}'] == "1.0"
    assert s["h_sum"] == "NaN"


@pytest.mark.parametrize(
    "buckets",
    [[1.0, 0.5], [1.0, 1.0], [], [math.inf], [float("nan")], [0.1, float("nan"), 1.0]],
)
def test_bad_buckets_raise(buckets):
    with pytest.raises(ValueError):
        Histogram("h", "h", buckets)


def test_trailing_inf_bucket_is_accepted_and_not_duplicated():
    h = Histogram("h", "h", [1.0, math.inf])
    assert h.buckets == (1.0,)
    assert sum('le="+Inf"' in line for line in h.render()) == 1


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("name", ["", "1abc", "has-dash", "has space", "é"])
def test_invalid_metric_names_raise(name):
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter(name, "h")


def test_colons_and_underscores_are_valid_names():
    assert Counter("ns:sub_total", "h").name == "ns:sub_total"
    assert Gauge("_private", "h").name == "_private"


@pytest.mark.parametrize("labelnames", [("1a",), ("a-b",), ("__reserved",), ("a", "a"), ("ok", "")])
def test_invalid_label_names_raise(labelnames):
    with pytest.raises(ValueError):
        Counter("c", "h", labelnames)


def test_label_names_colliding_with_parameters_raise():
    with pytest.raises(ValueError, match="reserved"):
        Histogram("h", "h", [1.0], ("le",))
    with pytest.raises(ValueError, match="reserved"):
        Gauge("g", "h", ("value",))
    with pytest.raises(ValueError, match="reserved"):
        Counter("c", "h", ("amount",))


def test_a_bare_string_is_not_taken_as_label_names():
    with pytest.raises(ValueError, match="not a string"):
        Counter("c", "h", "reason")  # type: ignore[arg-type]


def test_wrong_or_missing_labels_raise():
    c = Counter("c", "h", ("route", "status"))
    with pytest.raises(ValueError, match="expected labels"):
        c.inc(route="/x")
    with pytest.raises(ValueError, match="expected labels"):
        c.inc(route="/x", status="200", extra="1")
    with pytest.raises(ValueError, match="expected labels"):
        c.inc(route="/x", state="200")
    with pytest.raises(ValueError, match="expected labels"):
        Counter("plain", "h").inc(route="/x")
    with pytest.raises(ValueError, match="expected labels"):
        Histogram("h", "h", [1.0], ("stage",)).observe(0.5)
    assert c.value(route="/x", status="200") == 0.0  # nothing half-recorded


@pytest.mark.parametrize("amount", [-1.0, -1e-9, float("nan")])
def test_counter_refuses_negative_or_nan(amount):
    c = Counter("c", "h")
    with pytest.raises(ValueError, match="only go up"):
        c.inc(amount)
    assert c.value() == 0.0


def test_duplicate_registration_raises():
    reg = Registry()
    reg.counter("dup_total", "h")
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("dup_total", "h")
    reg.histogram("latency", "h", [1.0])
    # The histogram's generated sample names are taken too.
    with pytest.raises(ValueError, match="already registered"):
        reg.counter("latency_count", "h")
    assert [line for line in lines_of(reg.render()) if line.startswith("# TYPE")] == [
        "# TYPE dup_total counter",
        "# TYPE latency histogram",
    ]


# ---------------------------------------------------------------------- formatting
def test_label_values_are_escaped():
    reg = Registry()
    c = reg.counter("c_total", "h", ("path",))
    c.inc(path='a\\b"c\nd')
    assert 'c_total{path="a\\\\b\\"c\\nd"} 1.0' in lines_of(reg.render())


def test_help_text_is_escaped():
    reg = Registry()
    reg.gauge("g", 'line one\nback\\slash "quotes stay"')
    assert lines_of(reg.render())[0] == '# HELP g line one\\nback\\\\slash "quotes stay"'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3.0"),
        (0.25, "0.25"),
        (-2.0, "-2.0"),
        (1e16, "10000000000000000.0"),
        (1e-5, "1e-05"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
        (math.nan, "NaN"),
    ],
)
def test_format_float(value, text):
    assert format_float(value) == text
    if not math.isnan(value):
        assert float(text.replace("Inf", "inf")) == value  # round-trips


def test_empty_registry_renders_empty_text():
    assert Registry().render() == ""


# ---------------------------------------------------------------------- the service's set
def test_service_metrics_names_types_and_buckets():
    m = ServiceMetrics()
    m.requests.inc(route="/segment/text", status="200")
    m.stage_seconds.observe(0.003, stage="decode")
    m.batch_images.observe(3)
    m.batch_rows.observe(12)
    m.batches.inc()
    m.batch_failures.inc(reason="oom")
    m.queue_depth.set_function(lambda: 4)
    m.text_cache_hit_ratio.set(0.75)
    m.rejected.inc(reason="queue_full")

    types = {
        line.split()[2]: line.split()[3]
        for line in lines_of(m.render())
        if line.startswith("# TYPE")
    }
    assert types == {
        "clipseg_requests_total": "counter",
        "clipseg_stage_seconds": "histogram",
        "clipseg_batch_images": "histogram",
        "clipseg_batch_decoder_rows": "histogram",
        "clipseg_batches_total": "counter",
        "clipseg_batch_failures_total": "counter",
        "clipseg_queue_depth": "gauge",
        "clipseg_text_cache_hit_ratio": "gauge",
        "clipseg_rejected_total": "counter",
        "clipseg_dropped_jobs_total": "counter",
    }
    s = samples(m.render())
    assert s['clipseg_stage_seconds_bucket{stage="decode",le="0.0025"}'] == "0.0"
    assert s['clipseg_stage_seconds_bucket{stage="decode",le="0.005"}'] == "1.0"
    assert s['clipseg_stage_seconds_bucket{stage="decode",le="30.0"}'] == "1.0"
    assert s['clipseg_batch_images_bucket{le="2.0"}'] == "0.0"
    assert s['clipseg_batch_images_bucket{le="4.0"}'] == "1.0"
    assert s['clipseg_batch_decoder_rows_bucket{le="16.0"}'] == "1.0"
    assert s["clipseg_queue_depth"] == "4.0"
    assert s["clipseg_text_cache_hit_ratio"] == "0.75"
    assert s['clipseg_rejected_total{reason="queue_full"}'] == "1.0"
    assert s['clipseg_batch_failures_total{reason="oom"}'] == "1.0"
    assert s["clipseg_batches_total"] == "1.0"
    assert m.stage_seconds.buckets == LATENCY_BUCKETS
    assert m.batch_images.buckets == m.batch_rows.buckets == tuple(map(float, BATCH_BUCKETS))
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_each_service_metrics_has_its_own_registry():
    a, b = ServiceMetrics(), ServiceMetrics()  # one per app; no global clashes
    a.batches.inc()
    assert b.batches.value() == 0.0


# ---------------------------------------------------------------------- thread safety
def test_concurrent_increments_are_not_lost(tiny_switch_interval):
    counter = Counter("c_total", "h", ("route",))
    hist = Histogram("h", "h", [0.5, 1.0])
    gauge = Gauge("g", "h")

    def work() -> None:
        for i in range(10_000):
            counter.inc(route="/x")
            hist.observe(i % 2)  # half 0.0, half 1.0
            gauge.inc()

    run_threads(8, work)
    assert counter.value(route="/x") == 80_000
    assert hist.count() == 80_000
    assert hist.sum() == 40_000
    assert gauge.value() == 80_000
    s = samples("\n".join(hist.render()) + "\n")
    assert s['h_bucket{le="0.5"}'] == "40000.0"
    assert s['h_bucket{le="+Inf"}'] == s["h_count"] == "80000.0"


def test_render_while_new_label_values_appear(tiny_switch_interval):
    reg = Registry()
    counter = reg.counter("c_total", "h", ("n",))
    hist = reg.histogram("h", "h", [1.0], ("n",))
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                reg.render()
        except BaseException as exc:  # e.g. "dictionary changed size during iteration"
            errors.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i in range(2_000):
            counter.inc(n=str(i))
            hist.observe(0.5, n=str(i))
    finally:
        done.set()
        scraper.join()
    assert errors == []
    assert len(samples(reg.render())) == 2_000 + 2_000 * 4


# ---------------------------------------------------------------------- format check
def test_text_parses_with_prometheus_client():
    parser = pytest.importorskip("prometheus_client.parser")
    m = ServiceMetrics()
    m.requests.inc(3, route="/segment/text", status="200")
    m.requests.inc(route='we"ird\\path\n', status="404")
    for v in (0.002, 0.02, 0.2, 45.0):
        m.stage_seconds.observe(v, stage="model")
    m.batch_images.observe(2)
    m.queue_depth.set_function(lambda: 1)
    m.text_cache_hit_ratio.set(0.5)

    families = {f.name: f for f in parser.text_string_to_metric_families(m.render())}
    # The parser drops the "_total" suffix from counter family names.
    assert families["clipseg_requests"].type == "counter"
    assert families["clipseg_stage_seconds"].type == "histogram"
    assert families["clipseg_queue_depth"].type == "gauge"
    requests = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in families["clipseg_requests"].samples
    }
    assert requests == {("/segment/text", "200"): 3.0, ('we"ird\\path\n', "404"): 1.0}
    stage = {
        (s.name, s.labels.get("le")): s.value for s in families["clipseg_stage_seconds"].samples
    }
    assert stage[("clipseg_stage_seconds_bucket", "0.0025")] == 1.0
    assert stage[("clipseg_stage_seconds_bucket", "0.25")] == 3.0
    assert stage[("clipseg_stage_seconds_bucket", "30.0")] == 3.0
    assert stage[("clipseg_stage_seconds_bucket", "+Inf")] == 4.0
    assert stage[("clipseg_stage_seconds_count", None)] == 4.0
    assert stage[("clipseg_stage_seconds_sum", None)] == pytest.approx(45.222)
