"""The CLIPSeg module: an open_clip CLIP backbone plus the CLIPSeg decoder.

The query image runs through the vision tower only up to the deepest extracted block
(blocks after it are dead compute for segmentation); its activations are reduced once
per image and shared by every prompt for that image. Conditioning vectors come from the
full vision tower (visual prompts) or the text tower (text prompts).

No grad-mode decorators here: training reuses ``forward``; inference mode belongs to the
predictor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from clipseg_serve.model.config import ClipSegConfig
from clipseg_serve.model.network.decoder import ClipSegDecoder
from clipseg_serve.model.network.text import Template, embed_phrases


def build_clip(config: ClipSegConfig) -> nn.Module:
    """An open_clip ``CLIP`` with the config's dimensions and QuickGELU (OpenAI weights)."""
    return open_clip.model.CLIP(**config.backbone.open_clip_kwargs(), quick_gelu=True)


def resize_positional_embedding(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Bicubically resize a ViT positional embedding to a ``grid`` x ``grid`` patch grid.

    Args:
        pos: [1 + n*n, W] (class token first), as trained (14x14 for ViT-B/16 at 224).
    Returns:
        [1 + grid*grid, W]; unchanged when the grid already matches.
    """
    n = round((pos.shape[0] - 1) ** 0.5)
    if n == grid:
        return pos
    patches = pos[1:].T.reshape(1, pos.shape[1], n, n)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patches.reshape(pos.shape[1], grid * grid).T])


def in_weight_dtype(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` in the dtype of ``module``'s weights: a transformer's residual stream.

    Under CPU autocast with fp32 weights the stream would otherwise become bf16, and then
    ``nn.MultiheadAttention`` leaves its fused path (it needs the input in the weights'
    dtype) for one that runs ``F.linear`` on a transposed 3-D bf16 tensor, where torch
    expands the weight per token: ~1 s per ViT-B block at batch 2, against 40 ms.
    Autocast still runs every matmul in bf16.
    """
    return x.to(next(module.parameters()).dtype)


class ClipSeg(nn.Module):
    """CLIPSeg: segment an image given conditioning vectors.

    Shapes (ViT-B/16 at 352: S=352, g=22, W=768, D=512):
        images: [B, 3, S, S] float, ImageNet-normalised.
        conditionals: [P, D] float (text, visual or mixed CLIP embeddings, unnormalised).
        logits: [P, S, S] float.
    """

    #: The ``Backend`` protocol (``model.inference.backend``): torch modules run at the
    #: precision the predictor's autocast chooses, on any device.
    backend_name = "torch"
    fixed_precision: str | None = None
    home_device: torch.device | None = None

    def __init__(self, config: ClipSegConfig) -> None:
        super().__init__()
        self.config = config
        self.clip = build_clip(config)
        self.decoder = ClipSegDecoder(config)
        # The backbone is frozen in CLIPSeg; training only updates the decoder.
        self.clip.requires_grad_(False)
        #: A compiled stand-in for ``image_features`` (``model.network.compiled``), or None: eager.
        self.compiled_tower: Callable[[torch.Tensor], list[torch.Tensor]] | None = None

    def description(self) -> dict[str, Any]:
        """Nothing beyond what the predictor reports for a torch module."""
        return {}

    # ----------------------------------------------------------------- vision tower
    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Patch + class embeddings with resized positions and ln_pre: [B, 1 + g*g, W]."""
        visual = self.clip.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        grid = x.shape[-1]
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        pos = resize_positional_embedding(visual.positional_embedding, grid)
        x = torch.cat([cls, x], dim=1) + pos.to(x.dtype)
        return visual.ln_pre(x)

    def _run_blocks(self, x: torch.Tensor, last: int, keep: tuple[int, ...]) -> tuple:
        """Run vision blocks 0..last; return (x, activations after the blocks in ``keep``)."""
        transformer = self.clip.visual.transformer
        batch_first = getattr(transformer, "batch_first", True)
        x = in_weight_dtype(x, self.clip.visual.conv1)
        activations = []
        if not batch_first:
            x = x.transpose(0, 1)
        for i, block in enumerate(transformer.resblocks[: last + 1]):
            x = block(x)
            if i in keep:
                activations.append(x if batch_first else x.transpose(0, 1))
        if not batch_first:
            x = x.transpose(0, 1)
        return x, activations

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Activations after each extracted block, shallow to deep, each [B, 1 + g*g, W].

        Stops after the deepest extracted block: later blocks do not affect the mask.
        """
        _, activations = self._run_blocks(
            self._tokens(images), self.config.last_query_block, self.config.extract_layers
        )
        return activations

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (full tower, pooled CLS, projected): [B, 3, S, S] -> [B, D].

        Unnormalised, as CLIPSeg uses them for visual-prompt conditioning.
        """
        visual = self.clip.visual
        x, _ = self._run_blocks(self._tokens(images), len(visual.transformer.resblocks) - 1, ())
        return visual.ln_post(x[:, 0]) @ visual.proj

    # ------------------------------------------------------------------- text tower
    def embed_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """CLIP text embeddings: int64 tokens [N, L] (L <= context length) -> [N, D].

        The tower is causal and pools at the end-of-text token (the largest id), so
        tokens padded only to the batch's longest prompt give the same embedding as
        padding to 77, for a fraction of the compute.
        """
        clip = self.clip
        length = tokens.shape[1]
        x = clip.token_embedding(tokens) + clip.positional_embedding[:length]
        x = in_weight_dtype(x, clip.token_embedding)
        x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
        x = clip.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return pooled @ clip.text_projection

    def embed_phrases(
        self, phrases: Sequence[str], template: Template | str = Template.NONE
    ) -> torch.Tensor:
        """Conditioning vectors for user phrases: [N] -> float32 [N, D] (``text.embed_phrases``:
        raw / photo / ensemble templates, all texts in one encoder call)."""
        return embed_phrases(
            self.embed_text,
            phrases,
            template,
            self.config.backbone.context_length,
            self.clip.token_embedding.weight.device,
        )

    # ----------------------------------------------------------------- segmentation
    def forward(
        self,
        images: torch.Tensor,
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits for every (image, conditional) row with ONE backbone pass per image.

        Args:
            images: [B, 3, S, S] normalised.
            conditionals: [P, D].
            image_index: [P] int64 in [0, B): row p segments image ``image_index[p]``;
                None means P == B and row i uses image i.
        Returns:
            logits [P, S, S].
        """
        tower = self.compiled_tower or self.image_features
        reduced = self.decoder.reduce(tower(images))
        return self.decoder(reduced, conditionals.to(reduced[0].dtype), image_index)
