"""Run in a child process (under qemu's ``-cpu Haswell`` in test_int8_avx2.py): what the
onnx backend decides about an export's int8 graphs on the CPU it runs on, and how close
each int8 format's masks are to the export's fp32 graphs there. Prints one JSON object.

    python -m tests.training.int8_on_this_cpu EXPORT_FOLDER
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.onnx.fidelity import compare_backends
from clipseg_serve.model.onnx.int8_kernels import FORMATS, exact_formats, kernel_class
from clipseg_serve.model.onnx.runtime import OnnxClipSeg, read_manifest
from clipseg_serve.model.onnx.source import load_onnx


def main(folder: Path) -> dict:
    loaded = load_onnx(str(folder))  # dtype=auto: the start-up check where one is due
    spec = read_manifest(folder)["int8"]["check"]
    reference = Predictor(OnnxClipSeg(folder), device="cpu")
    candidates = {
        f.name: Predictor(OnnxClipSeg(folder, precision="int8", int8_format=f.name), device="cpu")
        for f in FORMATS
    }
    images = [folder / name for name in spec["images"]]
    with torch.inference_mode():
        figures = compare_backends(reference, candidates, images, spec["prompts"])
    return {
        "kernel_class": kernel_class(),
        "exact_formats": list(exact_formats()),
        "decision": loaded.int8.as_dict(),
        "runs": loaded.model.int8_format,
        "fidelity": {f.name: f.as_dict() for f in figures},
    }


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
