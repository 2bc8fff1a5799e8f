"""int8 vision graphs for an export folder, by ONNX Runtime's quantisation tools.

Only the vision tower is quantised (``query.onnx`` and ``visual.onnx`` ->
``*.int8.onnx``): it is ~98 % of a 1-prompt call's compute. The text encoder (cached per
phrase) and the decoder (~2 %) stay fp32, so prompts and masks lose nothing there.

Each method writes the graphs in every format of ``model.onnx.int8_kernels`` (``u8s8``: full
int8 weights, where the CPU's kernels are exact; ``u8s7``: 7-bit weights, exact on every
kernel, for AVX2 and AVX-512 without VNNI); each machine loads the one it runs exactly.

* ``dynamic``: int8 weights (per output channel), activations quantised per call from
  their own range — no data needed.
* ``static``: activations quantised with fixed ranges calibrated on the user's images
  (QDQ format, 99.99th-percentile ranges, collected one image at a time).
  ``calibration_pixels`` reads a folder of images through the model's own preprocessing.

Whether int8 is good enough is measured on masks, not embeddings (``model.onnx.fidelity``);
the manifest's ``int8`` entry records how the graphs were made, their files per format,
and, once checked, the verdict of the kernel class they were checked on
(``model.onnx.int8_checks``). Imports onnxruntime only when called (the ``onnx`` extra).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.errors import ClipSegError
from clipseg_serve.model.imaging.image_formats import image_files
from clipseg_serve.model.imaging.transforms import decode_image, normalize_pixels, to_model_pixels
from clipseg_serve.model.onnx.int8_kernels import FORMATS, Int8Format
from clipseg_serve.model.onnx.runtime import INT8_GRAPHS, MANIFEST, graph_path, read_manifest

__all__ = ["METHODS", "calibration_pixels", "quantize_export"]

METHODS = ("dynamic", "static")
#: Matrix products carry the tower's compute; the patch convolution stays fp32.
_OPS = ["MatMul", "Gemm"]
#: Static ranges cover this percentile of each tensor's values (see ``_static``).
_PERCENTILE = 99.99


def calibration_pixels(
    folder: str | Path, config: ClipSegConfig, limit: int = 32
) -> Iterator[np.ndarray]:
    """Up to ``limit`` images of ``folder`` (sorted by name) as the query graph's input:
    normalised float32 [1, 3, S, S]. Files that are not images are skipped."""
    taken = 0
    for path in image_files(folder):
        if taken >= limit:
            return
        try:
            decoded = decode_image(path, draft_size=config.input_size)
        except ClipSegError:
            continue
        pixels = to_model_pixels(decoded.image, config.input_size)[None]
        yield normalize_pixels(pixels, config.mean, config.std).numpy()
        taken += 1


def quantize_export(
    folder: str | Path,
    method: str = "dynamic",
    calibration: Iterable[np.ndarray] | None = None,
    formats: Iterable[Int8Format] = FORMATS,
) -> dict[str, Any]:
    """Write the int8 vision graphs (``query`` and ``visual``) of an export folder in each
    of ``formats``; record them in its manifest (``int8``: method, graphs, files per
    format, calibration images, no checks yet). Returns that entry.

    ``calibration``: the static method's inputs, normalised float32 [1, 3, S, S] each
    (``calibration_pixels``); at least one.
    """
    if method not in METHODS:
        raise ValueError(f"unknown int8 method {method!r}; use one of {METHODS}")
    manifest = read_manifest(folder)
    images = list(calibration or ()) if method == "static" else []
    if method == "static" and not images:
        raise ValueError("static int8 needs calibration images (a folder with images in it)")
    files: dict[str, dict[str, str]] = {}
    for fmt in formats:
        files[fmt.name] = {}
        for graph in INT8_GRAPHS:
            source, target = graph_path(folder, graph), graph_path(folder, graph, fmt.name)
            if method == "dynamic":
                _dynamic(source, target, fmt)
            else:
                _static(source, target, fmt, images, manifest["graphs"][graph]["inputs"][0])
            files[fmt.name][graph] = target.name
    entry = {
        "method": method,
        "graphs": list(INT8_GRAPHS),
        "formats": files,
        "calibration_images": len(images),
        "checks": {},
    }
    manifest["int8"] = entry
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return entry


def _dynamic(source: Path, target: Path, fmt: Int8Format) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        source,
        target,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=fmt.reduce_range,
        op_types_to_quantize=_OPS,
    )


class _Reader:
    """ONNX Runtime's calibration data reader over a list of input arrays, in ranges:
    with ``CalibStridedMinMax`` the calibrator reads one range at a time and merges its
    histograms, so it holds one image's activations at once, not every image's."""

    def __init__(self, name: str, images: list[np.ndarray]) -> None:
        self.name = name
        self.images = images
        self.set_range(0, len(images))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.pending = iter(self.images[start_index:end_index])

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.pending, None)
        return None if image is None else {self.name: image}


def _static(
    source: Path, target: Path, fmt: Int8Format, images: list[np.ndarray], input_name: str
) -> None:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        # ONNX Runtime's recommended preparation: shapes inferred and the graph optimised,
        # so the calibrator sees the nodes the quantised graph will have.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            prepared,
            target,
            _Reader(input_name, images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=fmt.reduce_range,
            op_types_to_quantize=_OPS,
            # Percentile ranges (99.99th): CLIP's activations have rare huge outliers, and
            # min/max ranges spent the int8 steps on them (trained tiny model, 12 images:
            # mean mask IoU 0.943 with min/max, 0.955 with percentiles, against fp32).
            calibrate_method=CalibrationMethod.Percentile,
            # Despite its name, ONNX Runtime reads the data in strides of this many images
            # for every calibrator, merging as it goes: one image's activations at a time
            # (ViT-B/16: 2.6 GB peak at 8 or 32 images; all at once: 7.0 GB at 8).
            extra_options={"CalibPercentile": _PERCENTILE, "CalibStridedMinMax": 1},
        )
