"""Where the onnx backend's graphs come from: an export folder, or any weights exported
at load time.

An export folder (``clipseg-export`` output) is loaded as it is. Any other weights source
is loaded with PyTorch, exported into a temporary folder (and, for int8, quantised
dynamically), loaded into ONNX Runtime and the folder removed: convenient, but it costs the
export at every start (~35 s for ViT-B/16 on 2 cores), so deployments export once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile

import torch

from .device import resolve_device
from .errors import WeightsError
from .onnx_model import PRECISIONS, LoadedOnnx, OnnxClipSeg, is_onnx_export, read_manifest

log = logging.getLogger(__name__)

__all__ = ["load_onnx", "resolve_onnx_device", "resolve_precision"]


def resolve_precision(dtype: str, manifest: dict | None) -> str:
    """The onnx backend's precision for a ``dtype`` argument: "float32" or "int8".

    ``auto`` takes int8 only when the export's int8 graphs passed the fidelity gate
    (``manifest["int8"]["recommended"]``); fp32 otherwise.
    """
    if dtype == "auto":
        int8 = (manifest or {}).get("int8") or {}
        return "int8" if int8.get("recommended") is True else "float32"
    if dtype not in PRECISIONS:
        raise ValueError(f"the onnx backend runs float32 or int8 (or auto), not {dtype!r}")
    return dtype


def resolve_onnx_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when torch sees a GPU and ONNX Runtime has a GPU provider (the
    onnxruntime-gpu build), else the CPU; anything else as ``resolve_device``."""
    if name != "auto":
        return resolve_device(name)
    import onnxruntime as ort

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    usable = torch.cuda.is_available() and gpu & set(ort.get_available_providers())
    return torch.device("cuda" if usable else "cpu")


def load_onnx(
    source: str,
    *,
    dtype: str = "auto",
    device: torch.device | str = "cpu",
    variant: str | None = None,
    backbone: str = "openai",
    threads: int | None = None,
) -> LoadedOnnx:
    """An ``OnnxClipSeg`` for ``source`` (an export folder or any ``load_model`` source)."""
    if is_onnx_export(source):
        precision = resolve_precision(dtype, read_manifest(source))
        model = OnnxClipSeg(source, precision=precision, device=device, threads=threads)
        if variant is not None and model.config.variant != variant:
            raise WeightsError(f"{source} holds {model.config.variant!r}, not {variant!r}")
        return LoadedOnnx(model, "onnx", str(source), list(model.files))
    precision = resolve_precision(dtype, None)
    from .export import export_graphs
    from .weights.loader import load_model

    loaded = load_model(source, variant=variant, backbone=backbone)
    log.info(
        "exporting %s to ONNX for this run (clipseg-export once, and point the weights "
        "at its folder, to skip this at start)",
        loaded.source,
    )
    with tempfile.TemporaryDirectory(prefix="clipseg-onnx-") as tmp:
        # The exporter reports its progress on stdout: keep stdout for the caller's output.
        with contextlib.redirect_stdout(sys.stderr):
            export_graphs(loaded.model.float().cpu(), tmp)
        if precision == "int8":
            from .quantize import quantize_export

            quantize_export(tmp, "dynamic")
        # ONNX Runtime reads each graph whole at session creation: the folder can go.
        model = OnnxClipSeg(tmp, precision=precision, device=device, threads=threads)
    return LoadedOnnx(model, "onnx-exported", loaded.source, list(loaded.files))
