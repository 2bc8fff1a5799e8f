"""The fidelity gate of an export folder: every backend and precision against fp32 PyTorch.

``check_export`` compares, on the user's images (``model.fidelity``):

* ``torch bfloat16`` — when this machine has native bf16 (what ``dtype=auto`` would run);
* ``onnx float32`` — the exported graphs;
* ``onnx int8`` — when the export has int8 graphs; the gate's verdict goes into the
  manifest (``int8.recommended``, with the figures and the bar), and the onnx backend's
  ``dtype=auto`` runs int8 only when it is true.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .clipseg import ClipSeg
from .device import cpu_bf16_support
from .fidelity import DEFAULT_BAR, DEFAULT_PROMPTS, Fidelity, compare_backends, recommended
from .onnx_model import MANIFEST, OnnxClipSeg, read_manifest
from .predictor import Predictor

__all__ = ["GateReport", "check_export"]


@dataclass(frozen=True)
class GateReport:
    """Every candidate's figures; the int8 verdict (None: the export has no int8)."""

    results: list[Fidelity]
    int8_recommended: bool | None


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
    if int8:
        candidates["onnx int8"] = Predictor(OnnxClipSeg(folder, precision="int8"), device="cpu")
    with torch.inference_mode():
        results = compare_backends(reference, candidates, images, prompts)
    verdict = None
    if int8:
        figures = next(r for r in results if r.name == "onnx int8")
        verdict = recommended(figures, bar)
        int8.update(
            recommended=verdict, bar=bar, fidelity=figures.as_dict(), checked_images=len(images)
        )
        (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return GateReport(results, verdict)
