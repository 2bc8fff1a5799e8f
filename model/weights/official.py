"""The official CLIPSeg decoder files (rd64-uni.pth, rd64-uni-refined.pth, rd16-uni.pth).

They hold the decoder only (some copies also carry the CLIP model under ``clip_model.``,
in OpenAI naming, which is also open_clip's). Our decoder uses the official parameter
names, so conversion is a prefix; the official model's unused ``reduce`` layer and the
``model.`` duplicate of the vision tower are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from clipseg_serve.model.config import ClipSegConfig, get_variant
from clipseg_serve.model.errors import WeightsError


def variant_of_official(state: Mapping[str, torch.Tensor]) -> str:
    """``rd64-refined`` / ``rd64`` / ``rd16`` ... from the decoder's tensors."""
    if "film_mul.weight" not in state:
        raise WeightsError("not an official CLIPSeg decoder file: no 'film_mul.weight' key")
    reduce_dim = int(state["film_mul.weight"].shape[0])
    refined = "trans_conv.0.weight" in state
    return f"rd{reduce_dim}" + ("-refined" if refined else "")


def config_for_official(state: Mapping[str, torch.Tensor], variant: str | None) -> ClipSegConfig:
    """The registered config matching the file; a different requested variant is an error."""
    found = variant_of_official(state)
    if variant is not None and variant != found:
        raise WeightsError(f"the decoder file is variant {found!r}, not the requested {variant!r}")
    return get_variant(found)


def split_official_state_dict(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoder tensors keyed for ``ClipSegDecoder``, CLIP tensors keyed for open_clip)."""
    decoder: dict[str, torch.Tensor] = {}
    clip: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("clip_model."):
            clip[key.removeprefix("clip_model.")] = value
        elif key.startswith("model.") or key.startswith("reduce."):
            continue  # duplicate of clip_model.visual / unused layer of the official model
        else:
            decoder[key] = value
    return decoder, clip
