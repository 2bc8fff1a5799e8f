"""Split ONNX graphs of a ``ClipSeg`` model, so that one backbone pass still serves N prompts.

Four graphs, each with a dynamic batch (the decoder: dynamic rows; the text encoder: also a
dynamic sequence length), exported with torch's dynamo exporter (``torch.onnx.export(...,
dynamo=True)``, opset ``OPSET``):

* ``query.onnx`` — normalised pixels float32 [B, 3, S, S] -> the decoder's reduced taps,
  deepest first, each float32 [B, 1 + g*g, R]: the vision tower up to the deepest
  extracted block and the per-image projections (``ClipSeg.image_features`` +
  ``ClipSegDecoder.reduce``).
* ``visual.onnx`` — normalised support pixels [K, 3, S, S] -> CLIP image embeddings [K, D]
  (the full tower, pooled and projected: ``ClipSeg.embed_images``).
* ``text.onnx`` — int64 tokens [N, L], L <= the context length -> embeddings [N, D]
  (``ClipSeg.embed_text``; padding to the batch's longest text gives the same vectors).
* ``decoder.onnx`` — the taps, conditionals float32 [P, D] and int64 image_index [P] ->
  logits float32 [P, S, S] (``ClipSegDecoder.forward``).

``manifest.json`` records the model's config, the graphs' input and output names, the
opset and the versions that wrote them. ``check_graphs`` runs each graph with ONNX Runtime
against the PyTorch module on fresh random inputs (other batch sizes than the export's).

Imports torch; onnx, onnxscript and onnxruntime only when called (the ``onnx`` extra).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.network.text import tokenize

__all__ = ["GRAPHS", "OPSET", "GraphCheck", "check_graphs", "export_graphs"]

#: ONNX opset of every graph (ONNX Runtime >= 1.14 runs it; the dynamo exporter's own).
OPSET = 18
GRAPHS = ("query", "visual", "text", "decoder")
#: Upper bounds the exporter is told for the dynamic sizes (not limits in practice).
_MAX_BATCH, _MAX_ROWS, _MAX_TEXTS = 1024, 8192, 8192


class _Query(nn.Module):
    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.decoder.reduce(self.model.image_features(pixels)))


class _Visual(nn.Module):
    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.embed_images(pixels)


class _Text(nn.Module):
    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embed_text(tokens)


class _Decoder(nn.Module):
    """``decoder(taps..., conditionals, image_index)``: the taps as separate inputs."""

    def __init__(self, model: ClipSeg) -> None:
        super().__init__()
        self.model = model
        self.taps = len(model.config.extract_layers)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        taps, conditionals, index = inputs[: self.taps], inputs[self.taps], inputs[-1]
        return self.model.decoder(list(taps), conditionals, index)


def _sample_inputs(model: ClipSeg, batch: int, rows: int, seed: int) -> dict[str, tuple]:
    """Random inputs of every graph (pixels, tokens, taps, conditionals, index)."""
    cfg = model.config
    generator = torch.Generator().manual_seed(seed)
    size = cfg.input_size
    pixels = torch.randn(batch, 3, size, size, generator=generator)
    texts = ["a cat", "the red mug on the table", "sky"][: max(1, min(3, rows))]
    tokens = tokenize(texts, cfg.backbone.context_length)
    with torch.inference_mode():
        taps = tuple(t.clone() for t in _Query(model)(pixels))
    conditionals = torch.randn(rows, cfg.backbone.embed_dim, generator=generator)
    index = torch.randint(0, batch, (rows,), generator=generator)
    return {
        "query": (pixels,),
        "visual": (pixels,),
        "text": (tokens,),
        "decoder": (*taps, conditionals, index),
    }


def _names(model: ClipSeg) -> dict[str, tuple[list[str], list[str]]]:
    taps = [f"tap{i}" for i in range(len(model.config.extract_layers))]
    return {
        "query": (["pixels"], taps),
        "visual": (["pixels"], ["embeddings"]),
        "text": (["tokens"], ["embeddings"]),
        "decoder": ([*taps, "conditionals", "image_index"], ["logits"]),
    }


def _dynamic_shapes(model: ClipSeg) -> dict[str, tuple]:
    dim = torch.export.Dim
    batch = dim("batch", min=1, max=_MAX_BATCH)
    rows = dim("rows", min=1, max=_MAX_ROWS)
    texts = dim("texts", min=1, max=_MAX_TEXTS)
    length = dim("length", min=2, max=model.config.backbone.context_length)
    taps = len(model.config.extract_layers)
    return {
        "query": ({0: batch},),
        "visual": ({0: batch},),
        "text": ({0: texts, 1: length},),
        # *inputs: one entry, the tuple of every input's dynamic dims
        "decoder": (tuple([{0: batch}] * taps + [{0: rows}, {0: rows}]),),
    }


def _modules(model: ClipSeg) -> dict[str, nn.Module]:
    """The graphs' modules, in eval mode (a wrapper is built in training mode)."""
    modules = {
        "query": _Query(model),
        "visual": _Visual(model),
        "text": _Text(model),
        "decoder": _Decoder(model),
    }
    return {graph: module.eval() for graph, module in modules.items()}


