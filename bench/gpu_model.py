"""The GPU suite's model-only parts: throughput, FLOPs, peak table, bf16/fp32 agreement.

Used by ``bench/gpu_suite.py`` (the module docstring there has the method); it works on
any device, so the suite's ``--smoke`` mode runs it on a CPU. torch is imported here,
not by the suite's top level, so the suite's load-generator processes start light.
"""

from __future__ import annotations

import contextlib
import math
import platform
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
from gpu_runner import PROMPTS, Row, Suite, one_line
from host_path import photo_like
from torch.utils.flop_counter import FlopCounterMode

from clipseg_serve.model.inference.batch import SegmentRequest, plan_batch
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.network.clipseg import ClipSeg

#: bf16 dense tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's datasheets, matched
#: against ``torch.cuda.get_device_name()`` in this order (NVL/PCIe before plain H100/H200).
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"\bh200\b.*\bnvl\b", 835.0),
    (r"\bh200\b", 989.4),
    (r"\bh100\b.*\bpcie\b", 756.0),
    (r"\bh100\b.*\bnvl\b", 835.0),
    (r"\bh100\b", 989.4),  # SXM ("NVIDIA H100 80GB HBM3")
    (r"\ba100\b", 312.0),
    (r"\bl40s\b", 362.0),
    (r"\bl4\b", 121.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The table's bf16 dense peak for ``device_name``; None when unknown (or a CPU)."""
    name = device_name.lower()
    for pattern, peak in BF16_PEAK_TFLOPS:
        if re.search(pattern, name):
            return peak
    return None


@contextlib.contextmanager
def _decomposed_attention() -> Iterator[None]:
    """Attention as plain matmuls while counting: FlopCounterMode sees neither
    nn.MultiheadAttention's fused inference fast path (its projections and attention)
    nor the CPU's fused SDPA kernel, and would under-count by ~40%. (Both switches exist
    from torch 2.3; without them the count is what FlopCounterMode sees.)"""
    mha = torch.backends.mha
    fastpath = mha.get_fastpath_enabled() if hasattr(mha, "get_fastpath_enabled") else None
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        math_only = sdpa_kernel(SDPBackend.MATH)
    except ImportError:
        math_only = contextlib.nullcontext()
    if fastpath is not None:
        mha.set_fastpath_enabled(False)
    try:
        with math_only:
            yield
    finally:
        if fastpath is not None:
            mha.set_fastpath_enabled(fastpath)


def flops_per_image(predictor: Predictor, conditional: torch.Tensor) -> float:
    """FLOPs (2 per multiply-add) of one image + one prompt through ``Predictor.logits``:
    the backbone up to the deepest tapped block and the decoder (text encoder excluded:
    the conditionals are precomputed, as the service caches them)."""
    size = predictor.config.input_size
    image = torch.zeros(1, 3, size, size, device=predictor.device)
    counter = FlopCounterMode(display=False)
    with _decomposed_attention(), counter:
        predictor.logits(image, conditional[:1])
    return float(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


@dataclass
class Timing:
    images_per_s: float
    iterations: int
    seconds: float
    peak_bytes: int | None  # torch.cuda.max_memory_allocated; None off CUDA


def time_logits(
    predictor: Predictor,
    conditional: torch.Tensor,
    batch: int,
    *,
    warmup: int,
    min_seconds: float,
    max_iterations: int = 500,
) -> Timing:
    """images/s of ``predictor.logits`` on ``batch`` device-resident images, one prompt
    each. Warm-up calls first; then one synchronised call sizes the timed run (at least
    ``min_seconds``, 3..``max_iterations`` calls), timed with CUDA events on a GPU and
    ``perf_counter`` around a synchronize elsewhere."""
    device = predictor.device
    size = predictor.config.input_size
    generator = torch.Generator(device=device).manual_seed(batch)
    images = torch.randn(batch, 3, size, size, device=device, generator=generator)
    conditionals = conditional[:1].expand(batch, -1).contiguous()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        for _ in range(warmup):
            predictor.logits(images, conditionals)
        _sync(device)
        began = time.perf_counter()
        predictor.logits(images, conditionals)
        _sync(device)
        one = time.perf_counter() - began
        iterations = max(3, min(max_iterations, math.ceil(min_seconds / max(one, 1e-6))))
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iterations):
                predictor.logits(images, conditionals)
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            began = time.perf_counter()
            for _ in range(iterations):
                predictor.logits(images, conditionals)
            seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated(device) if cuda else None
    return Timing(batch * iterations / seconds, iterations, seconds, peak)


@dataclass
class Agreement:
    percent_equal: float  # of all mask pixels, over every image x prompt
    worst_percent: float  # the least-agreeing mask
    fp32_on_percent: float  # share of foreground pixels in the fp32 masks (~50 by design)
    masks: int
    pixels: int


def _requests(
    prepared: Sequence, prompts: Sequence[str], thresholds: torch.Tensor
) -> list[SegmentRequest]:
    """One request per (image, prompt), each thresholded at its own fp32 median; the
    requests of one image share its key, so the plan runs each image's backbone once."""
    return [
        SegmentRequest(
            pixels=image.pixels,
            size=image.size,
            image_key=f"image-{i}",
            prompts=(prompt,),
            threshold=float(thresholds[i * len(prompts) + j]),
        )
        for i, image in enumerate(prepared)
        for j, prompt in enumerate(prompts)
    ]


def mask_agreement(
    model: ClipSeg, device: str, images: Sequence[bytes], prompts: Sequence[str]
) -> Agreement:
    """bf16 vs fp32 masks of the same inputs at the images' own size (see the suite's
    docstring): each (image, prompt) is thresholded at the median probability of its
    fp32 map at model resolution, so random weights' arbitrary logit offset still gives
    masks about half on; both precisions then go through ``Predictor.execute`` (text
    encoder, backbone, decoder, device-side rendering) and the masks are compared."""
    fp32 = Predictor(model, device=device, dtype="float32", text_cache_size=64)
    bf16 = Predictor(model, device=device, dtype="bfloat16", text_cache_size=64)
    prepared = [fp32.prepare_image(data) for data in images]
    pixels = torch.stack([image.pixels for image in prepared])
    # Row i*P + j: image i, prompt j.
    index = torch.arange(len(prepared)).repeat_interleave(len(prompts))
    conditionals = fp32.text_embeddings(list(prompts)).repeat(len(prepared), 1)
    logits = fp32.logits(pixels, conditionals, index)
    thresholds = torch.sigmoid(logits.flatten(1)).median(dim=1).values.cpu()
    requests = _requests(prepared, prompts, thresholds)
    reference = fp32.execute(plan_batch(requests))
    candidate = bf16.execute(plan_batch(requests))
    equal = total = on = 0
    worst = 100.0
    for ours, theirs in zip(reference, candidate, strict=True):
        assert ours is not None and theirs is not None  # nothing was skipped
        a, b = ours.mask(0), theirs.mask(0)
        same = int((a == b).sum())
        equal, total, on = equal + same, total + a.size, on + int(a.sum())
        worst = min(worst, 100.0 * same / a.size)
    return Agreement(100.0 * equal / total, worst, 100.0 * on / total, len(requests), total)


# ------------------------------------------------------------------- 1. model only
def model_only(suite: Suite, deadline: float) -> None:
    scale, model = suite.scale, suite.model()
    peak = bf16_peak_tflops(device_name()) if scale.device.startswith("cuda") else None
    flops = None
    for dtype in ("bfloat16", "float32"):
        predictor = Predictor(model, device=scale.device, dtype=dtype, text_cache_size=16)
        conditional = predictor.text_embeddings([PROMPTS[0]])
        if flops is None:
            flops = flops_per_image(predictor, conditional)
            suite.memory["flops_per_image"] = {"value": flops}
        short = "bf16" if dtype == "bfloat16" else "fp32"
        for batch in scale.batches:
            name = f"model only, {short}, batch {batch}"
            target = ">= 4000 images/s" if short == "bf16" and batch == 128 else ""
            if time.monotonic() > deadline - 2:
                suite.add(Row(1, name, target=target, error="skipped: section time cap"))
                continue
            try:
                timing = time_logits(
                    predictor,
                    conditional,
                    batch,
                    warmup=scale.warmup,
                    min_seconds=scale.min_seconds,
                )
            except Exception as exc:
                if is_oom(exc):
                    torch.cuda.empty_cache()
                    exc = RuntimeError(f"out of memory at batch {batch} ({short})")
                suite.add(Row(1, name, target=target, verdict="n/a", error=one_line(exc)))
                continue
            rate = timing.images_per_s
            percent = None if peak is None else 100 * flops * rate / (peak * 1e12)
            suite.add(
                Row(
                    1,
                    name,
                    rate,
                    "images/s",
                    target,
                    suite.judge(rate, rate >= 4000) if target else "-",
                    note=(
                        f"{flops / 1e9:.3g} GFLOP/image, "
                        + ("n/a" if percent is None else f"{percent:.1f}%")
                        + " of bf16 dense peak"
                    ),
                    details={
                        "iterations": timing.iterations,
                        "seconds": timing.seconds,
                        "flops_per_image": flops,
                        "percent_of_bf16_peak": percent,
                        "bf16_peak_tflops": peak,
                        "peak_bytes": timing.peak_bytes,
                    },
                )
            )
            record = suite.memory.setdefault(f"model {short}", {"value": None, "batch": None})
            if timing.peak_bytes is not None and timing.peak_bytes >= (record["value"] or 0):
                record.update(value=timing.peak_bytes, batch=batch)


# --------------------------------------------------------------- 2. bf16 vs fp32
def agreement(suite: Suite, deadline: float) -> None:
    scale = suite.scale
    images = [photo_like(seed) for seed in range(scale.agreement_images)]
    result = mask_agreement(suite.model(), scale.device, images, scale.prompts)
    suite.add(
        Row(
            2,
            "bf16 vs fp32 masks, pixels equal",
            result.percent_equal,
            "%",
            ">= 99 %",
            suite.judge(result.percent_equal, result.percent_equal >= 99.0),
            note=(
                f"{result.masks} masks of 1920x1080 ({len(images)} images x "
                f"{len(scale.prompts)} prompts), worst mask {result.worst_percent:.2f}%, "
                f"fp32 masks {result.fp32_on_percent:.0f}% on"
            ),
            details=asdict(result),
        )
    )


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()})"
