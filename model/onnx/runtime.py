"""The ONNX Runtime backend: ``model.onnx.export``'s split graphs behind ``ClipSeg``'s interface.

``OnnxClipSeg`` has the methods ``Predictor`` calls on a ``ClipSeg`` (``embed_phrases``,
``embed_images``, calling it for logits, ``config``, ``to``, ``eval``), so batching, prompts
and post-processing run unchanged: one query-graph pass per distinct image, the decoder
graph over every row. Tensors go in and come out as torch tensors on the predictor's
device; in between they are numpy arrays on the host (the CUDA / TensorRT providers copy
them up themselves).

Precision is chosen per export folder: ``float32`` (the exported graphs), or ``int8`` (the
quantised vision graphs that ``model.onnx.quantize`` wrote, with the fp32 text encoder and
decoder), in the int8 format this machine's integer kernels compute exactly
(``model.onnx.int8_kernels``: ``query.int8.onnx`` where u8 x s8 is exact, the 7-bit
``query.int8-u8s7.onnx`` on AVX2 and AVX-512 without VNNI).

Imports onnxruntime only when a model is built (the ``onnx`` extra).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.network.text import Template, embed_phrases
from clipseg_serve.model.onnx.int8_kernels import (
    Int8Format,
    choose_format,
    format_named,
    kernel_class,
)

__all__ = [
    "MANIFEST",
    "PRECISIONS",
    "LoadedOnnx",
    "OnnxClipSeg",
    "graph_path",
    "int8_format_for",
    "int8_formats",
    "is_onnx_export",
    "read_manifest",
]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "clipseg-serve split ONNX graphs"
PRECISIONS = ("float32", "int8")
#: The graphs int8 replaces (the vision tower); the text encoder and decoder stay fp32.
INT8_GRAPHS = ("query", "visual")


def is_onnx_export(path: str | Path) -> bool:
    """True for a folder ``clipseg-export`` wrote (it has a ``manifest.json``)."""
    return (Path(path) / MANIFEST).is_file()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The export's manifest; a ``WeightsError`` when it is missing or not ours."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{folder} is not a clipseg-export folder: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise WeightsError(f"{path} was not written by clipseg-export")
    return manifest


def graph_path(folder: str | Path, graph: str, int8_format: str | None = None) -> Path:
    """The file of ``graph``: fp32, or in ``int8_format`` (a ``model.onnx.int8_kernels``
    format's name; int8 only replaces the vision graphs)."""
    if int8_format is not None and graph in INT8_GRAPHS:
        return Path(folder) / f"{graph}{format_named(int8_format).suffix}.onnx"
    return Path(folder) / f"{graph}.onnx"


def int8_formats(manifest: dict[str, Any]) -> list[str]:
    """The int8 formats an export holds, by its manifest ([] without int8 graphs). An
    export from before formats were recorded holds ``u8s8`` only."""
    int8 = manifest.get("int8")
    if not int8:
        return []
    return list(int8.get("formats") or {"u8s8": None})


def int8_format_for(manifest: dict[str, Any]) -> Int8Format:
    """The format of the export's int8 graphs that this machine computes exactly; a
    ``WeightsError`` when the export has none (or none of its formats is exact here)."""
    formats = int8_formats(manifest)
    if not formats:
        raise WeightsError("the export has no int8 graphs in its manifest (export with --int8)")
    chosen = choose_format(formats)
    if chosen is None:
        raise WeightsError(
            f"none of the export's int8 formats ({', '.join(formats)}) is exact on this "
            f"CPU's integer kernels ({kernel_class()}): re-export it with this version"
        )
    return chosen


def providers_for(device: torch.device) -> list[str | tuple[str, dict[str, Any]]]:
    """ONNX Runtime providers for a torch device, best first, among those installed.

    CUDA devices get TensorRT (when the build has it) and CUDA, on the device's index,
    then the CPU for any node they do not take; a CPU device gets the CPU provider only.
    """
    import onnxruntime as ort

    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    available = set(ort.get_available_providers())
    index = {"device_id": device.index or 0}
    wanted = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    chosen: list[str | tuple[str, dict[str, Any]]] = [
        (name, index) for name in wanted if name in available
    ]
    if not chosen:
        raise ValueError(
            f"the onnx backend on {device} needs onnxruntime-gpu (installed providers: "
            f"{', '.join(sorted(available))})"
        )
    return [*chosen, "CPUExecutionProvider"]


def _session_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: a spinning pool takes the cores that decode
    # and encode the service's other requests between model calls.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@dataclass
class LoadedOnnx:
    """Where an ONNX model came from (for /info and logs), like ``LoadedModel``."""

    model: OnnxClipSeg
    kind: str  # "onnx": an export folder; "onnx-exported": exported from weights at start
    source: str
    files: list[Path] = field(default_factory=list)
    #: Whether int8 runs here and why (``model.onnx.int8_checks.Int8Decision``).
    int8: Any = None


class OnnxClipSeg:
    """An export folder run by ONNX Runtime: a ``Backend`` (``model.inference.backend``),
    like ``ClipSeg``.

    Args:
        folder: what ``clipseg-export`` wrote (graphs + ``manifest.json``).
        precision: "float32" or "int8" (the export must hold the int8 graphs).
        int8_format: which int8 graphs (``model.onnx.int8_kernels``); default: the fastest
            this machine's kernels compute exactly.
        device: where inputs come from and outputs go (CPU, or CUDA with onnxruntime-gpu).
        threads: ONNX Runtime's intra-op threads (default: torch's thread count).
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        precision: str = "float32",
        int8_format: str | None = None,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        self.folder = Path(folder)
        self.manifest = read_manifest(folder)
        self.config = ClipSegConfig.from_dict(self.manifest["config"])
        self.precision = precision
        self.device = torch.device(device)
        #: The int8 format of the vision graphs (None in float32).
        self.int8_format: str | None = None
        if precision == "int8":
            chosen = format_named(int8_format) if int8_format else int8_format_for(self.manifest)
            self.int8_format = chosen.name
            if self.int8_format not in int8_formats(self.manifest):
                raise WeightsError(f"{folder} has no int8 graphs in format {self.int8_format!r}")
        #: None: ONNX Runtime compiles its graphs itself.
        self.compiled_tower = None
        #: Whether int8 runs here and why (``model.onnx.int8_checks.Int8Decision``), set
        #: by ``load_onnx``; None when built directly.
        self.int8_decision: Any = None
        self.files = [graph_path(folder, g, self.int8_format) for g in self.manifest["graphs"]]
        missing = [f.name for f in self.files if not f.is_file()]
        if missing:
            hint = " (export with --int8)" if precision == "int8" else ""
            raise WeightsError(f"{folder} has no {', '.join(missing)}{hint}")
        options = _session_options(threads or torch.get_num_threads())
        wanted = providers_for(self.device)
        self.sessions = {
            graph: ort.InferenceSession(str(path), options, providers=wanted)
            for graph, path in zip(self.manifest["graphs"], self.files, strict=True)
        }
        #: The providers ONNX Runtime enabled (for /info), best first.
        self.providers: list[str] = self.sessions["query"].get_providers()
        self.inputs = {g: spec["inputs"] for g, spec in self.manifest["graphs"].items()}

    # --------------------------------------------------------------- the Backend
    backend_name = "onnx"

    @property
    def fixed_precision(self) -> str:
        """The graphs' arithmetic: no autocast around them."""
        return self.precision

    @property
    def home_device(self) -> torch.device:
        """Its providers were chosen for this device."""
        return self.device

    def description(self) -> dict[str, Any]:
        """The providers ONNX Runtime enabled, and whether int8 runs here and why."""
        decision = self.int8_decision
        return {
            "providers": self.providers,
            "int8": decision.as_dict() if decision is not None else None,
        }

    def to(self, device: torch.device | str) -> OnnxClipSeg:
        """Outputs go to ``device`` from now on (the providers were chosen at load)."""
        device = torch.device(device)
        if device.type != self.device.type:
            raise ValueError(f"this ONNX model was loaded for {self.device}, not {device}")
        self.device = device
        return self

    def eval(self) -> OnnxClipSeg:
        return self

    def _run(self, graph: str, *arrays: np.ndarray) -> list[np.ndarray]:
        feeds = dict(zip(self.inputs[graph], arrays, strict=True))
        return self.sessions[graph].run(None, feeds)

    def _out(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self.device)

    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 tokens [N, L] (L <= the context length) -> float32 [N, D]."""
        return self._out(self._run("text", _host(tokens, np.int64))[0])

    def embed_phrases(
        self, phrases: Sequence[str], template: Template | str = Template.NONE
    ) -> torch.Tensor:
        """Conditioning vectors for user phrases: [N] -> float32 [N, D] (as ``ClipSeg``)."""
        return embed_phrases(
            self.embed_text, phrases, template, self.config.backbone.context_length
        )

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings: normalised float32 [K, 3, S, S] -> float32 [K, D]."""
        return self._out(self._run("visual", _host(images, np.float32))[0])

    def __call__(
        self,
        images: torch.Tensor,
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits float32 [P, S, S]: one query-graph pass per image, the decoder per row
        (images [B, 3, S, S] normalised; conditionals [P, D]; image_index [P] or None)."""
        taps = self._run("query", _host(images, np.float32))
        if image_index is None:
            index = np.arange(conditionals.shape[0], dtype=np.int64)
        else:
            index = _host(image_index, np.int64)
        logits = self._run("decoder", *taps, _host(conditionals, np.float32), index)[0]
        return self._out(logits)


def _host(tensor: torch.Tensor, dtype: type[np.generic]) -> np.ndarray:
    """A contiguous host array of ``tensor`` in ``dtype`` (no copy when it already is)."""
    return np.ascontiguousarray(tensor.detach().cpu().numpy(), dtype=dtype)
