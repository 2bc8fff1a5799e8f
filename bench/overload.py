"""Overload benchmark: goodput, fast refusals and recovery of the real server. Not a test.

Starts ``clipseg-serve`` as a subprocess (random full-size weights on the CPU by default)
and, over loopback, with distinct 640x480 JPEGs (one prompt, RLE answers):

1. capacity: closed loop, ``--clients`` clients, ``--capacity-seconds``;
2. overload: open loop at ``--factor`` x capacity for ``--seconds`` (arrivals at fixed
   intervals whatever the answers; every request waits for its own answer);
3. recovery: right after the load stops, one probe at a time (100 ms apart) until one is
   answered 200.

Prints goodput during the overload (200s per second / capacity), answers by status
(connection errors counted apart), p50/p99 latency of the 200s, p99 latency of the 429s,
the first 200 after the load stopped (of any request, and of a request *sent* after it),
and how the last seconds' Retry-After compares with the real time until the server
admitted again (the send time of the first probe that got 200).

    python bench/overload.py                       # rd64-refined, CPU, 10x for 60 s
    python bench/overload.py --variant tiny --seconds 20
    python bench/overload.py --repeat 3            # medians and spread of 3 runs
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import io
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from server import ROOT, parse_env, start_server, stop_server


@dataclass
class Answer:
    sent: float  # monotonic seconds
    done: float
    status: int  # 0: connection error
    retry_after: float | None = None  # header
    retry_after_s: float | None = None  # precise, from the JSON body

    @property
    def latency(self) -> float:
        return self.done - self.sent


@dataclass
class Run:
    capacity: float
    offered: float
    answers: list[Answer] = field(default_factory=list)
    stopped: float = 0.0
    probes: list[Answer] = field(default_factory=list)


def start(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    settings = {"CLIPSEG_WEIGHTS": f"random:{args.variant}", "CLIPSEG_DEVICE": args.device}
    return start_server({**settings, **parse_env(args.env)}, args.source)


def base_images(count: int) -> list[bytes]:
    """Photo-like 640x480 JPEGs: smooth random fields plus a little noise."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.Resampling.BICUBIC))
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


class Images:
    """Distinct uploads: a base JPEG with a unique comment segment (a new content hash,
    so the server cannot share a backbone pass between them; the same decode cost)."""

    def __init__(self) -> None:
        self.bases = base_images(16)
        self.count = 0

    def next(self) -> bytes:
        self.count += 1
        base = self.bases[self.count % len(self.bases)]
        note = f"request {self.count}".encode()
        comment = b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note
        return base[:2] + comment + base[2:]


async def post(http: httpx.AsyncClient, url: str, images: Images) -> Answer:
    files = {"image": ("q.jpg", images.next(), "image/jpeg")}
    data = {"prompt": "a cat", "format": "rle"}
    sent = time.monotonic()
    try:
        response = await http.post(url + "/v1/segment/text", files=files, data=data)
    except httpx.HTTPError:
        return Answer(sent, time.monotonic(), 0)
    answer = Answer(sent, time.monotonic(), response.status_code)
    if response.status_code == 429:
        answer.retry_after = float(response.headers.get("retry-after", "nan"))
        with contextlib.suppress(ValueError, KeyError):
            answer.retry_after_s = response.json()["error"].get("retry_after_s")
    return answer


async def capacity(url: str, images: Images, clients: int, seconds: float) -> float:
    """200s per second with ``clients`` closed-loop clients (after a warm-up)."""
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:

        async def loop(until: float, out: list[Answer]) -> None:
            while time.monotonic() < until:
                out.append(await post(http, url, images))

        warm: list[Answer] = []
        await asyncio.gather(*(loop(time.monotonic() + 5, warm) for _ in range(clients)))
        measured: list[Answer] = []
        start = time.monotonic()
        await asyncio.gather(*(loop(start + seconds, measured) for _ in range(clients)))
        elapsed = time.monotonic() - start
    return sum(a.status == 200 for a in measured) / elapsed


async def overload(url: str, images: Images, cap: float, args: argparse.Namespace) -> Run:
    run = Run(capacity=cap, offered=cap * args.factor)
    limits = httpx.Limits(max_connections=4096, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        tasks = []
        start = time.monotonic()
        interval = 1.0 / run.offered
        n = 0
        while (now := time.monotonic()) < start + args.seconds:
            due = start + n * interval
            if now < due:
                await asyncio.sleep(due - now)
            tasks.append(asyncio.create_task(post(http, url, images)))
            n += 1
        run.stopped = time.monotonic()
        run.probes = await probe(http, url, images, run.stopped)
        run.answers = list(await asyncio.gather(*tasks))
    return run


async def probe(http: httpx.AsyncClient, url: str, images: Images, stopped: float) -> list:
    """From the load's end, one request at a time (the next 100 ms after an answer) until
    one is answered 200: recovery as a single returning client sees it."""
    answers: list[Answer] = []
    while time.monotonic() < stopped + 180:
        answers.append(await post(http, url, images))
        if answers[-1].status == 200:
            break
        await asyncio.sleep(0.1)
    return answers


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.quantile(np.asarray(values), q))


