"""Labelling throughput: clipseg-label's engines against the per-image paths. Not a test.

For one model variant (random weights, CPU by default) and N synthetic 640x480 scenes
(JPEG), 3 prompts per image, RLE output, measures images per second of:

* ``local``: ``clipseg-label`` (local engine), the whole run in one process;
* ``predict``: one ``clipseg-predict`` process per image (what a shell loop does);
* ``http``: the service (``clipseg-serve``, started first and not timed) and the Python
  client, one request per image, one after the other;
* ``ray-1``, ``ray-2``: ``clipseg-label --engine ray`` on a local Ray instance with 1 and
  2 model workers of ``cores / workers`` CPUs each.

Two rates per path: **steady** — images per second once the model is loaded, what a
100k-image run sees (``clipseg-label``'s own summary: images over its labelling loop's
seconds; the HTTP path's requests after one warm-up; ``clipseg-predict`` has none: every
image loads the model) — and **wall** — images over the whole command's time, model
loading (and Ray's start) included, as a user of a small folder sees it. The HTTP server's
start-up is in neither. ``--repeat`` runs each path that many times: median (min..max).

    python bench/label.py --variant tiny --images 24
    python bench/label.py --variant rd64-refined --images 12 --skip predict
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_description
from PIL import Image, ImageDraw
from server import ROOT, start_server, stop_server

PROMPTS = ("a red circle", "a blue square", "a green triangle")
PATHS = ("local", "predict", "http", "ray-1", "ray-2")


def make_scenes(folder: Path, count: int) -> list[Path]:
    """``count`` 640x480 JPEG scenes: shapes on noise (seeded)."""
    paths = []
    for i in range(count):
        rng = np.random.default_rng(i)
        image = Image.fromarray(rng.integers(80, 150, (480, 640, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        x, y = (int(v) for v in rng.integers(20, 300, 2))
        draw.ellipse([x, y, x + 160, y + 120], fill=(220, 30, 30))
        draw.rectangle([360, 260, 500, 400], fill=(30, 40, 220))
        draw.polygon([(60, 460), (220, 460), (140, 300)], fill=(30, 200, 40))
        path = folder / f"scene{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def model_args(args: argparse.Namespace) -> list[str]:
    return ["--weights", f"random:{args.variant}", "--device", args.device]


def timed(command: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started, done.stdout


def run_label(args, folder: Path, out: Path, extra: list[str]) -> tuple[float, float]:
    """(wall seconds, labelling-loop seconds) of one clipseg-label run."""
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    command = [sys.executable, "-m", "clipseg_serve.label.cli", str(folder), "-o", str(out),
               *prompts, *model_args(args), "--batch-images", str(args.batch_images),
               *extra]  # fmt: skip
    wall, stdout = timed(command)
    return wall, json.loads(stdout.splitlines()[-1])["seconds"]


def run_predict(args, images: list[Path], out: Path) -> tuple[float, None]:
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    total = 0.0
    for image in images:
        command = [sys.executable, "-m", "clipseg_serve.model.cli.predict", str(image),
                   *prompts, *model_args(args), "-o", str(out / image.stem)]  # fmt: skip
        total += timed(command)[0]
    return total, None


def run_http(args, images: list[Path]) -> tuple[float, float]:
    from clipseg_client import Client

    settings = {"CLIPSEG_WEIGHTS": f"random:{args.variant}", "CLIPSEG_DEVICE": args.device}
    process, url = start_server(settings)
    try:
        with Client(url) as client:
            client.segment_text(images[0], list(PROMPTS))  # warm: not timed
            started = time.perf_counter()
            for image in images:
                client.segment_text(image, list(PROMPTS), format="rle")
            seconds = time.perf_counter() - started
            return seconds, seconds
    finally:
        stop_server(process)


def measure(
    path: str, args, folder: Path, images: list[Path], work: Path
) -> tuple[float, float | None]:
    """(wall, steady) seconds of ``path`` over every image (a fresh output folder)."""
    out = Path(tempfile.mkdtemp(dir=work))
    if path == "local":
        threads = ["--workers", str(args.workers)] if args.workers else []
        return run_label(args, folder, out, threads)
    if path == "predict":
        return run_predict(args, images, out)
    if path == "http":
        return run_http(args, images)
    workers = int(path.split("-")[1])
    cpus = max(1, (os.cpu_count() or 1) // workers)
    extra = ["--engine", "ray", "--workers", str(workers), "--cpus-per-worker", str(cpus)]
    return run_label(args, folder, out, extra)


def describe(rates: list[float]) -> str:
    """ "median (min..max) images/s", or "" for none."""
    if not rates:
        return ""
    return f"{statistics.median(rates):.2f} ({min(rates):.2f}..{max(rates):.2f}) images/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch-images", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--workers", type=int, default=None,
        help="the local engine's threads around the model (default: clipseg-label's)",
    )  # fmt: skip
    parser.add_argument("--skip", action="append", default=[], choices=PATHS)
    args = parser.parse_args()
    print(f"machine: {cpu_description()}; "
          f"variant {args.variant} on {args.device}; {args.images} images 640x480, "
          f"{len(PROMPTS)} prompts each, RLE")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folder = work / "images"
        folder.mkdir()
        images = make_scenes(folder, args.images)
        for path in PATHS:
            if path in args.skip:
                continue
            runs = [measure(path, args, folder, images, work) for _ in range(args.repeat)]
            wall = describe([args.images / w for w, _ in runs])
            steady = describe([args.images / s for _, s in runs if s]) or "-"
            print(f"  {path:8s} steady {steady:28s} wall {wall}", flush=True)


if __name__ == "__main__":
    main()
