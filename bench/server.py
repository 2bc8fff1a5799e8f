"""Start ``clipseg-serve`` as a subprocess for the benchmarks and wait until it is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    settings: Mapping[str, str],
    source: Path = ROOT,
    timeout: float = 900.0,
    module: str | None = None,
    args: Sequence[str] = (),
) -> tuple[subprocess.Popen, str]:
    """Run ``python -m module`` (default: the service's main; ``bench.null_server`` for the
    null model) from ``source`` (a checkout: compare versions) with the ``CLIPSEG_*``
    ``settings`` and extra ``args``; return the process and its URL once /readyz is 200."""
    module = module or service_module(source)
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(source), **settings}
    command = [sys.executable, "-m", module, "--port", str(port), "--log-level", "warning"]
    command += list(args)
    process = subprocess.Popen(command, env=env, cwd=source)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise RuntimeError("server exited during start-up")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready")


def service_module(source: Path) -> str:
    """The service's main module in ``source``: under the ``clipseg_serve`` root, or at
    the top level in checkouts from before it."""
    return "clipseg_serve.service.main" if (source / "clipseg_serve").is_dir() else "service.main"


def stop_server(
    process: subprocess.Popen, sig: signal.Signals = signal.SIGTERM, timeout: float = 120.0
) -> None:
    """Stop a server from ``start_server`` with ``sig`` (SIGTERM drains its queue first);
    kill it if it has not exited after ``timeout`` seconds."""
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def parse_env(items: list[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (the benchmarks' ``--env`` flags) -> a dict."""
    return dict(item.partition("=")[::2] for item in items)
