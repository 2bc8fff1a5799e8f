"""Benchmark: every backend and precision on the same random full-size weights (CPU).

Rows: transformers' CLIPSeg (fp32), ours on torch fp32, torch bf16 (autocast), ONNX
Runtime fp32 and ONNX Runtime int8 (dynamic; ``--static`` adds static int8 calibrated on
crops of the test photos). Every row gets the same pixels and prompts, and computes the
text embeddings on every call (no cache), like ``bench/model_vs_hf.py``:

* latency at 1 prompt/image and throughput (masks/s) at 5 prompts/image, the model
  path (text encoder, vision tower, decoder; 352 x 352 logits);
* ``segment()``: one full library call at 1 prompt on a 512 x 512 photo (decode,
  model, render), for our rows;
* images/s with ``BATCH`` images in one model call (1 prompt each), as the service
  batches them, for our rows;
* agreement with torch fp32's masks (``model.onnx.fidelity``) on the two test photos and a
  noise image, 4 prompts + a visual prompt: at the model's threshold (random weights
  can leave those masks nearly empty) and split at each map's median (half foreground).

    python bench/backends.py --threads 2 [--repeats 7] [--static] [--json out.json]

Never run as a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.model_vs_hf import PROMPTS, timed  # the same prompts and timer as there
from clipseg_serve.model.device import cpu_bf16_support
from clipseg_serve.model.imaging.transforms import normalize_pixels
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.network.text import tokenize
from clipseg_serve.model.onnx.export import export_graphs
from clipseg_serve.model.onnx.fidelity import compare_backends
from clipseg_serve.model.onnx.int8_kernels import (
    FORMATS,
    choose_format,
    exact_formats,
    kernel_class,
)
from clipseg_serve.model.onnx.quantize import calibration_pixels, quantize_export
from clipseg_serve.model.onnx.runtime import OnnxClipSeg
from clipseg_serve.model.weights.loader import load_model
from tests.hf_reference import build_hf_clipseg, save_hf_checkpoint

#: Images per call for the batched throughput (the service batches images).
BATCH = 4
PHOTOS = Path(__file__).resolve().parents[1] / "tests" / "data" / "photos"


def _photo():
    from PIL import Image

    return Image.open(PHOTOS / "astronaut.jpg").convert("RGB").resize((512, 512))


def _predictors(hf_dir: Path, folder: Path, static: bool) -> dict[str, Predictor]:
    ours = load_model(hf_dir).model
    rows = {"torch fp32": Predictor(ours, device="cpu", dtype="float32")}
    if cpu_bf16_support():  # elsewhere bf16 is emulated, slower than fp32, and never chosen
        rows["torch bf16"] = Predictor(ours, device="cpu", dtype="bfloat16")
    with contextlib.redirect_stdout(sys.stderr):
        export_graphs(ours, folder)
    rows["onnx fp32"] = Predictor(OnnxClipSeg(folder), device="cpu")
    quantize_export(folder, "dynamic")
    # Every int8 format, the ones this CPU's kernels do not compute exactly included: that
    # row shows what the saturation costs (the service never runs it here).
    for fmt in FORMATS:
        model = OnnxClipSeg(folder, precision="int8", int8_format=fmt.name)
        rows[f"onnx int8 dynamic {_label(fmt.name)}"] = Predictor(model, device="cpu")
    if static:
        with tempfile.TemporaryDirectory() as crops:
            images = list(calibration_pixels(write_crops(Path(crops)), ours.config, 16))
        fmt = choose_format()
        quantize_export(folder, "static", images, formats=(fmt,))
        model = OnnxClipSeg(folder, precision="int8", int8_format=fmt.name)
        rows[f"onnx int8 static {_label(fmt.name)}"] = Predictor(model, device="cpu")
    return rows


def _label(fmt: str) -> str:
    """An int8 format's name, and whether this CPU's kernels compute it exactly."""
    return fmt if fmt in exact_formats() else f"{fmt} (saturates here)"


def write_crops(folder: Path) -> Path:
    """16 crops (2/3 of each side, seeded) of the two test photos: calibration images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = [Image.open(PHOTOS / n).convert("RGB") for n in ("astronaut.jpg", "rocket.jpg")]
    for i in range(16):
        image = photos[i % 2]
        w, h = image.size
        x, y = int(rng.integers(0, w // 3)), int(rng.integers(0, h // 3))
        image.crop((x, y, x + 2 * w // 3, y + 2 * h // 3)).save(folder / f"{i:02d}.png")
    return folder


def _model_path(predictor: Predictor, pixels: torch.Tensor) -> Callable[[int], torch.Tensor]:
    def run(n: int) -> torch.Tensor:
        predictor.clear_text_cache()
        conditionals = predictor.text_embeddings(PROMPTS[:n])
        return predictor.logits(pixels, conditionals, torch.zeros(n, dtype=torch.long))

    return run


def _batch_of(predictor: Predictor, pixels: torch.Tensor, images: int) -> Callable[[], object]:
    """``images`` copies of the image in one call, one prompt each (cached text)."""
    batch = pixels.expand(images, -1, -1, -1).contiguous()
    conditionals = predictor.text_embeddings(PROMPTS[:1]).expand(images, -1)
    return lambda: predictor.logits(batch, conditionals, torch.arange(images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--static", action="store_true", help="add static int8 (calibrated)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")

    hf = build_hf_clipseg(small=False, refined=True, reduce_dim=64).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_hf_checkpoint(hf, Path(tmp) / "hf")
        predictors = _predictors(hf_dir, Path(tmp) / "onnx", args.static)
    photo = _photo()
    reference = predictors["torch fp32"]
    pixels = reference.prepare_image(photo).pixels[None]
    cfg = reference.config
    floats = normalize_pixels(pixels, cfg.mean, cfg.std)

    def run_hf(n: int) -> torch.Tensor:
        with torch.inference_mode():
            tokens = tokenize(PROMPTS[:n])
            return hf(pixel_values=floats.expand(n, -1, -1, -1), input_ids=tokens).logits

    calls: dict[str, Callable[[int], torch.Tensor]] = {"transformers fp32": run_hf}
    calls |= {name: _model_path(p, pixels) for name, p in predictors.items()}
    results: dict[str, dict[str, float]] = {}
    with torch.inference_mode():
        for name, call in calls.items():
            one = timed(lambda call=call: call(1), args.warmup, args.repeats)
            five = timed(lambda call=call: call(5), args.warmup, args.repeats)
            results[name] = {
                "latency_1_s": statistics.median(one),
                "latency_5_s": statistics.median(five),
                "masks_per_s_5": 5 / statistics.median(five),
            }
            predictor = predictors.get(name)
            if predictor is not None:

                def segment(predictor=predictor) -> None:
                    predictor.clear_text_cache()
                    predictor.segment(photo, PROMPTS[:1])

                results[name]["segment_1_s"] = statistics.median(
                    timed(segment, args.warmup, args.repeats)
                )
                # What the service's batches do: several images in one model call.
                batch = _batch_of(predictor, pixels, BATCH)
                results[name]["images_per_s_batch"] = BATCH / statistics.median(
                    timed(batch, args.warmup, args.repeats)
                )
            print(f"{name:>18}: {json.dumps(results[name])}", file=sys.stderr)
        sources = [PHOTOS / "astronaut.jpg", PHOTOS / "rocket.jpg", _noise()]
        candidates = {n: p for n, p in predictors.items() if n != "torch fp32"}
        for fidelity in compare_backends(reference, candidates, sources, PROMPTS[:4]):
            results[fidelity.name] |= {
                "pixel_agreement": fidelity.pixel_agreement,
                "median_split_agreement": fidelity.median_split_agreement,
                "mean_iou": fidelity.mean_iou,
            }
    _report(results, args)


def _noise():
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(7).integers(0, 256, (200, 300, 3), np.uint8))


def _report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads"
    print(f"machine: {machine}, torch {torch.__version__}, native bf16: {cpu_bf16_support()}, "
          f"int8 kernels: {kernel_class()} (exact: {', '.join(exact_formats())})")  # fmt: skip
    torch_1 = results["torch fp32"]["latency_1_s"]
    hf_1 = results["transformers fp32"]["latency_1_s"]
    print("| backend | 1 prompt, s | vs torch fp32 | vs transformers | 5 prompts, masks/s "
          f"| segment() 1 prompt, s | {BATCH} images/call, images/s | pixels agree "
          "| median split agrees |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        segment = f"{r['segment_1_s']:.3f}" if "segment_1_s" in r else ""
        batched = f"{r['images_per_s_batch']:.2f}" if "images_per_s_batch" in r else ""
        agree = f"{r['pixel_agreement']:.4f}" if "pixel_agreement" in r else ""
        split = f"{r['median_split_agreement']:.4f}" if "median_split_agreement" in r else ""
        print(f"| {name} | {r['latency_1_s']:.3f} | {torch_1 / r['latency_1_s']:.2f}x | "
              f"{hf_1 / r['latency_1_s']:.2f}x | {r['masks_per_s_5']:.2f} | {segment} | "
              f"{batched} | {agree} | {split} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
