"""ONNX fp32 equals PyTorch within 1e-4 in logits on the full-size random model (ViT-B/16,
rd64-refined) for text, visual and hybrid prompts, several prompts per image and several
images per batch; its int8 masks agree with fp32's (~50 s on 2 cores: one export)."""

from __future__ import annotations

import contextlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from clipseg_serve.model.config import get_variant
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.onnx.export import export_graphs
from clipseg_serve.model.onnx.fidelity import compare_backends
from clipseg_serve.model.onnx.quantize import quantize_export
from clipseg_serve.model.onnx.runtime import OnnxClipSeg
from clipseg_serve.model.weights.loader import build_random
from tests.conftest import random_image

PHOTOS = Path(__file__).resolve().parents[1] / "data" / "photos"
PROMPTS = ["a cat", "the red mug on the wooden table", "sky", "something to sit on"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """(torch predictor, onnx fp32 predictor, onnx int8 predictor) on the same weights."""
    model = build_random(get_variant("rd64-refined"), seed=0).eval()
    folder = tmp_path_factory.mktemp("full-onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        export_graphs(model, folder)
    quantize_export(folder, "dynamic")
    fp32 = Predictor(OnnxClipSeg(folder), device="cpu")
    int8 = Predictor(OnnxClipSeg(folder, precision="int8"), device="cpu")
    # The sessions hold the graphs: the 850 MB of files can go now.
    for graph in folder.glob("*.onnx"):
        graph.unlink()
    return Predictor(model, device="cpu", dtype="float32"), fp32, int8


def _images(predictor: Predictor) -> torch.Tensor:
    """uint8 [3, 3, 352, 352]: two photos and a noise image."""
    sources = [PHOTOS / "astronaut.jpg", PHOTOS / "rocket.jpg", random_image(300, 200, seed=7)]
    return torch.stack([predictor.prepare_image(s).pixels for s in sources])


def _supports(predictor: Predictor) -> torch.Tensor:
    """Two engineered supports [2, 3, 352, 352]."""
    supports = []
    for seed in (1, 2):
        mask = np.zeros((240, 320), np.uint8)
        mask[40 + 20 * seed : 200, 60 : 260 - 30 * seed] = 1
        supports.append(predictor.prepare_support(random_image(320, 240, seed=seed), mask))
    return torch.stack(supports)


def _logits(predictor: Predictor, kind: str) -> torch.Tensor:
    """Every prompt of ``kind`` on every image, one call: [3 images x rows, 352, 352]."""
    images = _images(predictor)
    text = predictor.text_embeddings(PROMPTS)
    visual = predictor.support_embeddings(_supports(predictor))
    conditionals = {
        "text": text,
        "visual": visual,
        "hybrid": predictor.hybrid(text[:2], visual, 0.4),
    }[kind]
    rows = int(conditionals.shape[0])
    index = torch.arange(images.shape[0]).repeat_interleave(rows)
    return predictor.logits(images, conditionals.repeat(images.shape[0], 1), index)


@pytest.mark.parametrize("kind", ["text", "visual", "hybrid"])
def test_onnx_fp32_logits_equal_pytorch(full, kind):
    reference, fp32, _ = full
    want, got = _logits(reference, kind), _logits(fp32, kind)
    assert got.shape == want.shape and got.shape[0] >= 6
    assert float(want.std()) > 1e-3  # real, varied maps
    assert float((got - want).abs().max()) < 1e-4


def test_onnx_fp32_embeddings_equal_pytorch(full):
    reference, fp32, _ = full
    for p in (reference, fp32):
        p.clear_text_cache()
    text = reference.text_embeddings(PROMPTS, "ensemble"), fp32.text_embeddings(PROMPTS, "ensemble")
    assert float((text[0] - text[1]).abs().max()) < 1e-4
    visual = (
        reference.support_embeddings(_supports(reference)),
        fp32.support_embeddings(_supports(fp32)),
    )
    assert float((visual[0] - visual[1]).abs().max()) < 1e-4


def test_int8_masks_agree_with_fp32(full):
    """The issue's bar on the full-size random model: >= 97 % pixel agreement. Its maps
    are nearly flat, so a fixed threshold leaves masks nearly all one value; the test
    holds the median split (half of every map foreground) to the bar as well."""
    reference, _, int8 = full
    sources = [PHOTOS / "astronaut.jpg", PHOTOS / "rocket.jpg", random_image(300, 200, seed=7)]
    (fidelity,) = compare_backends(reference, {"onnx int8": int8}, sources, PROMPTS)
    assert fidelity.masks == 3 * len(PROMPTS) + 2
    assert fidelity.pixel_agreement >= 0.97
    assert fidelity.median_split_agreement >= 0.97
    assert 0 < fidelity.max_logit_diff < 0.1
