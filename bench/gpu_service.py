"""The GPU suite's service, memory and training sections (see ``bench/gpu_suite.py``).

Everything here runs in subprocesses — ``clipseg-serve`` through ``bench/server.py``,
``clipseg-train`` (under ``torchrun`` for DDP) — and talks to them over loopback, so this
module itself never imports torch.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from gpu_runner import Row, Suite, one_line
from host_path import photo_like
from loadgen import drive, text_request_body
from server import ROOT, start_server, stop_server

PROMPT = "a cat"
#: A server gets this long to drain and exit before it is killed.
STOP_TIMEOUT_S = 30.0
#: What a stop usually takes (a configuration plans its start-up time around it).
TYPICAL_STOP_S = 5.0


class GpuMemorySampler:
    """Polls ``nvidia-smi`` for the device's ``memory.used`` (MiB) on a thread and keeps
    the maximum; ``peak`` is None where there is no nvidia-smi or no answer."""

    def __init__(self, interval: float = 0.5) -> None:
        self.peak: float | None = None
        self.interval = interval
        self._stop = threading.Event()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
        self.index = visible if visible.isdigit() else "0"
        self.command = shutil.which("nvidia-smi")
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuMemorySampler:
        if self.command:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        query = [self.command, "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    [*query, "-i", self.index], capture_output=True, text=True, timeout=5
                ).stdout
                used = float(out.strip().splitlines()[0])
                self.peak = used if self.peak is None else max(self.peak, used)
            except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                pass
            self._stop.wait(self.interval)


def peak_rss_mib(pid: int) -> float | None:
    """A process's peak resident memory (``VmHWM``), MiB; None when unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def settings_supported() -> set[str]:
    """The ``CLIPSEG_*`` setting names (lower case) this checkout's service knows."""
    from clipseg_serve.service.config import Settings

    return set(Settings.model_fields)


# ----------------------------------------------------------------- 3. service
def service_configs(gpu_decode: bool) -> list[tuple[str, dict[str, str]]]:
    """(name, extra settings) of each configuration; GPU decode only when asked for."""
    off = {"CLIPSEG_MAX_BATCH_IMAGES": "1", "CLIPSEG_MAX_WAIT_MS": "0"}
    configs = [
        ("batching on, CPU decode", {"CLIPSEG_DECODE": "cpu"}),
        ("batching off, CPU decode", {"CLIPSEG_DECODE": "cpu", **off}),
    ]
    if gpu_decode:
        configs.append(("batching on, GPU decode", {"CLIPSEG_DECODE": "gpu"}))
    return configs


def service(suite: Suite, deadline: float) -> None:
    scale = suite.scale
    jpegs = [photo_like(seed) for seed in range(scale.jpegs)]
    bodies = [text_request_body(jpeg, PROMPT) for jpeg in jpegs]
    decode_known = "decode" in settings_supported()
    cuda = scale.device.startswith("cuda")
    # Without the setting a "GPU decode" server is the CPU-decode one again: not worth
    # a third of the section.
    configs = service_configs(gpu_decode=cuda and decode_known)
    note = "" if decode_known else "; CLIPSEG_DECODE is not in this build (ignored)"
    throughput: dict[str, float] = {}
    for i, (name, extra) in enumerate(configs):
        # Each configuration gets an equal share of what is left of the section.
        share = (deadline - time.monotonic()) / (len(configs) - i)
        label = f"service, {name}"
        try:
            throughput[name] = one_config(
                suite, label, extra, bodies, time.monotonic() + share, note
            )
        except Exception as exc:
            suite.add(Row(3, f"{label}, max throughput", verdict="n/a", error=one_line(exc)))
    if len(configs) < 3:
        why = "no CUDA" if not cuda else "CLIPSEG_DECODE is not in this build"
        suite.add(Row(3, "service, batching on, GPU decode", verdict="n/a", note=f"not run: {why}"))
    on, off = throughput.get("batching on, CPU decode"), throughput.get("batching off, CPU decode")
    ratio = on / off if on and off else None
    suite.add(
        Row(
            3,
            "service, batching on / off (CPU decode)",
            ratio,
            "x",
            ">= 5x",
            suite.judge(ratio, (ratio or 0) >= 5),
            note="closed-loop max throughputs",
            error=None if ratio is not None else "a configuration has no throughput",
        )
    )


