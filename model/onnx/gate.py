"""The fidelity gate of an export folder: every backend and precision against fp32 PyTorch.

``check_export`` compares, on the user's images (``model.onnx.fidelity``):

* ``torch bfloat16`` — when this machine has native bf16 (what ``dtype=auto`` would run);
* ``onnx float32`` — the exported graphs;
* ``onnx int8`` — when the export has int8 graphs, in the format this machine's integer
  kernels compute exactly (``model.onnx.int8_kernels``). The verdict goes into the manifest
  as this kernel class's record (``int8.checks``, ``model.onnx.int8_checks``), and a few of
  the images with the prompts and the bar (``int8.check``) so that a machine of another
  class checks the graphs at start-up before its ``dtype=auto`` runs them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from clipseg_serve.model.device import cpu_bf16_support
from clipseg_serve.model.imaging.transforms import decode_image
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.onnx.fidelity import (
    DEFAULT_BAR,
    DEFAULT_PROMPTS,
    Fidelity,
    compare_backends,
)
from clipseg_serve.model.onnx.int8_checks import STORED_IMAGES, make_record, store_check_images
from clipseg_serve.model.onnx.int8_kernels import kernel_class
from clipseg_serve.model.onnx.runtime import MANIFEST, OnnxClipSeg, int8_format_for, read_manifest

__all__ = ["GateReport", "check_export"]


@dataclass(frozen=True)
class GateReport:
    """Every candidate's figures; the int8 verdict (None: the export has no int8), the
    kernel class and int8 format it holds for."""

    results: list[Fidelity]
    int8_recommended: bool | None
    kernel_class: str
    int8_format: str | None = None


def check_export(
    model: ClipSeg,
    folder: str | Path,
    images: Sequence[str | Path],
    prompts: Sequence[str] = DEFAULT_PROMPTS,
    bar: float = DEFAULT_BAR,
) -> GateReport:
    """Compare the candidates on ``images`` x ``prompts``; record the int8 verdict."""
    manifest = read_manifest(folder)
    model = model.float().cpu().eval()
    reference = Predictor(model, device="cpu", dtype="float32")
    candidates: dict[str, Predictor] = {}
    if cpu_bf16_support():
        candidates["torch bfloat16"] = Predictor(model, device="cpu", dtype="bfloat16")
    candidates["onnx float32"] = Predictor(OnnxClipSeg(folder), device="cpu")
    int8 = manifest.get("int8")
    fmt = int8_format_for(manifest).name if int8 else None
    if fmt:
        candidate = OnnxClipSeg(folder, precision="int8", int8_format=fmt)
        candidates["onnx int8"] = Predictor(candidate, device="cpu")
    with torch.inference_mode():
        results = compare_backends(reference, candidates, images, prompts)
    if not int8:
        return GateReport(results, None, kernel_class())
    figures = next(r for r in results if r.name == "onnx int8")
    record = make_record(figures, fmt, bar, len(images), "torch float32")
    kept = store_check_images(folder, [decode_image(i).image for i in images[:STORED_IMAGES]])
    int8["check"] = {"images": kept, "prompts": list(prompts), "bar": bar}
    int8["checks"] = {record["kernel_class"]: record}
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return GateReport(results, record["recommended"], record["kernel_class"], fmt)
