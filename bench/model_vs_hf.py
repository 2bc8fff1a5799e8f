"""Benchmark: our CLIPSeg vs transformers' CLIPSeg, same random full-size weights.

Both models get the same pixels and the same token ids (padded to the longest prompt, as
transformers' processor does with padding=True) and compute the text embeddings every
call (no cache), fp32. Reports the median latency for 1 prompt/image and the throughput
for 5 prompts/image, and the ratios. Never run as a test.

    python bench/model_vs_hf.py --threads 2 --device cpu
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

# Benchmarks run from a checkout: the reference builder lives with the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipseg_serve.model.network.text import tokenize
from clipseg_serve.model.weights.loader import load_model
from tests.hf_reference import build_hf_clipseg, save_hf_checkpoint

PROMPTS = ["a cat", "the red mug", "something to sit on", "a wooden table", "the sky"]


def timed(fn, warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    hf = build_hf_clipseg(small=False, refined=True, reduce_dim=64)
    with tempfile.TemporaryDirectory() as tmp:
        ours = load_model(save_hf_checkpoint(hf, Path(tmp))).model
    hf, ours = hf.to(device).eval(), ours.to(device).eval()
    image = torch.randn(1, 3, 352, 352, device=device)

    def run_hf(n: int):
        tokens = tokenize(PROMPTS[:n]).to(device)
        with torch.inference_mode():
            return hf(pixel_values=image.expand(n, -1, -1, -1), input_ids=tokens).logits

    def run_ours(n: int):
        tokens = tokenize(PROMPTS[:n]).to(device)
        with torch.inference_mode():
            conds = ours.embed_text(tokens)
            return ours(image, conds, torch.zeros(n, dtype=torch.long, device=device))

    print(f"machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"torch {torch.__version__}, device {device}")  # fmt: skip
    results = {}
    for n in (1, 5):
        for name, fn in (("transformers", run_hf), ("clipseg-serve", run_ours)):
            times = timed(lambda fn=fn, n=n: fn(n), args.warmup, args.repeats)
            results[name, n] = statistics.median(times)
            print(
                f"{name:>14} {n} prompt(s)/image: median {results[name, n] * 1000:8.1f} ms, "
                f"{n / results[name, n]:6.2f} masks/s"
            )
    for n in (1, 5):
        ratio = results["transformers", n] / results["clipseg-serve", n]
        print(f"speed-up at {n} prompt(s)/image: {ratio:.2f}x")


if __name__ == "__main__":
    main()