def one_config(
    suite: Suite, label: str, extra: dict[str, str], bodies: list, deadline: float, note: str
) -> float:
    """Start a server, measure its max throughput and open-loop latency; add the rows."""
    scale = suite.scale
    load_s = 2 * (2.0 + scale.load_warmup_s) + scale.closed_s + scale.open_s + 5
    # At least 45 s however little is left: a start that slow is worth its error row.
    start_timeout = max(45.0, deadline - time.monotonic() - load_s - TYPICAL_STOP_S)
    settings = {
        "CLIPSEG_WEIGHTS": f"random:{scale.variant}",
        "CLIPSEG_DEVICE": scale.device,
        **extra,
    }
    began = time.monotonic()
    process, url = start_server(settings, timeout=start_timeout)
    suite.track(process)
    started_s = time.monotonic() - began
    common = {"procs": scale.client_procs, "warmup_s": scale.load_warmup_s}
    cuda = scale.device.startswith("cuda")
    try:
        with GpuMemorySampler() if cuda else _NoSampler() as sampler:
            closed = drive(url, bodies, seconds=scale.closed_s, conns=scale.conns, **common)
            rate = closed["throughput"]
            opened = None
            if rate > 0:
                opened = drive(url, bodies, seconds=scale.open_s, rate=rate / 2, **common)
        rss = peak_rss_mib(process.pid)
    finally:
        stop_server(process, timeout=STOP_TIMEOUT_S)
    concurrency = scale.client_procs * scale.conns
    judged = "batching on" in label  # the targets are for the service as deployed
    suite.add(
        Row(
            3,
            f"{label}, max throughput",
            rate,
            "req/s",
            ">= 1500 req/s" if judged else "",
            suite.judge(rate, rate >= 1500) if judged else "-",
            note=(
                f"closed loop, {concurrency} connections, {closed['ok']} x 200, "
                f"{closed['non_200']} non-200 {closed['statuses']}, p50 "
                f"{_ms(closed['p50_ms'])}; client CPU "
                f"{_ms(closed['client_cpu_ms_per_request'])}/request; server start "
                f"{started_s:.0f} s{note}"
            ),
            error=None if closed["bad_answers"] == 0 else "a 200 answer had no RLE mask",
            details={"closed": closed, "settings": settings},
        )
    )
    p99 = None if opened is None else opened["p99_ms"]
    suite.add(
        Row(
            3,
            f"{label}, p99 at half the max",
            p99,
            "ms",
            "<= 100 ms" if judged else "",
            suite.judge(p99, (p99 or 0) <= 100) if judged else "-",
            note=""
            if opened is None
            else (
                f"open loop at {rate / 2:.0f} req/s: p50 {_ms(opened['p50_ms'])}, "
                f"{opened['ok']} x 200, {opened['non_200']} non-200 {opened['statuses']}"
            ),
            error=None if opened is not None else "no throughput to halve",
            details={"open": opened},
        )
    )
    suite.memory[label] = {"gpu_mib": sampler.peak, "rss_mib": rss}
    return rate


class _NoSampler:
    peak = None

    def __enter__(self) -> _NoSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


# ------------------------------------------------------------------ 4. memory
def memory(suite: Suite, deadline: float) -> None:
    """Rows from what sections 1 and 3 measured (nothing runs here)."""
    for short in ("bf16", "fp32"):
        record = suite.memory.get(f"model {short}") or {}
        value = None if record.get("value") is None else record["value"] / 2**20
        if value is None:
            note, verdict = "n/a: no CUDA figure (CPU, or section 1 failed)", "n/a"
        else:
            note, verdict = f"max_memory_allocated; largest batch run {record['batch']}", "-"
        suite.add(Row(4, f"GPU memory peak, model only, {short}", value, "MiB", "", verdict, note))
    for label, record in suite.memory.items():
        if not label.startswith("service"):
            continue
        gpu = record["gpu_mib"]
        if gpu is None:
            note, verdict = "n/a: no nvidia-smi figure (no CUDA, or no tool)", "n/a"
        else:
            note, verdict = "nvidia-smi memory.used during the load (device-wide)", "-"
        suite.add(Row(4, f"GPU memory peak, {label}", gpu, "MiB", "", verdict, note))
        rss = record["rss_mib"]
        suite.add(Row(4, f"host memory peak, {label}", rss, "MiB", note="server VmHWM"))


