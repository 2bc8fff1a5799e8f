"""Build transformers' CLIPSeg with random weights and save it as an HF checkpoint.

transformers is a test/dev dependency only; this is the reference our model is checked
against.
"""

from __future__ import annotations

from pathlib import Path

import torch

SMALL_VISION = {
    "hidden_size": 48,
    "intermediate_size": 192,
    "num_attention_heads": 2,
    "num_hidden_layers": 5,
    "image_size": 64,
    "patch_size": 16,
}
SMALL_TEXT = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_attention_heads": 2,
    "num_hidden_layers": 2,
}
FULL_VISION = {"patch_size": 16}  # every other field: ViT-B/16 defaults


def build_hf_clipseg(*, small: bool, refined: bool, reduce_dim: int, seed: int = 0):
    """A random ``CLIPSegForImageSegmentation`` in eval mode.

    Every parameter gets extra noise so that no LayerNorm is the identity and no bias is
    zero: a conversion that swapped or dropped such a tensor would show in the logits.
    """
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

    kwargs = {
        "vision_config": SMALL_VISION if small else FULL_VISION,
        "text_config": SMALL_TEXT if small else {},
        "reduce_dim": reduce_dim,
        "use_complex_transposed_convolution": refined,
    }
    if small:
        kwargs.update(
            projection_dim=32,
            extract_layers=[1, 2, 3],
            decoder_num_attention_heads=2,
            decoder_intermediate_size=32,
        )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(CLIPSegConfig(**kwargs))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    return model.eval()


def save_hf_checkpoint(model, directory: Path, *, safetensors: bool = True) -> Path:
    """Write ``config.json`` plus model.safetensors or pytorch_model.bin."""
    directory.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(str(directory / "config.json"))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


def hf_logits(model, pixel_values, *, input_ids=None, conditional_embeddings=None):
    """transformers' logits as [B, S, S] (it squeezes a batch of one away)."""
    with torch.no_grad():
        out = model(
            pixel_values=pixel_values,
            input_ids=input_ids,
            conditional_embeddings=conditional_embeddings,
        )
    size = pixel_values.shape[-1]
    return out.logits.reshape(-1, size, size)
