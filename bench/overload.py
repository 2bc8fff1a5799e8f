"""Overload benchmark: goodput, fast refusals and recovery of the real server. Not a test.

Starts ``clipseg-serve`` as a subprocess (random full-size weights on the CPU by default)
and, over loopback, with 640x480 JPEGs (one prompt, RLE answers), once it is ready first
measures the single-request latency on the idle server (median of 5 sequential requests),
then runs one of three modes (``--mode``).

``overload`` (the default), with distinct images:

1. capacity: closed loop, ``--clients`` clients, ``--capacity-seconds``;
2. overload: open loop at ``--factor`` x capacity for ``--seconds`` (arrivals at fixed
   intervals whatever the answers; every request waits for its own answer);
3. recovery: right after the load stops, one probe at a time (100 ms apart) until one is
   answered 200.

Prints goodput during the overload (200s per second / capacity), answers by status
(connection errors counted apart), p50/p99 latency of the 200s, p99 latency of the 429s,
the first 200 after the load stopped (of any request, and of a request *sent* after it),
and how the last seconds' Retry-After compares with the real time until the server
admitted again (the send time of the first probe that got 200), and that first 200 of a
new request in single-request latencies.

``burst``: two bursts, each sent all at once (one connection a request), 2 s apart on the
idle server: (a) 12 requests for the same image bytes with 12 different prompts, (b) 8
requests for 8 distinct images. Prints, for each, the answers by status, p50 and max
latency (also in single-request latencies) and the error codes of the refusals; with
``--repeat N`` (a fresh server each run) how many runs were all 200 and the median
(min..max) of each burst's max latency.

``closed``: ``--clients`` clients in a closed loop for ``--seconds``, distinct images, each
sending its next request as soon as its answer arrives; on a 429 it first sleeps for the
``Retry-After`` header's seconds. Prints the answers by status (200s per second), the
error codes of the refusals and the p50/p99 latency of the 200s.

    python bench/overload.py                       # rd64-refined, CPU, 10x for 60 s
    python bench/overload.py --variant tiny --seconds 20
    python bench/overload.py --repeat 3            # medians and spread of 3 runs
    python bench/overload.py --mode burst          # bursts (a) and (b) on an idle server
    python bench/overload.py --mode burst --repeat 5
    python bench/overload.py --mode closed --clients 4 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import io
import json
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
    code: str | None = None  # error code from the JSON body (answers other than 200)

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


#: One prompt per request in burst (a): 12 prompts, the same image.
PROMPTS = (
    "a cat", "a dog", "a car", "a tree", "a person", "a house",
    "a bird", "a boat", "a chair", "a bicycle", "a cup", "the sky",
)  # fmt: skip


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


async def send(http: httpx.AsyncClient, url: str, image: bytes, prompt: str) -> Answer:
    """One text request (``image``, one ``prompt``, RLE answer) and its :class:`Answer`."""
    files = {"image": ("q.jpg", image, "image/jpeg")}
    data = {"prompt": prompt, "format": "rle"}
    sent = time.monotonic()
    try:
        response = await http.post(url + "/v1/segment/text", files=files, data=data)
    except httpx.HTTPError:
        return Answer(sent, time.monotonic(), 0)
    answer = Answer(sent, time.monotonic(), response.status_code)
    if response.status_code == 429:
        answer.retry_after = float(response.headers.get("retry-after", "nan"))
        with contextlib.suppress(ValueError, KeyError, AttributeError):
            answer.retry_after_s = response.json()["error"].get("retry_after_s")
    if response.status_code != 200:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            answer.code = response.json()["error"]["code"]
    return answer


async def post(http: httpx.AsyncClient, url: str, images: Images) -> Answer:
    """A request for the next distinct image, prompt "a cat"."""
    return await send(http, url, images.next(), "a cat")


async def single_latency(url: str, images: Images, count: int = 5) -> float:
    """Median latency of ``count`` sequential requests (distinct images) on an idle server."""
    async with httpx.AsyncClient(timeout=120) as http:
        answers = [await post(http, url, images) for _ in range(count)]
    if any(a.status != 200 for a in answers):
        print(f"  warning: single requests answered {[a.status for a in answers]}")
    return statistics.median(a.latency for a in answers)


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
    print(f"single-request latency (idle, median of 5) {result['single']:.3f} s")
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
    print(
        f"  first 200 of a new request after the load = {result['first_new_singles']:.1f} "
        f"single-request latencies"
    )


def one_run(args: argparse.Namespace) -> dict:
    process, url = start(args)
    try:
        images = Images()
        single = asyncio.run(single_latency(url, images))
        cap = asyncio.run(capacity(url, images, args.clients, args.capacity_seconds))
        run = asyncio.run(overload(url, images, cap, args))
        result = summarise(run, args)
        if args.dump is not None:
            dump(run, args.dump)
        result["single"] = single
        result["first_new_singles"] = result["first_200_new"] / single
        report(result)
        return result
    finally:
        stop_server(process)


def dump(run: Run, path: Path) -> None:
    """Append the run's answers to ``path`` as JSON lines (times relative to the load's
    start: the first request's send), for plots and diagnosis."""
    first = min(a.sent for a in run.answers)
    with path.open("a") as out:
        for a in run.answers + run.probes:
            row = {"sent": a.sent - first, "latency": a.latency, "status": a.status}
            out.write(json.dumps({**row, "code": a.code, "retry_after_s": a.retry_after_s}) + "\n")


