"""Benchmark: ONNX Runtime vs OpenVINO on the exported query graph (the vision tower to
the deepest tap, ~98 % of a 1-prompt call), full-size random weights, CPU.

Exports the graphs, quantises the query graph dynamically and statically (calibrated on
16 crops of the test photos) and times one 352x352 image through each runtime: ONNX
Runtime fp32 / dynamic int8 / static int8, OpenVINO fp32 / bf16 / static int8 (OpenVINO
runs ONNX Runtime's QDQ graph natively) — OpenVINO both at a fixed batch of 1 and with
the dynamic batch the service needs. This is the measurement behind "OpenVINO only if it
wins": see the README's Backends (CPU). Needs ``pip install openvino`` (not an extra).

    python bench/openvino_query.py --threads 2 [--repeats 15]

Never run as a test.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.backends import write_crops
from bench.model_vs_hf import timed
from clipseg_serve.model.config import get_variant
from clipseg_serve.model.onnx.export import export_graphs
from clipseg_serve.model.onnx.quantize import calibration_pixels, quantize_export
from clipseg_serve.model.weights.loader import build_random


def _median(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``repeats`` calls after 3 warm-up calls."""
    return statistics.median(timed(fn, 3, repeats))


def _graphs(folder: Path) -> dict[str, Path]:
    """query.onnx, its dynamic int8 and its static int8 (copied apart: same file name)."""
    model = build_random(get_variant("rd64-refined"), seed=0).eval()
    with contextlib.redirect_stdout(sys.stderr):
        export_graphs(model, folder)
    quantize_export(folder, "dynamic")
    shutil.copy(folder / "query.int8.onnx", folder / "query.dynamic.onnx")
    with tempfile.TemporaryDirectory() as crops:
        images = list(calibration_pixels(write_crops(Path(crops)), model.config, 16))
    quantize_export(folder, "static", images)
    return {
        "fp32": folder / "query.onnx",
        "dynamic int8": folder / "query.dynamic.onnx",
        "static int8": folder / "query.int8.onnx",
    }


def _ort(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"pixels": x})


def _openvino(path: Path, threads: int, precision: str, fixed: bool):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if fixed:
        model.reshape({"pixels": [1, 3, 352, 352]})
    config = {
        "INFERENCE_NUM_THREADS": str(threads),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": precision,
    }
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda x: request.infer({"pixels": x})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    import openvino

    x = np.random.default_rng(0).standard_normal((1, 3, 352, 352), dtype=np.float32)
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        graphs = _graphs(Path(tmp))
        for name, path in graphs.items():
            run = _ort(path, args.threads)
            rows.append((f"onnxruntime {name}", _median(lambda r=run: r(x), args.repeats)))
        plans = [
            ("fp32", "fp32", "f32"),
            ("bf16", "fp32", "bf16"),
            ("static int8", "static int8", "f32"),
            ("dynamic int8", "dynamic int8", "f32"),
        ]
        for label, graph, precision in plans:
            for fixed in (True, False):
                run = _openvino(graphs[graph], args.threads, precision, fixed)
                batch = "batch 1" if fixed else "dynamic batch"
                seconds = _median(lambda r=run: r(x), args.repeats)
                rows.append((f"openvino {label}, {batch}", seconds))
    print(f"onnxruntime vs openvino {openvino.__version__}, {args.threads} threads, query graph")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.1f} ms |")


if __name__ == "__main__":
    main()
