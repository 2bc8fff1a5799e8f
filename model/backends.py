"""Choosing a backend: a ``Predictor`` for a weights source, on torch or ONNX Runtime.

The only module that knows both backends (``model.network.clipseg`` and
``model.onnx``); everything else sees the ``Backend`` protocol.
"""

from __future__ import annotations

from typing import Any

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.weights.loader import load_model

BACKENDS = ("torch", "onnx")


def load_predictor(
    source: str,
    *,
    variant: str | None = None,
    backbone: str = "openai",
    backend: str = "torch",
    **predictor_args: Any,
) -> Predictor:
    """Load weights from any source ``load_model`` understands and wrap them.

    ``backend``: "torch", or "onnx" (ONNX Runtime; ``source`` may also be a
    ``clipseg-export`` folder, and other sources are exported at load: see
    ``model.onnx.source``). ``predictor_args``: ``Predictor``'s keyword arguments.
    """
    if backend == "onnx":
        # Imported here: ONNX Runtime is an optional extra.
        from clipseg_serve.model.onnx.source import load_onnx, resolve_onnx_device

        device = resolve_onnx_device(predictor_args.get("device", "auto"))
        onnx = load_onnx(
            source,
            dtype=predictor_args.get("dtype", "auto"),
            device=device,
            variant=variant,
            backbone=backbone,
        )
        predictor_args |= {"dtype": onnx.model.precision, "device": str(device)}
        return Predictor(onnx.model, loaded=onnx, owns_model=True, **predictor_args)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}; use {' or '.join(BACKENDS)}")
    loaded = load_model(source, variant=variant, backbone=backbone)
    return Predictor(loaded.model, loaded=loaded, owns_model=True, **predictor_args)
