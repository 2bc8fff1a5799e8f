"""Warm-up that measures every term of the cost models on this device.

Run on the model thread before /readyz turns 200. Each measurement runs once to compile
kernels and fill allocators (not measured), then ``REPEATS`` times; the median counts.
Terms are measured one at a time against a baseline that differs only in that term:

* model thread (``service.cost.CostModel``): a one-image, one-prompt batch, then an extra
  image, seven extra decoder rows, a support image; eight text sequences through the
  text encoder; and the pixel work, as the slope between a ``SMALL`` and a ``LARGE``
  (2 MP) image, where it is not drowned by the backbone's noise: rendering, the guided
  filter's full-size step and its solve (a small radius makes the working scale large),
  PAMR (two iteration counts, and its set-up), soft maps, shape steps, instances;
* host (``service.cost.HostCost``): decoding a 2 MP PNG and encoding 2 MP masks as PNG,
  RLE and polygons, and soft maps.

The maps are a smooth pattern of blobs (dozens of components a mask), not a constant, so
the component, hole and polygon work is that of real masks, not of an empty one. The
result is the cost models' prior on this device, so admission is right from the first
request; the traffic then refines it.
"""

from __future__ import annotations

import io
import itertools
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from clipseg_serve.model.inference.batch import SegmentRequest
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.masks.postprocess import PostProcess, Refine
from clipseg_serve.service import codec
from clipseg_serve.service.budget import ImageHeader, decode_bytes
from clipseg_serve.service.cost import CostModel, HostCost, shape_steps, work_for
from clipseg_serve.service.encode_limits import EncodeLimits

#: Priors for when no calibration ran (warm-up off), in ``TERMS`` / ``HOST_TERMS`` order:
#: deliberately optimistic (a fast GPU's figures), so admission refuses nothing until the
#: first batches have taught the model the real costs.
GENERIC_PRIOR = (0.001, 0.005, 0.0005, 0.0005, 0.005) + (0.001,) * 8
GENERIC_HOST_PRIOR = (0.0005, 0.001, 0.001, 0.002, 0.001, 0.0001, 0.001, 0.002)
#: Measured runs of each calibration step (their median counts).
REPEATS = 3
#: How often PAMR's two iteration counts are timed before a non-positive difference is
#: believed (and the term left to online learning).
PAMR_TRIES = 3
#: The pixel work's two images (0.26 and 2.1 MP): the per-megapixel slope between them.
SMALL = (512, 512)
LARGE = (1448, 1448)
EXTRA_ROWS = 7
TEXTS = 8
#: PAMR's two iteration counts and its image (at its working scale already).
PAMR_ITERATIONS = (5, 15)
PAMR_SIZE = (144, 192)


def _median_seconds(run: Callable[[], object]) -> float:
    run()  # compile / allocate; not measured
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _blobs(side: int, seed: int = 0) -> torch.Tensor:
    """float32 [1, side, side] logits of a smooth field: blobs ~1/8 of the side across."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(0.0, 4.0, (1, 1, 9, 9)).astype(np.float32))
    return torch.nn.functional.interpolate(coarse, size=(side, side), mode="bicubic")[0]


def _guide(size: tuple[int, int], seed: int = 1) -> torch.Tensor:
    """uint8 [3, h, w]: a noisy guide image."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (3, *size), dtype=np.uint8))


def calibrate(predictor: Predictor) -> tuple[CostModel, HostCost]:
    """Measure this device (blocking; call on the model thread) -> calibrated models."""
    model = _model_terms(predictor)
    predictor.clear_text_cache()
    return CostModel(model), HostCost(_host_terms(predictor))


def _model_terms(predictor: Predictor) -> list[float]:
    query = predictor.prepare_image(Image.new("RGB", (64, 64), (127, 127, 127)))
    mask = np.zeros((64, 64), dtype=bool)
    mask[16:48, 16:48] = True
    support = predictor.prepare_support(Image.new("RGB", (64, 64), (90, 90, 90)), mask)[None]

    def batch(*requests: SegmentRequest) -> Callable[[], object]:
        return lambda: predictor.segment_batch(list(requests))

    def text(key: str, prompts: int = 1) -> SegmentRequest:
        names = tuple(f"calibration {i}" for i in range(prompts))
        return SegmentRequest(query.pixels, (64, 64), key, prompts=names)

    base = _median_seconds(batch(text("a")))
    image = _median_seconds(batch(text("a"), text("b"))) - base
    rows = (_median_seconds(batch(text("a", 1 + EXTRA_ROWS))) - base) / EXTRA_ROWS
    with_support = SegmentRequest(query.pixels, (64, 64), "a", supports=support)
    supports = _median_seconds(batch(with_support)) - base
    texts = _text_seconds(predictor)
    pixels = _pixel_terms(predictor)
    image, rows, supports = max(image, 0.0), max(rows, 0.0), max(supports, 0.0)
    per_batch = max(base - image - rows, 0.0)
    return [per_batch, image, rows, texts, supports, *pixels]


def _text_seconds(predictor: Predictor) -> float:
    """Seconds per text sequence through the encoder (fresh phrases: never cached)."""
    rounds = itertools.count()

    def fresh() -> None:
        n = next(rounds)
        predictor.text_embeddings([f"calibration phrase {n} {i}" for i in range(TEXTS)])

    return _median_seconds(fresh) / TEXTS