# ---------------------------------------------------------------- 5. training
def train_command(suite: Suite, output: Path, ranks: int) -> list[str]:
    scale = suite.scale
    args = [
        "--init",
        f"random:{scale.variant}",
        "--dataset",
        "synthetic",
        "--steps",
        str(scale.train_steps),
        "--batch-size",
        str(scale.train_batch),
        "--amp",
        "auto" if scale.smoke else "bf16",
        "--device",
        scale.device.split(":")[0],
        "--eval-every",
        "0",
        "--log-every",
        str(max(1, scale.train_steps // 10)),
        "--num-workers",
        str(scale.train_workers),
        "--output",
        str(output),
    ]
    if ranks > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
        return [sys.executable, *launcher, "-m", "clipseg_serve.training.train", *args]
    return [sys.executable, "-m", "clipseg_serve.training.train", *args]


def run_bounded(suite: Suite, command: list[str], log: Path, timeout: float) -> int:
    """Run ``command`` in its own process group (torchrun's ranks included) with its
    output in ``log``; kill the whole group at ``timeout``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    with log.open("wb") as out:
        process = suite.track(
            subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
        try:
            return process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            suite.cleanup()
            raise TimeoutError(f"clipseg-train did not finish in {timeout:.0f} s") from None


def samples_per_s(metrics: Path, batch: int) -> tuple[float, float]:
    """(steady, overall) samples/s from ``metrics.csv``: the trainer logs the rate since
    its first step at every logged step, so step k took k*batch/rate_k seconds; steady is
    the rate between the first and the last logged step (start-up excluded)."""
    points = []
    with metrics.open() as handle:
        for step, key, value in csv.reader(handle):
            if key == "train/samples_per_s":
                points.append((int(step), float(value)))
    if not points:
        raise RuntimeError(f"{metrics} has no train/samples_per_s rows")
    (first, r1), (last, r2) = points[0], points[-1]
    if last == first:
        return r2, r2
    seconds = last * batch / r2 - first * batch / r1
    return (last - first) * batch / seconds, r2


def training(suite: Suite, deadline: float) -> None:
    scale = suite.scale
    ranks = 1
    if scale.device.startswith("cuda"):
        import torch

        ranks = 2 if torch.cuda.device_count() >= 2 else 1
    output, log = suite.tmp / "train", suite.tmp / "train.log"
    serve_s = 60.0 if not scale.smoke else 30.0
    began = time.monotonic()
    code = run_bounded(
        suite, train_command(suite, output, ranks), log, deadline - time.monotonic() - serve_s
    )
    took = time.monotonic() - began
    if code != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        raise RuntimeError(f"clipseg-train exited with {code}: {tail}")
    steady, overall = samples_per_s(output / "metrics.csv", scale.train_batch)
    suite.add(
        Row(
            5,
            f"training, {ranks} process{'es' if ranks > 1 else ''}",
            steady,
            "samples/s",
            note=(
                f"{scale.train_steps} steps of batch {scale.train_batch}, random:"
                f"{scale.variant}, amp {'auto' if scale.smoke else 'bf16'}"
                f"{', DDP (torchrun)' if ranks > 1 else ''}; {overall:.1f} samples/s "
                f"including the first step; whole run {took:.0f} s"
            ),
            details={"steady": steady, "overall": overall, "ranks": ranks, "run_s": took},
        )
    )
    served, note = serve_checkpoint(suite, output / "final", deadline)
    suite.add(
        Row(
            5,
            "training, checkpoint served",
            float(served),
            "yes=1",
            "200 with a mask",
            suite.judge(1.0, served),
            note=note,
        )
    )


def serve_checkpoint(suite: Suite, checkpoint: Path, deadline: float) -> tuple[bool, str]:
    """Start the server on ``checkpoint`` and send one text request."""
    settings = {"CLIPSEG_WEIGHTS": str(checkpoint), "CLIPSEG_DEVICE": suite.scale.device}
    timeout = max(10.0, deadline - time.monotonic() - 15)
    process, url = start_server(settings, timeout=timeout)
    suite.track(process)
    try:
        response = httpx.post(
            url + "/v1/segment/text",
            files={"image": ("photo.jpg", photo_like(0), "image/jpeg")},
            data={"prompt": PROMPT, "format": "rle"},
            timeout=60,
        )
    finally:
        stop_server(process, timeout=STOP_TIMEOUT_S)
    masks = response.json().get("masks") if response.status_code == 200 else None
    served = bool(masks) and bool(masks[0].get("rle", {}).get("counts"))
    size = f"{response.json().get('width')}x{response.json().get('height')}" if served else ""
    return served, (
        f"served: yes (200, RLE mask {size}) from {checkpoint.name}/"
        if served
        else f"served: no (HTTP {response.status_code})"
    )
