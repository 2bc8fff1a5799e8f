"""The scale-out story with real parts: clipseg-serve replicas behind Debian's HAProxy.

deploy/haproxy/haproxy.cfg (the shipped configuration, loopback replicas swapped in by
bench/lb.py) in front of real ``clipseg-serve`` processes (random:tiny on the CPU, one
torch thread and one core each). Proves what a cluster relies on: a replica still loading
gets no traffic (readiness), stopping a replica under load loses no request it had
accepted while the others take over (drain), and throughput with 1 and 2 replicas (the
curve is printed; bench/scale_out.py measures it properly). .ci/run installs HAProxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.lb import HAProxy, haproxy_binary
from bench.replicas import Load, Replica, spawn, throughput

if haproxy_binary() is None:
    pytest.fail("HAProxy is not installed: apt-get install haproxy (.ci/run does)",
                pytrace=False)  # fmt: skip


@pytest.fixture(scope="module")
def gate(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gate") / "load-now"


@pytest.fixture(scope="module")
def replicas(gate) -> Iterator[dict[str, Replica]]:
    """``ready``, ``other`` (both serving) and ``loading`` (waits for ``gate``), started
    together; ``loading`` is listening with /readyz 503 when the tests begin."""
    # "other" is stopped under load: like the compose profile's replicas it keeps serving
    # with /readyz 503 for longer than HAProxy needs to mark it down (2 checks, 1 s apart).
    started = {"ready": spawn(core=0), "other": spawn(core=1, CLIPSEG_SHUTDOWN_DELAY_S="3"),
               "loading": spawn(gate=gate, core=1)}  # fmt: skip
    try:
        started["ready"].wait("/readyz", 200)
        started["other"].wait("/readyz", 200)
        started["loading"].wait("/healthz", 200)
        assert started["loading"].status("/readyz") == 503
        yield started
    finally:
        for replica in started.values():
            replica.stop()


def test_no_traffic_reaches_a_replica_still_loading(replicas, gate):
    ready, loading = replicas["ready"], replicas["loading"]
    with HAProxy([ready.address, loading.address]) as lb:
        lb.wait_for("r0", "UP")
        lb.wait_for("r1", "DOWN")
        with Load(lb.url, clients=4) as load:
            time.sleep(2.0)
        assert set(load.statuses) == {200} and load.total() >= 20, load.statuses
        assert loading.status("/readyz") == 503, "still loading throughout"
        assert loading.served() == 0, "a replica that is not ready got requests"
        assert int(lb.servers()["r1"]["stot"]) == 0
        assert ready.served() >= load.total()

        gate.touch()  # the weights "arrive": it loads, warms up, /readyz turns 200
        loading.wait("/readyz", 200)
        lb.wait_for("r1", "UP")
        with Load(lb.url, clients=4) as load:
            time.sleep(2.0)
        assert set(load.statuses) == {200}, load.statuses
        assert loading.served() > 0, "once ready it takes its share"


def test_stopping_a_replica_under_load_loses_no_request(replicas):
    """SIGTERM (what Kubernetes sends after preStop) to one of two replicas while
    clients keep sending: the requests it had accepted finish on it, new ones go to the
    other (refused connections are retried there), and no client sees an error."""
    ready, stopping = replicas["ready"], replicas["other"]
    with HAProxy([ready.address, stopping.address]) as lb:
        lb.wait_for("r0", "UP")
        lb.wait_for("r1", "UP")
        with Load(lb.url, clients=6) as load:
            time.sleep(1.5)
            in_flight = int(lb.servers()["r1"]["scur"])
            stopping.process.terminate()
            time.sleep(1.0)
            assert stopping.status("/readyz") == 503, "a stopping replica reports not ready"
            status = stopping.process.wait(timeout=60)
            after_stop = load.total()
            time.sleep(1.5)
        logged = lb.requests()
    on_stopped = [r for r in logged if r["server"] == "r1"]
    retried = [r for r in logged if r["retries"] != "0"]
    print(f"\ndrain: {load.total()} requests, {dict(load.statuses)}; the stopped replica "
          f"had {in_flight} in flight at SIGTERM and answered {len(on_stopped)} in all; "
          f"{len(retried)} retried on the other (exit status {status})")  # fmt: skip
    assert set(load.statuses) == {200}, f"lost requests: {load.statuses}"
    assert in_flight > 0, "the stopped replica was not under load"
    assert len(logged) == load.total()
    incomplete = [r for r in logged if (r["status"], r["termination"]) != ("200", "----")]
    assert not incomplete, f"requests that did not complete normally: {incomplete}"
    assert status in (0, -15), f"not a graceful exit: {status}"  # uvicorn re-raises SIGTERM
    assert load.total() > after_stop, "the other replica took the traffic"


def test_throughput_grows_with_replicas(replicas, gate):
    """The scaling curve for 1 and 2 replicas (printed; asserted only to be served in
    full: a shared 2-core machine makes the ratio too noisy to gate on)."""
    gate.touch()
    first, second = replicas["ready"], replicas["loading"]
    second.wait("/readyz", 200)
    curve = {}
    for count in (1, 2):
        with HAProxy([first.address, second.address][:count]) as lb:
            for i in range(count):
                lb.wait_for(f"r{i}", "UP")
            curve[count] = throughput(lb.url, clients=4, seconds=3.0)
    print(f"\nscale-out (tiny model, 2048 px JPEG, 1 core per replica): 1 replica "
          f"{curve[1]:.1f} req/s, 2 replicas {curve[2]:.1f} req/s "
          f"(x{curve[2] / curve[1]:.2f})")  # fmt: skip
    assert curve[1] > 0 and curve[2] > 0
