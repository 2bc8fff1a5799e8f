"""Host-path benchmark: server CPU milliseconds per 2 MP JPEG request, split by stage.

Starts the real service stack around the null model (``bench/null_server.py``: HTTP door,
multipart parsing, decode, scheduler, batcher, render, encode — only the model's own
compute is replaced by a fixed 352x352 logit map) as a subprocess on loopback, and sends it
1920x1080 JPEGs (smooth gradients, shapes and noise, quality 90, ~0.47 MB) one at a time,
one text prompt each, asking for RLE (JSON) and for PNG (the raw single-mask body).

Method. The total is the server process's CPU time (``utime + stime`` from
``/proc/PID/stat``, all threads) over N requests, divided by N. The split comes from
thread CPU clocks (``time.thread_time``) around each stage inside the server
(``bench/stage_cpu.py``), read from ``GET /bench/cpu`` before and after the N requests:

* parse: starlette's multipart parser (event loop);
* probe: reading the image header (threadpool);
* decode: ``decode_image``, bytes -> RGB at the JPEG draft scale (threadpool);
* prepare: the rest of ``codec.prepare_query`` — resize to 8-bit 352x352, content hash;
* model thread: ``Predictor.launch`` — upload, normalise, the (null) model calls, then
  sigmoid, bilinear upsample to 1920x1080, threshold, pack/score, copies back started (and,
  with ``--device-decode``, the JPEG decoding). On a GPU this is device work; here the
  device is this CPU. "host" is the total without it;
* collect: ``Predictor.collect`` — the results to the host;
* encode: the RLE entries or the PNG body (threadpool);
* framework: the rest — uvicorn/h11, middlewares, FastAPI validation, the batcher and
  scheduler, JSON, threadpool hand-offs.

The server runs with ``OMP_NUM_THREADS=1``: torch's intra-op worker threads would otherwise
do part of the model thread's work (and spin-wait) where no stage clock sees it, so that it
shows up as "framework"; the total is the same either way (``--env OMP_NUM_THREADS=2``).
``--source`` serves another checkout (a before/after comparison on the same machine).

Each run sends N requests per format (interleaved formats, after a warm-up); the table
shows the median over runs with the min-max range. The client runs in this process and is
not counted. Never run as a test.

    python bench/host_path.py                      # 5 runs x 200 requests per format
    python bench/host_path.py --runs 3 --requests 50
    python bench/host_path.py --device-decode      # JPEGs decoded in the batch (GPU decode)
    python bench/host_path.py --concurrency 8      # 8 clients at once
    python bench/host_path.py --png-bits 1         # 1-bit mask PNGs
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from machine import cpu_model
from PIL import Image, ImageDraw
from server import ROOT, parse_env, start_server, stop_server

WIDTH, HEIGHT = 1920, 1080
FORMATS = ("rle", "png")
STAGES = ("parse", "probe", "decode", "prepare", "model thread", "collect", "encode", "framework")
TICKS = os.sysconf("SC_CLK_TCK")


def photo_like(seed: int) -> bytes:
    """A 1920x1080 quality-90 JPEG with a photo's statistics: gradients, shapes, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    base = np.stack(
        [
            128 + 100 * np.sin(x / (300 + 40 * seed) + c) * np.cos(y / (200 + 30 * c))
            for c in range(3)
        ],
        axis=-1,
    )
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x0, y0 = int(rng.integers(0, WIDTH - 100)), int(rng.integers(0, HEIGHT - 100))
        x1, y1 = x0 + int(rng.integers(40, 500)), y0 + int(rng.integers(40, 400))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=colour)
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
    buffer = io.BytesIO()
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def process_cpu(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def send(http: httpx.Client, url: str, image: bytes, fmt: str, png_bits: int = 8) -> None:
    """One request; ``png_bits``: bits per pixel of PNG answers (the server's default 8)."""
    response = http.post(
        url + "/v1/segment/text",
        files={"image": ("photo.jpg", image, "image/jpeg")},
        data={"prompt": "a thing", "format": fmt, "png_bits": str(png_bits)},
    )
    response.raise_for_status()
    expected = "image/png" if fmt == "png" else "application/json"
    assert response.headers["content-type"].startswith(expected), response.headers


def measure(
    clients: list[httpx.Client],
    url: str,
    pid: int,
    images: list[bytes],
    fmt: str,
    n: int,
    png_bits: int = 8,
):
    """CPU ms per request of the whole process and of each stage, over ``n`` requests sent
    by ``len(clients)`` concurrent clients (one keep-alive connection each)."""
    http = clients[0]
    before, cpu0 = http.get(url + "/bench/cpu").json(), process_cpu(pid)

    def client_loop(k: int) -> None:
        for i in range(k, n, len(clients)):
            send(clients[k], url, images[i % len(images)], fmt, png_bits)

    with ThreadPoolExecutor(len(clients)) as pool:
        list(pool.map(client_loop, range(len(clients))))
    cpu1, after = process_cpu(pid), http.get(url + "/bench/cpu").json()
    spent = {k: after["seconds"][k] - before["seconds"].get(k, 0.0) for k in after["seconds"]}
    per = {k: 1000 * v / n for k, v in spent.items()}
    total = 1000 * (cpu1 - cpu0) / n
    stages = {
        "parse": per.get("parse", 0.0),
        "probe": per.get("probe", 0.0),
        "decode": per.get("decode", 0.0),
        "prepare": per.get("query", 0.0) - per.get("decode", 0.0),
        # "model": what checkouts before the pipelined worker call their execute stage.
        "model thread": per.get("launch", per.get("model", 0.0)),
        "collect": per.get("collect", 0.0),
        "encode": per.get("encode", 0.0),
    }
    stages["framework"] = total - sum(stages.values())
    stages["total"] = total
    # On a GPU server the model thread's work is the device's (plus kernel launches).
    stages["host"] = total - stages["model thread"]
    return stages


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--requests", type=int, default=200, help="per run and format")
    parser.add_argument("--images", type=int, default=4, help="distinct JPEGs, cycled")
    parser.add_argument(
        "--concurrency", type=int, default=1, help="clients sending at once (1: one at a time)"
    )
    parser.add_argument("--png-bits", type=int, choices=(8, 1), default=8, help="PNG answers")
    parser.add_argument(
        "--device-decode",
        action="store_true",
        help="JPEGs decoded in the batch as with CLIPSEG_DECODE=gpu (on the model thread here)",
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    parser.add_argument("--source", type=Path, default=ROOT, help="checkout to serve from")
    args = parser.parse_args()

    images = [photo_like(seed) for seed in range(args.images)]
    sizes = ", ".join(f"{len(b) / 1e6:.2f}" for b in images)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs; {WIDTH}x{HEIGHT} JPEGs of {sizes} MB")
    # One intra-op thread: torch's OpenMP workers would otherwise burn part of the model
    # thread's work (and their spin-waits) on threads no stage clock sees.
    env = {"CLIPSEG_DEVICE": "cpu", "OMP_NUM_THREADS": "1", **parse_env(args.env)}
    server_args = ["--stage-cpu", *(["--device-decode"] if args.device_decode else [])]
    process, url = start_server(
        env, source=args.source, module="bench.null_server", args=server_args
    )
    results: dict[str, list[dict[str, float]]] = {fmt: [] for fmt in FORMATS}
    try:
        with contextlib.ExitStack() as stack:
            clients = [
                stack.enter_context(httpx.Client(timeout=60)) for _ in range(args.concurrency)
            ]
            for fmt in FORMATS:  # warm-up: allocators, caches, lazy imports
                for image in images * 5:
                    send(clients[0], url, image, fmt, args.png_bits)
            for run in range(args.runs):
                for fmt in FORMATS:
                    sample = measure(
                        clients, url, process.pid, images, fmt, args.requests, args.png_bits
                    )
                    results[fmt].append(sample)
                print(
                    f"run {run + 1}/{args.runs}: "
                    + ", ".join(f"{f} {results[f][-1]['total']:.2f} ms" for f in FORMATS)
                )
    finally:
        stop_server(process, signal.SIGINT, timeout=30)
    print(f"\nserver CPU ms per request, median (min-max) of {args.runs} runs x "
          f"{args.requests} requests, 1 prompt, {args.concurrency} client(s) at once")  # fmt: skip
    print(f"{'stage':<14}" + "".join(f"{fmt.upper():<24}" for fmt in FORMATS))
    for stage in (*STAGES, "total", "host"):
        row = "".join(f"{cell([r[stage] for r in results[fmt]]):<24}" for fmt in FORMATS)
        print(f"{stage:<14}{row}")


if __name__ == "__main__":
    main()
