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
from pathlib import Path

import torch

from clipseg_serve.model.device import resolve_device
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.onnx.int8_checks import Int8Decision, decide
from clipseg_serve.model.onnx.int8_kernels import Int8Format, choose_format, kernel_class
from clipseg_serve.model.onnx.runtime import (
    PRECISIONS,
    LoadedOnnx,
    OnnxClipSeg,
    int8_formats,
    is_onnx_export,
    read_manifest,
)

log = logging.getLogger(__name__)

__all__ = ["check_dtype", "int8_decision", "load_onnx", "resolve_onnx_device"]


def check_dtype(dtype: str) -> None:
    """The onnx backend runs ``auto``, ``float32`` or ``int8``; a ``ValueError`` else."""
    if dtype != "auto" and dtype not in PRECISIONS:
        raise ValueError(f"the onnx backend runs float32 or int8 (or auto), not {dtype!r}")


def int8_decision(dtype: str, folder: str | Path, manifest: dict) -> Int8Decision:
    """Whether an export runs int8 here for ``dtype`` (``auto``: ``model.onnx.int8_checks``
    decides, checking at start-up when this kernel class has no verdict yet)."""
    check_dtype(dtype)
    if dtype == "auto":
        return decide(folder, manifest)
    return _asked_for(dtype, choose_format(int8_formats(manifest)) if dtype == "int8" else None)


def _asked_for(dtype: str, fmt: Int8Format | None) -> Int8Decision:
    """The decision for an explicit ``float32`` or ``int8`` (in ``fmt``): not gated."""
    why = f"dtype {dtype} was asked for (the fidelity check is not consulted)"
    return Int8Decision(kernel_class(), fmt and fmt.name, dtype == "int8", why)


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
        decision = int8_decision(dtype, source, read_manifest(source))
        model = OnnxClipSeg(
            source,
            precision="int8" if decision.use_int8 else "float32",
            int8_format=decision.format if decision.use_int8 else None,
            device=device,
            threads=threads,
        )
        if variant is not None and model.config.variant != variant:
            raise WeightsError(f"{source} holds {model.config.variant!r}, not {variant!r}")
        model.int8_decision = decision
        return LoadedOnnx(model, "onnx", str(source), list(model.files), decision)
    check_dtype(dtype)
    from clipseg_serve.model.onnx.export import export_graphs
    from clipseg_serve.model.weights.loader import load_model

    loaded = load_model(source, variant=variant, backbone=backbone)
    log.info(
        "exporting %s to ONNX for this run (clipseg-export once, and point the weights "
        "at its folder, to skip this at start)",
        loaded.source,
    )
    fmt = choose_format() if dtype == "int8" else None
    with tempfile.TemporaryDirectory(prefix="clipseg-onnx-") as tmp:
        # The exporter reports its progress on stdout: keep stdout for the caller's output.
        with contextlib.redirect_stdout(sys.stderr):
            export_graphs(loaded.model.float().cpu(), tmp)
        if fmt is not None:
            from clipseg_serve.model.onnx.quantize import quantize_export

            # Only the format this machine computes exactly: the folder lives for this run.
            quantize_export(tmp, "dynamic", formats=(fmt,))
        # ONNX Runtime reads each graph whole at session creation: the folder can go.
        model = OnnxClipSeg(
            tmp,
            precision="int8" if fmt else "float32",
            int8_format=fmt and fmt.name,
            device=device,
            threads=threads,
        )
    if fmt is not None:
        decision = _asked_for(dtype, fmt)
    else:
        why = "weights exported at start have no fidelity check (clipseg-export --check)"
        decision = Int8Decision(kernel_class(), None, False, why)
    model.int8_decision = decision
    return LoadedOnnx(model, "onnx-exported", loaded.source, list(loaded.files), decision)
