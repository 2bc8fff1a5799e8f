"""Memory benchmark: peak RSS growth of the server for large-image requests. Not a test.

Starts ``clipseg-serve`` (random full-size weights, CPU) as a subprocess, takes its idle
RSS after a warm-up request, then for each case resets the kernel's peak-RSS counter
(``/proc/PID/clear_refs`` = 5), sends the request and reads ``VmHWM``:

* a 7000x7000 float32 TIFF query (deflate, ~0.3 MB), one prompt, RLE;
* a 7000x7000 JPEG (~0.8 MB) with 16 prompts, RLE; the same with soft=true;
* a 7000x7000 JPEG support + a 7000x7000 PNG mask (one-shot), RLE;
* 8 of those at once (two of each), concurrently.

Each case runs on a fresh server (the allocator keeps freed memory, which would count
against the next case).

    python bench/memory.py
    python bench/memory.py --env CLIPSEG_MAX_SOFT_PIXELS=1000000000   # allow the soft case
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from server import ROOT, parse_env, start_server, stop_server

SIDE = 7000


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def smooth(side: int, seed: int) -> np.ndarray:
    """A photo-like [side, side, 3] uint8 image (smooth colour fields)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((side, side), Image.Resampling.BILINEAR))


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def make_inputs() -> dict[str, bytes]:
    # Float values in 1000x1000 constant tiles: a 196 MB image that deflates to ~0.3 MB.
    tiles = np.random.default_rng(0).random((SIDE // 1000, SIDE // 1000)).astype(np.float32)
    floats = np.kron(tiles, np.ones((1000, 1000), dtype=np.float32))
    tiff = encoded(Image.fromarray(floats), "TIFF", compression="tiff_adobe_deflate")
    jpeg = encoded(Image.fromarray(smooth(SIDE, 1)), "JPEG", quality=90)
    support = encoded(Image.fromarray(smooth(SIDE, 2)), "JPEG", quality=90)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[SIDE // 4 : SIDE // 2, SIDE // 3 : 2 * SIDE // 3] = 255
    return {
        "tiff": tiff,
        "jpeg": jpeg,
        "support": support,
        "mask": encoded(Image.fromarray(mask), "PNG"),
    }


def request(url: str, inputs: dict[str, bytes], case: str) -> httpx.Response:
    prompts = [f"thing {i}" for i in range(16)]
    if case == "float TIFF query":
        files = {"image": ("q.tif", inputs["tiff"], "image/tiff")}
        data = {"prompt": "a", "format": "rle"}
        return httpx.post(url + "/v1/segment/text", files=files, data=data, timeout=300)
    if case.startswith("JPEG 16 prompts"):
        soft = "true" if "soft" in case else "false"
        files = {"image": ("q.jpg", inputs["jpeg"], "image/jpeg")}
        data = {"prompt": prompts, "format": "rle", "soft": soft}
        return httpx.post(url + "/v1/segment/text", files=files, data=data, timeout=300)
    files = [
        ("image", ("q.jpg", inputs["jpeg"], "image/jpeg")),
        ("support_image", ("s.jpg", inputs["support"], "image/jpeg")),
        ("support_mask", ("m.png", inputs["mask"], "image/png")),
    ]
    return httpx.post(url + "/v1/segment/visual", files=files, data={"format": "rle"}, timeout=300)


CASES = ["float TIFF query", "JPEG 16 prompts rle", "JPEG 16 prompts soft", "support + mask"]


def start(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    settings = {
        "CLIPSEG_WEIGHTS": f"random:{args.variant}",
        "CLIPSEG_DEVICE": "cpu",
        "CLIPSEG_REQUEST_TIMEOUT_S": "300",  # memory, not deadlines, is measured here
    }
    return start_server({**settings, **parse_env(args.env)}, args.source)


def idle_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str, float]:
    """A fresh server after three small warm-up requests, and its idle RSS in MB."""
    process, url = start(args)
    small = encoded(Image.fromarray(smooth(640, 3)), "JPEG")
    for _ in range(3):
        httpx.post(url + "/v1/segment/text", files={"image": ("w.jpg", small, "image/jpeg")},
                   data={"prompt": "warm"}, timeout=120)  # fmt: skip
    time.sleep(1.0)
    return process, url, rss_mb(process.pid, "VmRSS")


def measure(args: argparse.Namespace, inputs: dict[str, bytes], cases: list[str]) -> None:
    """Send ``cases`` at once to a fresh server; print each answer and the peak RSS growth."""
    process, url, idle = idle_server(args)
    try:
        reset_peak(process.pid)
        start_time = time.monotonic()
        with ThreadPoolExecutor(len(cases)) as pool:
            answers = list(pool.map(lambda c: request(url, inputs, c), cases))
        seconds = time.monotonic() - start_time
        peak = rss_mb(process.pid, "VmHWM") - idle
        title = cases[0] if len(cases) == 1 else f"{len(cases)} at once"
        print(
            f"{title}: peak +{peak:.0f} MB above the idle server ({idle:.0f} MB), {seconds:.1f} s"
        )
        for case, answer in zip(cases, answers, strict=True):
            error = "" if answer.status_code == 200 else answer.json()["error"]
            print(f"    {case:>22}: {answer.status_code} {error}")
        print(f"    server alive afterwards: {process.poll() is None}")
    finally:
        stop_server(process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="rd64-refined")
    parser.add_argument("--source", type=Path, default=ROOT)
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--case", action="append", choices=CASES, help="only these (repeat)")
    parser.add_argument("--no-concurrent", action="store_true", help="skip the 8-at-once run")
    args = parser.parse_args()
    inputs = make_inputs()
    sizes = ", ".join(f"{k} {len(v) / 1e6:.2f} MB" for k, v in inputs.items())
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.variant}; inputs {sizes}")
    for case in args.case or CASES:  # each on a fresh server: memory the allocator kept
        measure(args, inputs, [case])  # after one case must not count against the next
    if not args.no_concurrent:
        measure(args, inputs, [CASES[i % len(CASES)] for i in range(8)])


if __name__ == "__main__":
    main()
