"""Load benchmark: the real server over loopback, dynamic batching on vs off.

Starts ``clipseg-serve`` as a subprocess (random weights: tiny or full-size), drives it
with N concurrent clients for T seconds each way, and reports throughput and p50/p95/p99
latency with batching on (the configured batch limits) and off (max_batch_images=1), and
the ratio. Never run as a test.

    python bench/serve_load.py --variant tiny --clients 16 --seconds 20
    python bench/serve_load.py --variant rd64-refined --device cuda --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import statistics
import subprocess
import time

import httpx
import numpy as np
from PIL import Image
from server import start_server, stop_server

PROMPTS = ["a cat", "a dog", "the red mug", "something to sit on", "the sky", "a person"]


def start(args: argparse.Namespace, max_batch_images: int) -> tuple[subprocess.Popen, str]:
    return start_server(
        {
            "CLIPSEG_WEIGHTS": f"random:{args.variant}",
            "CLIPSEG_DEVICE": args.device,
            "CLIPSEG_MAX_BATCH_IMAGES": str(max_batch_images),
            "CLIPSEG_MAX_WAIT_MS": str(args.max_wait_ms),
            "CLIPSEG_QUEUE_SIZE": str(max(256, args.clients * 2)),
        }
    )


def make_images(count: int, size: tuple[int, int]) -> list[bytes]:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


async def drive(url: str, images: list[bytes], clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors = refused = 0
    stop_at = time.monotonic() + seconds

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal errors, refused
        i = worker
        while time.monotonic() < stop_at:
            files = {"image": ("q.jpg", images[i % len(images)], "image/jpeg")}
            data = {"prompt": PROMPTS[i % len(PROMPTS)], "format": "rle"}
            start = time.perf_counter()
            response = await http.post(url + "/v1/segment/text", files=files, data=data)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            elif response.status_code == 429:  # a well-behaved client waits as told
                refused += 1
                await asyncio.sleep(response.json()["error"].get("retry_after_s", 1.0))
            else:
                errors += 1
            i += clients

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        began = time.monotonic()
        await asyncio.gather(*(client(w, http) for w in range(clients)))
        elapsed = time.monotonic() - began
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "requests": len(latencies),
        "errors": errors,
        "refused": refused,
        "throughput": len(latencies) / elapsed,
        "p50": quantiles[49],
        "p95": quantiles[94],
        "p99": quantiles[98],
    }


def run_mode(args: argparse.Namespace, images: list[bytes], max_batch_images: int) -> dict:
    process, url = start(args, max_batch_images)
    try:
        asyncio.run(drive(url, images, args.clients, min(3.0, args.seconds)))  # warm up
        result = asyncio.run(drive(url, images, args.clients, args.seconds))
        metrics = httpx.get(url + "/metrics").text
        result["mean_batch"] = mean_batch_images(metrics)
        return result
    finally:
        stop_server(process, timeout=60)


def mean_batch_images(metrics: str) -> float:
    samples = dict(line.rsplit(" ", 1) for line in metrics.splitlines() if line[:1] != "#")
    count = float(samples.get("clipseg_batch_images_count", 0))
    return float(samples.get("clipseg_batch_images_sum", 0)) / count if count else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--image-size", default="640x480")
    args = parser.parse_args()
    width, height = (int(v) for v in args.image_size.split("x"))
    images = make_images(32, (width, height))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, variant {args.variant}, "
        f"device {args.device}, {args.clients} clients, {args.seconds:.0f} s each, "
        f"{args.image_size} JPEG"
    )
    results = {}
    for name, batch in (("batching on", args.max_batch), ("batching off", 1)):
        results[name] = r = run_mode(args, images, batch)
        print(
            f"{name:>13} (max_batch_images={batch:>3}): {r['throughput']:7.1f} req/s, "
            f"p50 {r['p50'] * 1000:7.1f} ms, p95 {r['p95'] * 1000:7.1f} ms, "
            f"p99 {r['p99'] * 1000:7.1f} ms, mean batch {r['mean_batch']:.1f} images, "
            f"{r['refused']} refused (429), {r['errors']} errors"
        )
    ratio = results["batching on"]["throughput"] / results["batching off"]["throughput"]
    print(f"throughput ratio on/off: {ratio:.2f}x")


if __name__ == "__main__":
    main()