def export_graphs(model: ClipSeg, folder: str | Path, *, opset: int = OPSET) -> dict[str, Any]:
    """Write the four graphs and ``manifest.json`` into ``folder``; return the manifest.

    The module is exported in fp32 on the CPU (a copy's device is not changed: the caller's
    module must already be there, ``model.float().cpu()``).
    """
    import onnx  # fail early, with the extra's name, if it is missing

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    # int8 graphs of an earlier export into this folder belong to other weights.
    for stale in out.glob("*.int8*.onnx"):
        stale.unlink()
    model = model.eval()
    samples = _sample_inputs(model, batch=2, rows=3, seed=0)
    names, shapes = _names(model), _dynamic_shapes(model)
    for graph, module in _modules(model).items():
        inputs, outputs = names[graph]
        torch.onnx.export(
            module,
            samples[graph],
            str(out / f"{graph}.onnx"),
            dynamo=True,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes[graph],
            external_data=False,
        )
    manifest = {
        "format": "clipseg-serve split ONNX graphs",
        "opset": opset,
        "config": asdict(model.config),  # json writes its tuples as lists
        "graphs": {g: {"inputs": names[g][0], "outputs": names[g][1]} for g in GRAPHS},
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


@dataclass(frozen=True)
class GraphCheck:
    """One graph run by ONNX Runtime against PyTorch: the largest absolute difference over
    its outputs and the largest absolute output value (for scale)."""

    graph: str
    max_abs_diff: float
    max_abs_value: float


def check_graphs(
    model: ClipSeg, folder: str | Path, *, batch: int = 3, rows: int = 5, seed: int = 1
) -> list[GraphCheck]:
    """Each graph in ``folder`` (ONNX Runtime, CPU provider) vs ``model`` on new inputs."""
    import onnxruntime as ort

    samples = _sample_inputs(model.eval(), batch=batch, rows=rows, seed=seed)
    names = _names(model)
    checks = []
    for graph, module in _modules(model).items():
        session = ort.InferenceSession(
            str(Path(folder) / f"{graph}.onnx"), providers=["CPUExecutionProvider"]
        )
        feeds = {
            name: tensor.numpy()
            for name, tensor in zip(names[graph][0], samples[graph], strict=True)
        }
        got = session.run(None, feeds)
        with torch.inference_mode():
            expected = module(*samples[graph])
        expected = expected if isinstance(expected, tuple) else (expected,)
        diff = max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected, strict=True))
        scale = max(float(np.abs(e.numpy()).max()) for e in expected)
        checks.append(GraphCheck(graph, diff, scale))
    return checks