def counts(answers: list[Answer]) -> tuple[dict[int, int], dict[str, int]]:
    """Answers by status (0: connection error) and refusals by error code, sorted."""
    statuses: dict[int, int] = {}
    codes: dict[str, int] = {}
    for a in answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
        if a.status not in (0, 200):
            codes[str(a.code)] = codes.get(str(a.code), 0) + 1
    return dict(sorted(statuses.items())), dict(sorted(codes.items()))


async def burst(url: str, uploads: list[tuple[bytes, str]]) -> list[Answer]:
    """Send every (image, prompt) request at once, one connection each; all the answers."""
    limits = httpx.Limits(max_connections=len(uploads), max_keepalive_connections=len(uploads))
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        return list(await asyncio.gather(*(send(http, url, i, p) for i, p in uploads)))


def burst_summary(answers: list[Answer], single: float) -> dict:
    statuses, codes = counts(answers)
    latencies = [a.latency for a in answers]
    return {
        "statuses": statuses,
        "codes": codes,
        "all_200": statuses == {200: len(answers)},
        "p50": quantile(latencies, 0.5),
        "max": max(latencies),
        "max_singles": max(latencies) / single,
    }


async def bursts(url: str, images: Images, pause: float = 2.0) -> dict:
    """Single-request latency, then bursts (a) and (b), each after ``pause`` s idle."""
    single = await single_latency(url, images)
    await asyncio.sleep(pause)
    same = images.next()
    a = await burst(url, [(same, prompt) for prompt in PROMPTS])
    await asyncio.sleep(pause)
    b = await burst(url, [(images.next(), "a cat") for _ in range(8)])
    return {"single": single, "a": burst_summary(a, single), "b": burst_summary(b, single)}


BURSTS = {"a": "12 requests, the same image, 12 prompts", "b": "8 requests, 8 distinct images"}


def report_bursts(result: dict) -> None:
    single = result["single"]
    print(f"single-request latency (idle, median of 5) {single:.3f} s")
    for key, what in BURSTS.items():
        r = result[key]
        print(
            f"  burst ({key}) {what}: statuses {r['statuses']}, p50 {r['p50']:.3f} s "
            f"= {r['p50'] / single:.1f} single, max {r['max']:.3f} s = "
            f"{r['max_singles']:.1f} single; refusals {r['codes'] or 'none'}"
        )


def burst_run(args: argparse.Namespace) -> dict:
    process, url = start(args)
    try:
        result = asyncio.run(bursts(url, Images()))
        report_bursts(result)
        return result
    finally:
        stop_server(process)