def spread(values: list[float]) -> tuple[float, ...] | None:
    """(p5, p25, median, p75, p95) of ``values``, or None."""
    if not values:
        return None
    return tuple(quantile(values, q) for q in (0.05, 0.25, 0.5, 0.75, 0.95))


def summarise(run: Run, args: argparse.Namespace) -> dict:
    during = [a for a in run.answers if a.sent < run.stopped]
    ok = [a for a in during if a.status == 200]
    refused = [a for a in during if a.status == 429]
    statuses: dict[int, int] = {}
    for a in during:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    served_200 = [a for a in ok if a.done <= run.stopped]
    first_any = min((a.done for a in run.answers + run.probes if a.status == 200 and
                     a.done > run.stopped), default=float("nan"))  # fmt: skip
    admitted = [p for p in run.probes if p.status == 200]
    first_probe = min(admitted, key=lambda p: p.sent) if admitted else None
    # Each refusal's Retry-After against reality: the wait from its answer until the first
    # request sent after it was admitted (answered 200), probes after the load included.
    sends = sorted(a.sent for a in run.answers + run.probes if a.status == 200)
    ratios_header, ratios_precise = [], []
    for a in refused:
        later = sends[bisect.bisect_right(sends, a.done)] if sends[-1:] > [a.done] else None
        if later is None:
            continue
        reality = max(1e-3, later - a.done)
        ratios_header.append((a.retry_after or float("nan")) / reality)
        if a.retry_after_s is not None:
            ratios_precise.append(a.retry_after_s / reality)
    late = [a for a in refused if a.done > run.stopped - 2.0]
    return {
        "capacity": run.capacity,
        "offered": run.offered,
        "requests": len(during),
        "statuses": dict(sorted(statuses.items())),
        "goodput": len(served_200) / args.seconds,
        "goodput_share": len(served_200) / args.seconds / run.capacity,
        "p50_200": quantile([a.latency for a in ok], 0.5),
        "p99_200": quantile([a.latency for a in ok], 0.99),
        "p99_429": quantile([a.latency for a in refused], 0.99),
        "first_200_any": first_any - run.stopped,
        "first_200_new": (first_probe.done - run.stopped) if first_probe else float("nan"),
        "admitted_again": (first_probe.sent - run.stopped) if first_probe else float("nan"),
        "retry_after_header": sorted({a.retry_after for a in late if a.retry_after}),
        "ratio_header": spread(ratios_header),
        "ratio_precise": spread(ratios_precise),
    }


def report(result: dict) -> None:
    print(
        f"capacity {result['capacity']:.2f} req/s, offered {result['offered']:.1f} req/s: "
        f"{result['requests']} requests, statuses {result['statuses']}"
    )
    print(
        f"  goodput {result['goodput']:.2f} req/s = {100 * result['goodput_share']:.0f}% of "
        f"capacity; 200s p50 {result['p50_200']:.2f} s, p99 {result['p99_200']:.2f} s; "
        f"429s p99 {1000 * result['p99_429']:.0f} ms"
    )
    print(
        f"  after the load: first 200 (any) +{result['first_200_any']:.2f} s, admitted again "
        f"+{result['admitted_again']:.2f} s, first 200 of a new request "
        f"+{result['first_200_new']:.2f} s"
    )
    for key in ("ratio_header", "ratio_precise"):
        if result[key]:
            p5, p25, mid, p75, p95 = result[key]
            print(
                f"  {key}: Retry-After / real wait until admitted: median {mid:.2f}, "
                f"IQR {p25:.2f}..{p75:.2f}, p5..p95 {p5:.2f}..{p95:.2f}"
            )
    print(f"  Retry-After headers in the last 2 s: {result['retry_after_header']}")


def one_run(args: argparse.Namespace) -> dict:
    process, url = start(args)
    try:
        images = Images()
        cap = asyncio.run(capacity(url, images, args.clients, args.capacity_seconds))
        run = asyncio.run(overload(url, images, cap, args))
        result = summarise(run, args)
        report(result)
        return result
    finally:
        stop_server(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="rd64-refined")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to serve from")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; variant {args.variant} on "
        f"{args.device}; {args.factor:g}x capacity for {args.seconds:g} s; source {args.source}"
    )
    results = [one_run(args) for _ in range(args.repeat)]
    if len(results) > 1:
        print("medians over", len(results), "runs (min..max):")
        for key in ("capacity", "goodput_share", "p99_429", "first_200_any", "first_200_new"):
            values = [r[key] for r in results]
            print(
                f"  {key}: {statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"
            )


if __name__ == "__main__":
    main()
