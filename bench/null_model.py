"""A stand-in predictor for host-path benchmarks: the real service around no model compute.

``NullPredictor`` is a ``Predictor`` over a ``NullBackend``, whose model calls return at
once: text and support embeddings are zeros and the logits are one fixed, precomputed
352x352 map (a
smooth ellipse, so masks have realistic edges and RLE has a few runs per column). Every
other step is the real one: decode, orient, resize and normalise the upload
(``prepare_image``), plan the batch, then sigmoid, bilinear upsample to the image's own
size, threshold, pack, score (``render``) and encode. What a benchmark then measures is
the host's share of a request.

It lives in ``bench/`` on purpose: nothing under ``service/`` or ``model/`` imports it and
no weights source or setting names it, so a deployment cannot select it by accident. Only
code that builds the app itself (``bench/null_server.py``) passes ``null_factory`` to
``service.app.create_app``.
"""

from __future__ import annotations

import dataclasses

import torch

from clipseg_serve.model.config import ClipSegConfig, get_variant
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.network.text import Template
from clipseg_serve.service.config import Settings

#: Side of the model input the null model pretends to have (the released weights').
INPUT_SIZE = 352


def ellipse_logits(size: int = INPUT_SIZE) -> torch.Tensor:
    """float32 [size, size] logits: positive inside a centred ellipse, in about [-8, 3].

    Smooth like a real decoder's output, so the upsampled mask has soft, curved edges.
    """
    axis = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    radius = torch.sqrt((x / 0.35) ** 2 + (y / 0.25) ** 2)
    return 8.0 * (1.0 - radius)


class NullBackend:
    """A ``Backend`` (``model.inference.backend``) that computes nothing: zero embeddings
    and the fixed ellipse for every row. ``config``: the model it pretends to be."""

    backend_name = "null"
    fixed_precision = "float32"  # no autocast around it
    home_device = None
    compiled_tower = None

    def __init__(self, config: ClipSegConfig) -> None:
        self.config = config
        self._logits = ellipse_logits(config.input_size)
        self._dim = config.backbone.embed_dim

    def to(self, device: torch.device | str) -> NullBackend:
        if torch.device(device).type != "cpu":
            raise ValueError("the null backend runs on the CPU")
        return self

    def eval(self) -> NullBackend:
        return self

    def image_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError("the null backend has no vision tower")

    def embed_phrases(self, phrases, template: Template | str = Template.NONE) -> torch.Tensor:
        """float32 [N, D] zeros: the logits ignore the conditioning."""
        return torch.zeros((len(phrases), self._dim))

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """float32 [K, D] zeros."""
        return torch.zeros((int(images.shape[0]), self._dim))

    def __call__(self, images, conditionals, image_index=None) -> torch.Tensor:
        """float32 [P, S, S]: the fixed ellipse map for every row (a view, no copy)."""
        rows, size = int(conditionals.shape[0]), self.config.input_size
        return self._logits.expand(rows, size, size)

    def description(self) -> dict:
        return {}


class NullPredictor(Predictor):
    """A ``Predictor`` whose model calls cost nothing (see the module docstring), with the
    tiny model's config at ``INPUT_SIZE``, so queries are decoded and resized exactly as
    for the released weights."""

    def __init__(self, **kwargs) -> None:
        config = dataclasses.replace(get_variant("tiny"), input_size=INPUT_SIZE)
        super().__init__(NullBackend(config), device="cpu", **kwargs)


def null_factory(settings: Settings, decode: str = "cpu") -> Predictor:
    """A ``PredictorFactory`` for ``create_app``: the settings' weights are ignored.

    ``decode="device"`` defers JPEGs to the batch as a GPU server does (here the "device"
    is this CPU, so their decoding lands on the model thread, the device's share).
    """
    return NullPredictor(
        text_cache_size=settings.text_cache_size,
        max_pixels=settings.max_image_pixels,
        decode=decode,
    )
