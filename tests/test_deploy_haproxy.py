"""deploy/haproxy/haproxy.cfg and the compose "lb" profile keep their contract with the
service (static checks; tests/test_load_balancer.py runs the configuration for real)."""

from __future__ import annotations

import re
import subprocess

import pytest

from bench.lb import CONFIG, haproxy_binary
from clipseg_serve.service.config import DEFAULT_PORT, Settings
from tests.deploy_files import LB_REPLICA, LB_SERVICE, SERVICE, gpu_devices, load_compose, resolve

TEXT = CONFIG.read_text()
DEFAULTS = Settings(_env_file=None)


def directive(name: str) -> str:
    (value,) = re.findall(rf"^\s+{name}\s+(.+?)\s*$", TEXT, flags=re.M)
    return value


def seconds(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(ms|s|m)?", value).groups()
    return int(number) * {"ms": 0.001, "s": 1, "m": 60, None: 0.001}[unit]


def test_config_is_valid():
    binary = haproxy_binary()
    if binary is None:
        pytest.fail("HAProxy is not installed: apt-get install haproxy (.ci/run does)")
    run = subprocess.run([binary, "-c", "-f", str(CONFIG)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_routes_on_readiness():
    assert directive("http-check send") == "meth GET uri /readyz"
    assert directive("http-check expect") == "status 200"
    assert "option httpchk" in TEXT


def test_timeouts_follow_the_settings():
    assert seconds(directive("timeout http-request")) == DEFAULTS.header_timeout_s
    for side in ("server", "client"):
        assert seconds(directive(f"timeout {side}")) > DEFAULTS.request_timeout_s + 5


def test_servers_are_the_lb_profile_replicas():
    servers = re.findall(r'^\s+server \S+ "([\w-]+):\$\{CLIPSEG_PORT-(\d+)\}"', TEXT, re.M)
    assert {host for host, _ in servers} == {SERVICE, LB_REPLICA}
    assert {int(port) for _, port in servers} == {DEFAULT_PORT}


def test_lb_profile():
    services = resolve(load_compose()["services"])
    replica, lb = services[LB_REPLICA], services[LB_SERVICE]
    assert replica["profiles"] == lb["profiles"] == ["lb"]
    assert "ports" not in replica, "replicas are reached through the balancer"
    assert replica["healthcheck"] == services[SERVICE]["healthcheck"]
    assert replica["environment"] == services[SERVICE]["environment"]
    (device,) = gpu_devices(replica)
    assert device["device_ids"] == ["1"]
    assert f"./{CONFIG.relative_to(CONFIG.parents[2])}:" in lb["volumes"][0]
    assert lb["volumes"][0].endswith(":/usr/local/etc/haproxy/haproxy.cfg:ro")
    assert lb["environment"]["CLIPSEG_PORT"] == services[SERVICE]["environment"]["CLIPSEG_PORT"]
    assert lb["image"].startswith("haproxy:2.6")
    assert set(lb["depends_on"]) == {SERVICE, LB_REPLICA}


def test_shutdown_delay_outlasts_the_health_checks():
    """A stopping replica must stay in service until HAProxy has marked it down."""
    inter = seconds(re.search(r"inter (\d+\w*)", directive("default-server")).group(1))
    fall = int(re.search(r"fall (\d+)", directive("default-server")).group(1))
    compose = (CONFIG.parents[2] / "docker-compose.yml").read_text()
    recommended = float(re.search(r"set (\d+) or more behind", compose).group(1))
    assert recommended >= inter * (fall + 1)
