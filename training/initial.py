"""Where a training run's weights start (``--init``).

``clip`` (the default) is the paper's recipe: the frozen CLIP backbone named by
``--backbone`` (default ``openai``: OpenAI's ViT-B/16 through open_clip, downloaded once
like the service's weights) and a freshly initialised decoder of ``--variant`` (default
rd64). Any other value is a weights source of ``model.weights.loader.load_model`` to
fine-tune (``CIDAS/clipseg-rd64-refined``, a checkpoint folder, an official ``.pth``),
or ``random:tiny`` for smoke tests.
"""

from __future__ import annotations

from clipseg_serve.model.config import get_variant
from clipseg_serve.model.network.clipseg import ClipSeg
from clipseg_serve.model.network.decoder import ClipSegDecoder

# The loader's backbone resolution ("openai", a weights file, an HF checkpoint) is what
# its native checkpoints use too; reusing it keeps one download path and one error text.
from clipseg_serve.model.weights.loader import LoadedModel, backbone_state, load_model
from clipseg_serve.model.weights.strict import load_strict

CLIP_INIT = "clip"
#: The paper's decoder for the fresh-decoder recipe (rd64, "uni" head).
FRESH_VARIANT = "rd64"


def clip_with_fresh_decoder(variant: str, backbone: str) -> LoadedModel:
    """A ``variant`` model: ``backbone``'s CLIP weights, a decoder from the current torch
    RNG. Raises the loader's ``WeightsError`` (a ``ClipSegError``) when the backbone cannot
    be loaded, e.g. offline without a cached copy."""
    config = get_variant(variant)
    state = backbone_state(backbone, config)  # first: offline fails before a 150M build
    model = ClipSeg(config)
    load_strict(model.clip, state, f"backbone {backbone!r}")
    model.eval()
    return LoadedModel(model, "clip", f"{CLIP_INIT}:{variant}", backbone_source=backbone)


def load_initial(
    init: str, *, variant: str | None, backbone: str, fresh_decoder: bool = False
) -> LoadedModel:
    """The starting model of a run (see the module docstring)."""
    if init == CLIP_INIT:
        return clip_with_fresh_decoder(variant or FRESH_VARIANT, backbone)
    loaded = load_model(init, variant=variant, backbone=backbone)
    if fresh_decoder:
        loaded.model.decoder = ClipSegDecoder(loaded.model.config)
    return loaded
