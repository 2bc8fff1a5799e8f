"""Run Debian's HAProxy with deploy/haproxy/haproxy.cfg in front of loopback replicas.

The shipped configuration is used as it is, except for what must differ on one machine:
the server lines between its "servers" markers become the given replicas and the two
``bind`` addresses come from the environment (its ``${CLIPSEG_LB_BIND}`` variables).
Shared by tests/test_load_balancer.py and bench/scale_out.py.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
#: backend/server Tq/Tw/Tc/Tr/Ta status bytes - - termination act/fe/be/srv/retries
_HTTPLOG = re.compile(
    r" clipseg/(?P<server>\S+) \S+ (?P<status>-?\d+) \d+ \S+ \S+ (?P<termination>\S{4}) "
    r"\d+/\d+/\d+/\d+/(?P<retries>\+?\d+) "
)
_SERVERS = re.compile(r"(    # --- servers[^\n]*\n)(.*?)(    # --- end servers ---\n)", re.S)


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_with(replicas: Sequence[str]) -> str:
    """The shipped configuration with ``replicas`` (``host:port``) as its servers."""
    text = CONFIG.read_text()
    lines = "".join(f"    server r{i} {url}\n" for i, url in enumerate(replicas))
    text, count = _SERVERS.subn(lambda m: m.group(1) + lines + m.group(3), text)
    assert count == 1, "the servers markers are missing from haproxy.cfg"
    return text


class HAProxy:
    """``with HAProxy(["127.0.0.1:8001", ...]) as lb: httpx.get(lb.url + "/readyz")``."""

    def __init__(self, replicas: Sequence[str]) -> None:
        binary = haproxy_binary()
        assert binary, "HAProxy is not installed (apt-get install haproxy)"
        self.binary, self.replicas = binary, list(replicas)
        self.port, self.stats_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._dir = tempfile.TemporaryDirectory(prefix="clipseg-lb-")
        self.config = Path(self._dir.name) / "haproxy.cfg"
        self.config.write_text(config_with(self.replicas))
        self.log = Path(self._dir.name) / "haproxy.log"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> HAProxy:
        env = {
            **os.environ,
            "CLIPSEG_LB_BIND": f"127.0.0.1:{self.port}",
            "CLIPSEG_LB_STATS_BIND": f"127.0.0.1:{self.stats_port}",
        }
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(self.config)], env=env,
                               capture_output=True, text=True)  # fmt: skip
        assert check.returncode == 0, check.stderr
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [self.binary, "-db", "-f", str(self.config)], env=env, stdout=log, stderr=log
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{self.stats_port}/stats", timeout=1)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not start:\n{self.log.read_text()}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._dir.cleanup()

    def servers(self) -> dict[str, dict[str, str]]:
        """The stats page's CSV rows of the backend's servers, by replica address order
        (``r0``, ``r1``, ...): ``status`` (UP/DOWN/...), ``stot`` (sessions), ``hrsp_2xx``..."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "clipseg" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def requests(self) -> list[dict[str, str]]:
        """One entry per request HAProxy logged (``option httplog``): ``server``
        (``r0``...), ``status``, ``termination`` (``----`` = completed normally) and
        ``retries`` (``+N`` when redispatched to another server)."""
        entries = []
        for line in self.log.read_text().splitlines():
            match = _HTTPLOG.search(line)
            if match:
                entries.append(match.groupdict())
        return entries

    def wait_for(self, server: str, status: str, timeout: float = 20.0) -> None:
        """Until the health checks have put ``server`` in ``status`` (``UP``/``DOWN``)."""
        deadline = time.monotonic() + timeout
        while self.servers()[server]["status"].split()[0] != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"{server} is {self.servers()[server]['status']}")
            time.sleep(0.1)
