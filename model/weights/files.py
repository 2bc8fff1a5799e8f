"""Reading tensors from disk safely: safetensors, or torch.load with weights_only=True."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from clipseg_serve.model.errors import WeightsError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file; never unpickles arbitrary objects.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A TorchScript archive (how OpenAI distributes its
    CLIP weights) is read with ``torch.jit.load``, which runs no pickled Python.
    Common wrappers (``{"state_dict": ...}``, ``module.`` prefixes) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        try:
            obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:
            raise WeightsError(
                f"{path} is neither a tensors-only torch file nor a TorchScript archive "
                f"(refusing to unpickle arbitrary objects): {exc}"
            ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not contain a flat dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def sha256_of(paths: list[Path]) -> str:
    """Hex sha256 over the files' bytes in order (identifies the weights served)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
