"""The CLIPSeg decoder: FiLM-conditioned transformer over CLIP activations.

Parameter names follow the official implementation (``film_mul``, ``film_add``,
``reduces``, ``blocks``, ``trans_conv``) so official decoder files load by name.
"""

from __future__ import annotations

import torch
from torch import nn

from clipseg_serve.model.config import ClipSegConfig


def build_head(reduce_dim: int, patch_size: int, refined: bool) -> nn.Module:
    """Transposed-conv head from the token grid to pixels (one patch -> patch x patch).

    ``refined`` (rd64-refined): Conv3x3 -> ReLU -> ConvT(R, R/2, p/4, s p/4) -> ReLU ->
    ConvT(R/2, 1, p/4, s p/4); otherwise a single ConvT(R, 1, p, s p).
    """
    if not refined:
        return nn.ConvTranspose2d(reduce_dim, 1, patch_size, stride=patch_size)
    k = patch_size // 4
    return nn.Sequential(
        nn.Conv2d(reduce_dim, reduce_dim, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(reduce_dim, reduce_dim // 2, kernel_size=k, stride=k),
        nn.ReLU(),
        nn.ConvTranspose2d(reduce_dim // 2, 1, kernel_size=k, stride=k),
    )


class ClipSegDecoder(nn.Module):
    """Decodes (image activations, conditioning vector) pairs into mask logits.

    Widths come from the config's backbone: ``backbone.width`` for the activations and
    ``backbone.embed_dim`` for the conditioning vector.
    """

    def __init__(self, config: ClipSegConfig) -> None:
        super().__init__()
        width, cond_dim, r = config.backbone.width, config.backbone.embed_dim, config.reduce_dim
        depth = len(config.extract_layers)
        self.cond_layer = config.cond_layer
        self.film_mul = nn.Linear(cond_dim, r)
        self.film_add = nn.Linear(cond_dim, r)
        # reduces[0] projects the DEEPEST extracted activation (processed first).
        self.reduces = nn.ModuleList([nn.Linear(width, r) for _ in range(depth)])
        self.blocks = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d_model=r,
                    nhead=config.decoder_heads,
                    dim_feedforward=config.decoder_ffn_dim,
                    dropout=config.decoder_dropout,
                    activation="relu",
                    batch_first=True,
                    norm_first=False,
                )
                for _ in range(depth)
            ]
        )
        self.trans_conv = build_head(r, config.backbone.patch_size, config.refined)

    def reduce(self, activations: list[torch.Tensor]) -> list[torch.Tensor]:
        """Project activations to the decoder width, deepest first.

        Args:
            activations: per extracted block, shallow to deep, each [B, 1 + g*g, width].
        Returns:
            deepest first, each [B, 1 + g*g, reduce_dim]. Done per image (not per prompt),
            since the projection does not depend on the prompt.
        """
        return [reduce(a) for reduce, a in zip(self.reduces, reversed(activations), strict=True)]

    def forward(
        self,
        reduced: list[torch.Tensor],
        conditionals: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits for each (image, conditioning vector) row.

        Args:
            reduced: output of ``reduce``: deepest first, each [B, T, R] with T = 1 + g*g.
            conditionals: [P, D] conditioning vectors (text/visual/hybrid embeddings).
            image_index: [P] int64, the image each row belongs to; None means row i uses
                image i (P == B).
        Returns:
            logits [P, g*patch, g*patch] (352x352 for ViT-B/16 at 352), any real value.
        """
        if image_index is not None:
            reduced = [r.index_select(0, image_index) for r in reduced]
        elif reduced[0].shape[0] != conditionals.shape[0]:
            raise ValueError(
                f"{conditionals.shape[0]} conditionals for {reduced[0].shape[0]} images "
                "and no image_index"
            )
        a: torch.Tensor | None = None
        for i, (r, block) in enumerate(zip(reduced, self.blocks, strict=True)):
            a = r if a is None else r + a
            if i == self.cond_layer:
                a = self.film_mul(conditionals)[:, None] * a + self.film_add(conditionals)[:, None]
            # The weights' dtype keeps attention on its fused path (``in_weight_dtype``).
            a = block(a.to(block.linear1.weight.dtype))
        assert a is not None
        rows, tokens, dim = a.shape
        grid = round((tokens - 1) ** 0.5)
        a = a[:, 1:].transpose(1, 2).reshape(rows, dim, grid, grid)
        return self.trans_conv(a).squeeze(1)