def report_burst_runs(results: list[dict]) -> None:
    """Over the runs: all-200 runs and the spread of each burst's max latency."""
    singles = [r["single"] for r in results]
    print(
        f"over {len(results)} runs: single-request latency median "
        f"{statistics.median(singles):.3f} s ({min(singles):.3f}..{max(singles):.3f})"
    )
    for key, what in BURSTS.items():
        ok = sum(r[key]["all_200"] for r in results)
        worst = [r[key]["max"] for r in results]
        print(
            f"  burst ({key}) {what}: {ok}/{len(results)} runs all 200; max latency median "
            f"{statistics.median(worst):.3f} s ({min(worst):.3f}..{max(worst):.3f})"
        )


async def closed_loop(url: str, images: Images, clients: int, seconds: float) -> list[Answer]:
    """``clients`` clients for ``seconds``: each sends its next request (a distinct image)
    as soon as its answer arrives, after sleeping for the Retry-After header of a 429."""
    limits = httpx.Limits(max_connections=max(clients, 1))
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:

        async def client(until: float, out: list[Answer]) -> None:
            while time.monotonic() < until:
                answer = await post(http, url, images)
                out.append(answer)
                if answer.status == 429:
                    wait = answer.retry_after
                    await asyncio.sleep(1.0 if wait is None or wait != wait else wait)
                elif answer.status == 0:
                    await asyncio.sleep(0.1)  # connection error: do not spin

        answers: list[Answer] = []
        until = time.monotonic() + seconds
        await asyncio.gather(*(client(until, answers) for _ in range(clients)))
    return answers


def closed_run(args: argparse.Namespace) -> dict:
    process, url = start(args)
    try:
        images = Images()
        single = asyncio.run(single_latency(url, images))
        answers = asyncio.run(closed_loop(url, images, args.clients, args.seconds))
    finally:
        stop_server(process)
    statuses, codes = counts(answers)
    ok = [a.latency for a in answers if a.status == 200]
    result = {
        "single": single,
        "statuses": statuses,
        "codes": codes,
        "ok": statuses.get(200, 0),
        "refused": statuses.get(429, 0),
        "rate": statuses.get(200, 0) / args.seconds,
        "p50_200": quantile(ok, 0.5),
        "p99_200": quantile(ok, 0.99),
    }
    print(f"single-request latency (idle, median of 5) {single:.3f} s")
    print(
        f"  {args.clients} closed-loop clients, {args.seconds:g} s: {result['ok']} x 200 "
        f"({result['rate']:.2f}/s), {result['refused']} x 429; statuses {statuses}, "
        f"refusals {codes or 'none'}"
    )
    print(
        f"  200s p50 {result['p50_200']:.3f} s = {result['p50_200'] / single:.1f} single, "
        f"p99 {result['p99_200']:.3f} s = {result['p99_200'] / single:.1f} single"
    )
    return result


def report_medians(results: list[dict], keys: tuple[str, ...]) -> None:
    print("medians over", len(results), "runs (min..max):")
    for key in keys:
        values = [r[key] for r in results]
        print(f"  {key}: {statistics.median(values):.3f} ({min(values):.3f}..{max(values):.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("overload", "burst", "closed"), default="overload")
    parser.add_argument("--variant", default="rd64-refined")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--capacity-seconds", type=float, default=30.0)
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to serve from")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--dump", type=Path, help="append the overload's answers (JSON lines)")
    args = parser.parse_args()
    load = {
        "overload": f"{args.factor:g}x capacity for {args.seconds:g} s",
        "burst": "bursts of 12 (same image) and 8 (distinct images)",
        "closed": f"{args.clients} closed-loop clients for {args.seconds:g} s",
    }[args.mode]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores; variant {args.variant} on "
        f"{args.device}; {load}; source {args.source}"
    )
    if args.mode == "burst":
        results = [burst_run(args) for _ in range(args.repeat)]
        if len(results) > 1:
            report_burst_runs(results)
    elif args.mode == "closed":
        results = [closed_run(args) for _ in range(args.repeat)]
        if len(results) > 1:
            report_medians(results, ("single", "rate", "refused", "p50_200", "p99_200"))
    else:
        results = [one_run(args) for _ in range(args.repeat)]
        if len(results) > 1:
            keys = ("capacity", "goodput_share", "p99_429", "first_200_any", "first_200_new")
            report_medians(results, (*keys, "single", "first_new_singles"))


if __name__ == "__main__":
    main()