def _pixel_terms(predictor: Predictor) -> list[float]:
    """Seconds per megapixel of each pixel term, in ``TERMS`` order.

    Per megapixel means the slope between ``SMALL`` and ``LARGE``: a step's fixed cost
    per call (band set-up, allocation) is not charged to every megapixel."""
    grid = predictor.config.grid_size
    logits = _blobs(predictor.config.input_size).to(predictor.device)
    guides = {size: _guide(size) for size in (SMALL, LARGE, PAMR_SIZE)}

    def seconds(post: PostProcess, size: tuple[int, int], soft: bool = False) -> float:
        guide = guides[size] if post.refine is not Refine.NONE else None
        return _median_seconds(
            lambda: predictor.render(logits, size, soft=soft, post=post, guide=guide)
        )

    def amount(post: PostProcess, name: str, size=LARGE, soft: bool = False) -> float:
        return getattr(work_for(size, 1, 1, soft=soft, post=post, grid=grid), name)

    megapixels = (LARGE[0] * LARGE[1] - SMALL[0] * SMALL[1]) / 1e6

    def slope(post: PostProcess, soft: bool = False) -> float:
        return (seconds(post, LARGE, soft) - seconds(post, SMALL, soft)) / megapixels

    plain, guided = PostProcess(), PostProcess(refine=Refine.GUIDED)
    render = slope(plain)
    soft = slope(plain, soft=True) - render
    shaped = PostProcess(min_area=16, fill_holes=True)
    shape = (slope(shaped) - render) / shape_steps(shaped)
    instances = slope(PostProcess(instances=True)) - render - soft
    fine = PostProcess(refine=Refine.GUIDED, radius=2)  # the largest working scale
    work_mp = amount(fine, "guided_work_mp") - amount(guided, "guided_work_mp")
    per_work = max(seconds(fine, LARGE) - seconds(guided, LARGE), 0.0) / work_mp
    work_slope = (amount(guided, "guided_work_mp") - amount(guided, "guided_work_mp", SMALL)) / (
        megapixels
    )
    per_guided = slope(guided) - render - per_work * work_slope
    pamr, pamr_setup = _pamr_terms(seconds, amount)
    return [
        max(v, 0.0)
        for v in (render, per_guided, per_work, pamr, pamr_setup, soft, shape, instances)
    ]


def _pamr_terms(
    seconds: Callable[[PostProcess, tuple[int, int]], float],
    amount: Callable[..., float],
) -> tuple[float, float]:
    """(seconds per map-iteration megapixel, seconds per setup megapixel) of PAMR, from two
    iteration counts and the guided filter alone, all at ``PAMR_SIZE``."""
    few, many = (PostProcess(refine=Refine.PAMR, pamr_iterations=n) for n in PAMR_ITERATIONS)
    iterations = amount(many, "pamr_mp", PAMR_SIZE) - amount(few, "pamr_mp", PAMR_SIZE)
    # More iterations cannot cost less: a difference at or below zero is a noisy moment
    # (a busy host), so measure both again, a few times at most.
    for _ in range(PAMR_TRIES):
        t_few = seconds(few, PAMR_SIZE)
        pamr = (seconds(many, PAMR_SIZE) - t_few) / iterations
        if pamr > 0.0:
            break
    guided = seconds(PostProcess(refine=Refine.GUIDED), PAMR_SIZE)
    setup = t_few - guided - pamr * amount(few, "pamr_mp", PAMR_SIZE)
    return pamr, setup / amount(few, "pamr_setup_mp", PAMR_SIZE)


def _host_terms(predictor: Predictor) -> list[float]:
    """Seconds per request, per decoded MB and per encoded megapixel, in ``HOST_TERMS``
    order: png, polygon, rle (runs found here), runs (found on the device), soft, instances."""
    rng = np.random.default_rng(2)
    photo = Image.fromarray(rng.integers(0, 256, (*LARGE, 3), dtype=np.uint8))
    data = io.BytesIO()
    photo.save(data, format="PNG", compress_level=1)
    png = data.getvalue()
    header = ImageHeader("PNG", LARGE[1], LARGE[0], "RGB")
    decoded_mb = decode_bytes(header, predictor.config.input_size) / 1e6
    decode = _median_seconds(lambda: codec.prepare_query(predictor, png)) / decoded_mb
    logits = _blobs(predictor.config.input_size)
    masks_mp = LARGE[0] * LARGE[1] / 1e6

    def encode(fmt: str, **render: object) -> float:
        answer = predictor.render(logits, LARGE, **render)  # type: ignore[arg-type]
        return _median_seconds(lambda: codec.json_body(answer, fmt, 8, 1.0, _no_limit()))

    tiny = predictor.render(logits, (8, 8), runs=True)
    per_request = _median_seconds(lambda: codec.json_body(tiny, "rle", 8, 1.0, _no_limit()))
    png_s, polygon, rle = (encode(fmt) - per_request for fmt in ("png", "polygon", "rle"))
    runs = encode("rle", runs=True) - per_request
    soft = encode("png", soft=True) - per_request - png_s
    instances = encode("rle", post=PostProcess(instances=True)) - per_request - rle
    per_mp = (v / masks_mp for v in (png_s, polygon, rle, runs, soft, instances))
    return [max(v, 0.0) for v in (per_request, decode, *per_mp)]


def _no_limit() -> EncodeLimits:
    return EncodeLimits(deadline=float("inf"), max_vertices=1 << 40)
