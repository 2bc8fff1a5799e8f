"""HuggingFace transformers CLIPSeg checkpoints (``CIDAS/clipseg-rd64-refined`` & co).

The module is built from the checkpoint's ``config.json`` first, then the weights are
converted key by key (separate q/k/v projections are fused into PyTorch's in_proj) and
loaded strictly. transformers itself is not needed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from clipseg_serve.model.config import VIT_B_16, BackboneConfig, ClipSegConfig
from clipseg_serve.model.errors import WeightsError

_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def _sub_config(hf: Mapping[str, Any], name: str, defaults: dict[str, Any]) -> dict[str, Any]:
    # Old checkpoints carry ``<name>_config_dict``, which transformers lets override.
    merged = {
        **defaults,
        **(hf.get(f"{name}_config") or {}),
        **(hf.get(f"{name}_config_dict") or {}),
    }
    if merged["hidden_act"] != "quick_gelu":
        act = merged["hidden_act"]
        raise WeightsError(f"{name} tower uses {act!r}; only quick_gelu is supported")
    if abs(float(merged["layer_norm_eps"]) - 1e-5) > 1e-12:
        raise WeightsError(f"{name} tower layer_norm_eps {merged['layer_norm_eps']} != 1e-5")
    return merged


def config_from_hf(hf: Mapping[str, Any]) -> ClipSegConfig:
    """Our config for a transformers ``CLIPSegConfig`` dict (a checkpoint's config.json)."""
    model_type = hf.get("model_type")
    if model_type not in (None, "clipseg"):
        raise WeightsError(f"config.json describes a {model_type!r} model, not 'clipseg'")
    text = _sub_config(hf, "text", _TEXT_DEFAULTS)
    vision = _sub_config(hf, "vision", _VISION_DEFAULTS)
    backbone = BackboneConfig(
        name="custom",
        embed_dim=int(hf.get("projection_dim", 512)),
        image_size=int(vision["image_size"]),
        patch_size=int(vision["patch_size"]),
        width=int(vision["hidden_size"]),
        layers=int(vision["num_hidden_layers"]),
        heads=int(vision["num_attention_heads"]),
        mlp_ratio=vision["intermediate_size"] / vision["hidden_size"],
        text_width=int(text["hidden_size"]),
        text_heads=int(text["num_attention_heads"]),
        text_layers=int(text["num_hidden_layers"]),
        context_length=int(text["max_position_embeddings"]),
        vocab_size=int(text["vocab_size"]),
    )
    if backbone == BackboneConfig(**{**VIT_B_16.__dict__, "name": "custom"}):
        backbone = VIT_B_16
    reduce_dim = int(hf.get("reduce_dim", 64))
    refined = bool(hf.get("use_complex_transposed_convolution", False))
    return ClipSegConfig(
        variant=f"rd{reduce_dim}" + ("-refined" if refined else ""),
        backbone=backbone,
        reduce_dim=reduce_dim,
        decoder_heads=int(hf.get("decoder_num_attention_heads", 4)),
        decoder_ffn_dim=int(hf.get("decoder_intermediate_size", 2048)),
        refined=refined,
        extract_layers=tuple(int(i) for i in hf.get("extract_layers", (3, 6, 9))),
        cond_layer=int(hf.get("conditional_layer", 0)),
    )


# (HF pattern, our replacement) applied to a key after its "clip."/"decoder." prefix.
_RENAMES: list[tuple[str, str]] = [
    (r"^clip\.vision_model\.embeddings\.class_embedding$", "clip.visual.class_embedding"),
    (r"^clip\.vision_model\.embeddings\.patch_embedding\.", "clip.visual.conv1."),
    (
        r"^clip\.vision_model\.embeddings\.position_embedding\.weight$",
        "clip.visual.positional_embedding",
    ),
    (r"^clip\.vision_model\.pre_layrnorm\.", "clip.visual.ln_pre."),
    (r"^clip\.vision_model\.post_layernorm\.", "clip.visual.ln_post."),
    (r"^clip\.vision_model\.encoder\.layers\.", "clip.visual.transformer.resblocks."),
    (r"^clip\.text_model\.embeddings\.token_embedding\.", "clip.token_embedding."),
    (r"^clip\.text_model\.embeddings\.position_embedding\.weight$", "clip.positional_embedding"),
    (r"^clip\.text_model\.final_layer_norm\.", "clip.ln_final."),
    (r"^clip\.text_model\.encoder\.layers\.", "clip.transformer.resblocks."),
    (r"^decoder\.transposed_convolution", "decoder.trans_conv"),
    (r"^decoder\.layers\.", "decoder.blocks."),
]
# Inside transformer blocks.
_CLIP_BLOCK = [
    (r"\.layer_norm1\.", ".ln_1."),
    (r"\.layer_norm2\.", ".ln_2."),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"\.self_attn\.out_proj\.", ".attn.out_proj."),
]
_DECODER_BLOCK = [
    (r"\.layer_norm1\.", ".norm1."),
    (r"\.layer_norm2\.", ".norm2."),
    (r"\.mlp\.fc1\.", ".linear1."),
    (r"\.mlp\.fc2\.", ".linear2."),
]
_QKV = re.compile(r"^(.*)\.self_attn\.([qkv])_proj\.(weight|bias)$")
_IGNORED = re.compile(r"\.position_ids$")


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        key, n = re.subn(pattern, repl, key)
        if n:
            break
    rules = _DECODER_BLOCK if key.startswith("decoder.blocks.") else _CLIP_BLOCK
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def convert_hf_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename transformers CLIPSeg keys to ours; fuse q/k/v; transpose the projections.

    Keys we do not know pass through unchanged so strict loading reports them by name.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if _IGNORED.search(key):
            continue
        key = re.sub(r"^clipseg\.", "clip.", key)  # checkpoints from before the rename
        if key in ("clip.visual_projection.weight", "clip.text_projection.weight"):
            out[key.removesuffix(".weight").replace("visual_projection", "visual.proj")] = value.T
            continue
        match = _QKV.match(key)
        if match:
            base, part, kind = match.groups()
            qkv.setdefault((_rename(base + ".x"), kind), {})[part] = value
            continue
        out[_rename(key)] = value
    for (base, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            raise WeightsError(f"incomplete q/k/v projections for {base} ({sorted(parts)})")
        block = base.removesuffix(".x")
        attn = "self_attn" if block.startswith("decoder.") else "attn"
        out[f"{block}.{attn}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out
