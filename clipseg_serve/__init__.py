"""clipseg-serve: CLIPSeg as a library, an HTTP service and a training package.

One import root over four packages: ``clipseg_serve.model`` (the library: network,
weights, images in, masks out, ONNX), ``clipseg_serve.service`` (the HTTP service),
``clipseg_serve.training`` (retraining the decoder) and ``clipseg_serve.label``
(labelling datasets). The library's everyday names are
here::

    from clipseg_serve import PostProcess, load_predictor

    predictor = load_predictor("random:tiny", device="cpu")
    result = predictor.segment("photo.jpg", ["a cat"], post=PostProcess(min_area=64))

Attributes load on first use (PEP 562), so ``import clipseg_serve`` — and every command's
``--help`` — imports no torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

# In a checkout the subpackages are the repository's top-level folders (model/, service/,
# training/: the mapping pyproject.toml's package-dir gives a wheel), so any checkout
# runs as itself with PYTHONPATH pointing at it — the benchmarks serve older ones.
_CHECKOUT = Path(__file__).resolve().parent.parent
if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "model" / "__init__.py").is_file():
    __path__.append(str(_CHECKOUT))

#: public name -> the module that defines it
_EXPORTS = {
    "Predictor": "clipseg_serve.model.inference.predictor",
    "load_predictor": "clipseg_serve.model.backends",
    "load_model": "clipseg_serve.model.weights.loader",
    "PostProcess": "clipseg_serve.model.masks.postprocess",
    "Segmentation": "clipseg_serve.model.inference.batch",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from clipseg_serve.model.backends import load_predictor as load_predictor
    from clipseg_serve.model.inference.batch import Segmentation as Segmentation
    from clipseg_serve.model.inference.predictor import Predictor as Predictor
    from clipseg_serve.model.masks.postprocess import PostProcess as PostProcess
    from clipseg_serve.model.weights.loader import load_model as load_model


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipseg_serve' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
