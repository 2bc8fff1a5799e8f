"""Numerical parity with HuggingFace transformers' CLIPSeg on random weights.

The same random weights are saved as an HF checkpoint, loaded through our converter, and
the logits compared: |ours - theirs| <= 1e-4 (relative to the largest |logit| above 1).
"""

from __future__ import annotations

import pytest
import torch

from clipseg_serve.model.network.text import tokenize
from clipseg_serve.model.weights.loader import load_model
from tests.hf_reference import build_hf_clipseg, hf_logits, save_hf_checkpoint

pytest.importorskip("transformers")

CASES = [
    pytest.param(small, refined, rd, id=f"{'small' if small else 'vitb16'}-rd{rd}-{kind}")
    for small in (True, False)
    for refined, kind in ((True, "refined"), (False, "uni"))
    for rd in (64, 16)
]
PROMPTS = ["a cat", "something to sit on", "the red mug on the left of the table"]


def assert_close(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape
    scale = max(1.0, theirs.abs().max().item())
    diff = (ours - theirs).abs().max().item()
    assert diff <= 1e-4 * scale, f"max |diff| {diff:.3g} exceeds 1e-4 x {scale:.3g}"


@pytest.fixture(scope="module")
def converted(request, tmp_path_factory):
    """Cache (hf_model, our_model) per case so each case builds its weights once."""
    cache: dict = {}

    def get(small: bool, refined: bool, rd: int):
        key = (small, refined, rd)
        if key not in cache:
            cache.clear()  # keep at most one full-size pair in memory
            hf = build_hf_clipseg(small=small, refined=refined, reduce_dim=rd)
            directory = tmp_path_factory.mktemp("hf")
            # Alternate the two HF weight formats across cases.
            save_hf_checkpoint(hf, directory, safetensors=(rd == 64))
            cache[key] = (hf, load_model(directory).model)
        return cache[key]

    return get


@pytest.mark.parametrize(("small", "refined", "rd"), CASES)
def test_text_conditioning_matches_transformers(converted, small, refined, rd):
    hf, ours = converted(small, refined, rd)
    size = 96 if small else 352
    torch.manual_seed(1)
    images = torch.randn(len(PROMPTS), 3, size, size)
    padded = tokenize(PROMPTS)  # trimmed to the longest prompt
    full = torch.zeros(len(PROMPTS), 77, dtype=torch.long)
    full[:, : padded.shape[1]] = padded  # HF processor style: padded to 77
    theirs = hf_logits(hf, images, input_ids=full)
    with torch.no_grad():
        mine = ours(images, ours.embed_text(padded))
    assert_close(mine, theirs)
    assert ours.config.variant == f"rd{rd}" + ("-refined" if refined else "")


@pytest.mark.parametrize(("small", "refined", "rd"), CASES)
def test_given_conditional_embedding_matches_transformers(converted, small, refined, rd):
    hf, ours = converted(small, refined, rd)
    size = 96 if small else 352
    torch.manual_seed(2)
    images = torch.randn(2, 3, size, size)
    cond = torch.randn(2, ours.config.backbone.embed_dim)
    theirs = hf_logits(hf, images, conditional_embeddings=cond)
    with torch.no_grad():
        mine = ours(images, cond)
    assert_close(mine, theirs)


@pytest.mark.parametrize("small", [True, False], ids=["small", "vitb16"])
def test_image_embedding_matches_transformers(converted, small):
    """The visual-prompt conditioning (pooled, projected CLS at 352) matches too."""
    hf, ours = converted(small, True, 64)
    size = 96 if small else 352
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        theirs = hf.clip.get_image_features(pixel_values=images)
        theirs = getattr(theirs, "pooler_output", theirs)
        mine = ours.embed_images(images)
    assert_close(mine, theirs)
