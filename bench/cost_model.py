"""Cost-model accuracy benchmark: the server's estimates against its real times. Not a test.

Starts ``clipseg-serve`` as a subprocess (random full-size weights on the CPU by default)
and sends the idle server a grid of request kinds over loopback, ONE AT A TIME, each cell
``--repeat`` times (the whole grid once per pass, so every pass sees a model that has
learned from all the kinds before it). Each term of the cost model (``service/cost.py``) is
exercised alone and in one combination: plain RLE; refine=guided (default radius, and
radius 2: a large working scale); refine=pamr with 10 and 50 iterations; soft maps;
instances; min_area + fill_holes; erode + dilate; format png and polygon; the 9-template
ensemble; 2 negative prompts; visual prompts with 1 and 4 support images (320x240); and the
combination guided + soft + instances + polygon with 4 prompts (soft and instances
together are refused, 422, by ``service.post_form.check_answer``: so it is also sent
without soft and without instances).

Sizes 64x48, 640x480, 1920x1080 and 5000x5000 (25 MP) with one prompt, and 640x480 and
1920x1080 with 4 and 16 prompts (14 with the 2 negatives: the server's limit is 16 in
all). Every prompt is a fresh phrase (a counter in it), so the text encoder always runs.
Query images are seeded smooth random fields plus noise, as JPEGs (quality 90).

Every 200 carries ``Server-Timing`` (``service/routes.py``): ``model`` (the batch's real
model-thread time: the request ran alone, so its own), ``estimate`` (the cost model's
seconds for this request alone), ``decode``, ``encode`` and ``estimate_host``. Per 200:
ratio_model = estimate / model, ratio_host = estimate_host / (decode + encode). Both
estimates are the ones admission used, taken before the request's own batch taught the
model anything. Other answers are recorded with their status, error
code and latency (a 4xx must be immediate).

The server runs with ``CLIPSEG_REQUEST_TIMEOUT_S=110`` (below the client's 120 s), so that
the 25 MP requests are measured rather than refused as unreachable within the default
30 s; ``--env`` overrides it.

Prints the machine and the variant, a line per (kind, size, prompts) cell (medians), per
kind the p5/p50/p95 of ratio_model over its cells and repeats, the overall p5/p50/p95 and
the share of requests within 0.5-2x (also per pass).

    python bench/cost_model.py                         # rd64-refined, CPU, 3 repeats
    python bench/cost_model.py --variant tiny --quick  # 64x48 and 640x480, 1 repeat
    python bench/cost_model.py --repeat 1 --env CLIPSEG_REQUEST_TIMEOUT_S=30
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import platform
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import numpy as np
from machine import cpu_model
from PIL import Image, ImageDraw
from server import parse_env, start_server, stop_server

#: (label, width, height) of the query images.
SIZES = (("64x48", 64, 48), ("640x480", 640, 480), ("1920x1080", 1920, 1080),
         ("25MP", 5000, 5000))  # fmt: skip
QUICK_SIZES = ("64x48", "640x480")
#: Sizes that are also sent with several prompts, and those prompt counts.
MULTI_SIZES = ("640x480", "1920x1080")
MULTI_PROMPTS = (4, 16)
#: The server's default prompts (+ negatives) per request.
MAX_PROMPTS = 16
SUPPORT_SIZE = (320, 240)
TIMEOUT_S = 120.0
SERVER_TIMEOUT_S = "110"
LOW, HIGH = 0.5, 2.0


@dataclass(frozen=True)
class Kind:
    """A kind of request: its form ``fields``; ``prompts`` fixes the prompt count (None:
    the grid's counts); ``supports`` > 0 makes it visual; ``negatives`` negative prompts."""

    name: str
    fields: dict[str, str] = field(default_factory=dict, hash=False)
    prompts: int | None = None
    supports: int = 0
    negatives: int = 0


COMBINED = {"refine": "guided", "format": "polygon"}
KINDS = (
    Kind("plain", {"format": "rle"}),
    Kind("guided", {"refine": "guided", "format": "rle"}),
    Kind("guided-r2", {"refine": "guided", "refine_radius": "2", "format": "rle"}),
    Kind("pamr10", {"refine": "pamr", "pamr_iterations": "10", "format": "rle"}),
    Kind("pamr50", {"refine": "pamr", "pamr_iterations": "50", "format": "rle"}),
    Kind("soft", {"soft": "true", "format": "rle"}),
    Kind("instances", {"instances": "true", "format": "rle"}),
    Kind("area+holes", {"min_area": "16", "fill_holes": "true", "format": "rle"}),
    Kind("erode+dilate", {"erode": "3", "dilate": "3", "format": "rle"}),
    Kind("png", {"format": "png"}),
    Kind("polygon", {"format": "polygon"}),
    Kind("ensemble", {"template": "ensemble", "format": "rle"}),
    Kind("negatives", {"format": "rle"}, negatives=2),
    Kind("visual1", {"format": "rle"}, prompts=1, supports=1),
    Kind("visual4", {"format": "rle"}, prompts=1, supports=4),
    Kind("combined", {**COMBINED, "soft": "true", "instances": "true"}, prompts=4),
    Kind("combined-no-soft", {**COMBINED, "instances": "true"}, prompts=4),
    Kind("combined-no-inst", {**COMBINED, "soft": "true"}, prompts=4),
)


@dataclass(frozen=True)
class Cell:
    kind: Kind
    size: str
    prompts: int


@dataclass
class Record:
    cell: Cell
    passno: int
    status: int  # 0: transport error
    latency_s: float
    code: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # ms

    @property
    def ratio_model(self) -> float | None:
        model = self.timings.get("model", 0.0)
        if self.status != 200 or "estimate" not in self.timings or model <= 0:
            return None
        return self.timings["estimate"] / model

    @property
    def ratio_host(self) -> float | None:
        host = self.timings.get("decode", 0.0) + self.timings.get("encode", 0.0)
        if self.status != 200 or "estimate_host" not in self.timings or host <= 0:
            return None
        return self.timings["estimate_host"] / host


def jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG: a smooth random field plus a little noise (compresses well)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    smooth = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    pixels = np.asarray(smooth).astype(np.int16)
    pixels += rng.integers(-6, 7, pixels.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


def support_mask(seed: int) -> bytes:
    """An ellipse as a 320x240 grayscale PNG."""
    rng = np.random.default_rng(seed)
    width, height = SUPPORT_SIZE
    x0, y0 = (int(v) for v in rng.integers(10, 80, 2))
    image = Image.new("L", SUPPORT_SIZE, 0)
    ImageDraw.Draw(image).ellipse((x0, y0, width - x0, height - y0), fill=255)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_images(sizes: tuple[str, ...]) -> dict[str, bytes]:
    return {label: jpeg(w, h, i) for i, (label, w, h) in enumerate(SIZES) if label in sizes}


def make_supports(count: int) -> list[tuple[bytes, bytes]]:
    return [(jpeg(*SUPPORT_SIZE, seed=100 + i), support_mask(200 + i)) for i in range(count)]


def cells(kind: Kind, quick: bool) -> list[Cell]:
    """The kind's (size, prompts) cells of the grid."""
    sizes = QUICK_SIZES if quick else tuple(label for label, _, _ in SIZES)
    if kind.prompts is not None:
        return [Cell(kind, size, kind.prompts) for size in sizes]
    grid = [Cell(kind, size, 1) for size in sizes]
    for count, size in itertools.product(MULTI_PROMPTS, MULTI_SIZES):
        if size in sizes:
            grid.append(Cell(kind, size, min(count, MAX_PROMPTS - kind.negatives)))
    return grid


def parse_server_timing(header: str) -> dict[str, float]:
    """``"decode;dur=1.2, model;dur=3.4"`` -> ``{"decode": 1.2, "model": 3.4}`` (ms)."""
    timings = {}
    for entry in header.split(","):
        name, _, params = entry.strip().partition(";")
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "dur":
                timings[name] = float(value)
    return timings


def error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


class Sender:
    """Sends one cell's request at a time; every prompt is a new phrase."""

    def __init__(self, url: str, images: dict[str, bytes], supports: list) -> None:
        self.url = url
        self.images = images
        self.supports = supports
        self.counter = itertools.count()
        self.http = httpx.Client(timeout=TIMEOUT_S)

    def phrases(self, count: int, word: str) -> list[str]:
        n = next(self.counter)
        return [f"{word} {i} number {n}" for i in range(count)]

    def form(self, cell: Cell) -> tuple[str, dict, list]:
        kind = cell.kind
        files = [("image", ("q.jpg", self.images[cell.size], "image/jpeg"))]
        data: dict[str, str | list[str]] = dict(kind.fields)
        if kind.supports:
            for image, mask in self.supports[: kind.supports]:
                files.append(("support_image", ("s.jpg", image, "image/jpeg")))
                files.append(("support_mask", ("m.png", mask, "image/png")))
            return "/v1/segment/visual", data, files
        data["prompt"] = self.phrases(cell.prompts, "thing")
        if kind.negatives:
            data["negative_prompt"] = self.phrases(kind.negatives, "other")
        return "/v1/segment/text", data, files

    def send(self, cell: Cell, passno: int) -> Record:
        path, data, files = self.form(cell)
        start = time.perf_counter()
        try:
            response = self.http.post(self.url + path, data=data, files=files)
        except httpx.HTTPError as exc:
            return Record(cell, passno, 0, time.perf_counter() - start, type(exc).__name__)
        latency = time.perf_counter() - start
        if response.status_code != 200:
            return Record(cell, passno, response.status_code, latency, error_code(response))
        timings = parse_server_timing(response.headers.get("server-timing", ""))
        return Record(cell, passno, 200, latency, timings=timings)

    def close(self) -> None:
        self.http.close()


def quantiles(values: list[float], qs: tuple[float, ...] = (0.05, 0.5, 0.95)) -> str:
    if not values:
        return "-"
    return "/".join(f"{float(np.quantile(values, q)):.2f}" for q in qs)


def median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def within(values: list[float]) -> str:
    if not values:
        return "-"
    share = sum(LOW <= v <= HIGH for v in values) / len(values)
    return f"{100 * share:.0f}% of {len(values)}"


def ratios(records: list[Record]) -> list[float]:
    return [r for r in (rec.ratio_model for rec in records) if r is not None]


def host_ratios(records: list[Record]) -> list[float]:
    return [r for r in (rec.ratio_host for rec in records) if r is not None]


def cell_line(cell: Cell, records: list[Record]) -> str:
    label = f"{cell.kind.name:<17} {cell.size:>9} {cell.prompts:>3}"
    ok = [r for r in records if r.status == 200]
    refused = sorted({f"{r.status} {r.code}".strip() for r in records if r.status != 200})
    note = ""
    if refused:
        slowest = max(r.latency_s for r in records if r.status != 200)
        note = f"  refused: {', '.join(refused)} (latency <= {1000 * slowest:.0f} ms)"
    if not ok:
        return label + note
    model = median([r.timings.get("model", float("nan")) for r in ok])
    estimate = median([r.timings.get("estimate", float("nan")) for r in ok])
    return (
        f"{label} {model:>10.1f} {estimate:>10.1f} {median(ratios(ok)):>6.2f} "
        f"{median(host_ratios(ok)):>6.2f}{note}"
    )


def report(grid: list[Cell], records: list[Record]) -> None:
    by_cell = {cell: [r for r in records if r.cell == cell] for cell in grid}
    print(f"{'kind':<17} {'size':>9} {'pr':>3} {'model ms':>10} {'estim ms':>10} "
          f"{'ratio':>6} {'host':>6}")  # fmt: skip
    for cell in grid:
        print(cell_line(cell, by_cell[cell]))
    print("\nratio_model = estimate / model, per term: p5/p50/p95; share within 0.5-2x of n")
    for kind in dict.fromkeys(cell.kind for cell in grid):
        values = ratios([r for r in records if r.cell.kind == kind])
        print(f"  {kind.name:<17} {quantiles(values):>17}  {within(values)}")
    values = ratios(records)
    print(f"  {'overall':<17} {quantiles(values):>17}  {within(values)}")
    hosts = host_ratios(records)
    print(f"  {'host (overall)':<17} {quantiles(hosts):>17}  {within(hosts)}")
    for passno in sorted({r.passno for r in records}):
        values = ratios([r for r in records if r.passno == passno])
        print(f"  pass {passno + 1}: {quantiles(values)}, within 0.5-2x {within(values)}")
    statuses: dict[int, int] = {}
    for r in records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    print(f"  answers by status: {dict(sorted(statuses.items()))}")


def run_grid(sender: Sender, grid: list[Cell], repeat: int) -> Iterator[Record]:
    """Every cell once per pass, in order; progress on stderr after each pass."""
    started = time.monotonic()
    for passno in range(repeat):
        for cell in grid:
            yield sender.send(cell, passno)
        elapsed = time.monotonic() - started
        print(f"pass {passno + 1}/{repeat} done at {elapsed:.0f} s", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="rd64-refined")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64x48 and 640x480, 1 repeat")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    print(f"machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} cores")
    print(f"variant {args.variant} on {args.device}; {repeat} pass(es); env {args.env}")
    grid = [cell for kind in KINDS for cell in cells(kind, args.quick)]
    images = make_images(QUICK_SIZES if args.quick else tuple(s for s, _, _ in SIZES))
    settings = {
        "CLIPSEG_WEIGHTS": f"random:{args.variant}",
        "CLIPSEG_DEVICE": args.device,
        "CLIPSEG_REQUEST_TIMEOUT_S": SERVER_TIMEOUT_S,
        **parse_env(args.env),
    }
    process, url = start_server(settings)
    sender = Sender(url, images, make_supports(4))
    started = time.monotonic()
    try:
        records = list(run_grid(sender, grid, repeat))
        print(f"{len(records)} requests in {time.monotonic() - started:.0f} s\n")
        report(grid, records)
    finally:
        sender.close()
        stop_server(process)


if __name__ == "__main__":
    main()
