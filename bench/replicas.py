"""Replicas on loopback for the load-balancer test and bench: start, wait, drive, stop.

Each replica is a real ``clipseg-serve`` process (``clipseg_serve.service.main``) or, for "still
loading", ``bench.gated_server``; all with ``CLIPSEG_WEIGHTS=random:tiny`` on the CPU and
one torch thread each, and each pinned to a core of its own where there are enough: one
replica = one device, as on a GPU host, where a replica brings its GPU with it.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from bench.lb import free_port

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "CLIPSEG_WEIGHTS": "random:tiny",
    "CLIPSEG_DEVICE": "cpu",
    "CLIPSEG_DEMO": "false",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass
class Replica:
    process: subprocess.Popen
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status(self, path: str) -> int | None:
        try:
            return httpx.get(self.url + path, timeout=2).status_code
        except httpx.TransportError:
            return None

    def wait(self, path: str, status: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status(path) != status:
            if self.process.poll() is not None:
                raise RuntimeError(f"replica on {self.port} exited ({self.process.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica on {self.port}: {path} never answered {status}")
            time.sleep(0.1)

    def served(self, route: str = "/v1/segment/text") -> float:
        """Requests this replica answered on ``route`` (its own /metrics)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        prefix = f'clipseg_requests_total{{route="{route}",'
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(prefix))  # fmt: skip

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def spawn(gate: Path | None = None, core: int | None = None, **settings: str) -> Replica:
    """Start a replica (not waiting for it); with ``gate``, one that loads only once the
    file exists; with ``core``, pinned to that CPU (modulo the cores this process has)."""
    port = free_port()
    module = "bench.gated_server" if gate else "clipseg_serve.service.main"
    command = [sys.executable, "-m", module, "--port", str(port), "--log-level", "warning"]
    if gate:
        command += ["--gate", str(gate)]
    else:
        command += ["--host", "127.0.0.1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT), **SETTINGS,
           **settings}  # fmt: skip
    cores = sorted(os.sched_getaffinity(0))
    pinned = {cores[core % len(cores)]} if core is not None else None

    def pin() -> None:  # in the child, before exec: every thread it starts inherits it
        if pinned:
            os.sched_setaffinity(0, pinned)

    return Replica(subprocess.Popen(command, env=env, cwd=ROOT, preexec_fn=pin), port)


def query_image(size: int = 2048) -> bytes:
    """A smooth ``size`` x ``size`` JPEG (~145 KB at 2048): cheap to send, real work to
    decode and to answer at full resolution, so the replicas' work dominates the
    client's and the balancer's."""
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([x * 255 // size, y * 255 // size, (x + y) * 127 // size], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@dataclass
class Load:
    """Closed-loop clients, each sending one text request after another through ``url``."""

    url: str
    clients: int = 4
    statuses: Counter = field(default_factory=Counter)
    done: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, image: bytes) -> None:
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                try:
                    response = http.post(self.url + "/v1/segment/text",
                                         files={"image": ("q.jpg", image, "image/jpeg")},
                                         data={"prompt": "a cat", "format": "rle"})  # fmt: skip
                    status: int | str = response.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.statuses[status] += 1

    def __enter__(self) -> Load:
        image = query_image()
        self._threads = [threading.Thread(target=self._client, args=(image,), daemon=True)
                         for _ in range(self.clients)]  # fmt: skip
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=70)

    def total(self) -> int:
        return sum(self.statuses.values())


def throughput(url: str, clients: int, seconds: float, warmup: float = 1.0) -> float:
    """Requests per second answered 200 through ``url`` by ``clients`` closed-loop clients
    over ``seconds`` (after ``warmup``)."""
    with Load(url, clients) as load:
        time.sleep(warmup)
        start, begin = time.monotonic(), load.statuses[200]
        time.sleep(seconds)
        ok, elapsed = load.statuses[200] - begin, time.monotonic() - start
    assert set(load.statuses) == {200}, load.statuses
    return ok / elapsed
