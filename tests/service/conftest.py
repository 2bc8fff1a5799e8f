"""Service fixtures: an app around the tiny random model, served on loopback."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.onnx.runtime import OnnxClipSeg
from clipseg_serve.service.app import create_app
from clipseg_serve.service.config import Settings
from tests.service.live import LiveServer


def make_settings(**overrides) -> Settings:
    base = {
        "weights": "random:tiny",
        "device": "cpu",
        "max_wait_ms": 20.0,
        "request_timeout_s": 30.0,
    }
    return Settings(_env_file=None, **{**base, **overrides})


class GatedBackend:
    """The real backend, with each model call waiting on its predictor's ``gate`` (to hold
    batches in flight), recording its images (``logits_calls``), failing like CUDA's out
    of memory above ``oom_above`` images, and failing text prompts containing "poison"
    (failure isolation). Everything else is the real backend's."""

    def __init__(self, inner, hooks: GatedPredictor) -> None:
        self._inner, self._hooks = inner, hooks

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def to(self, device) -> GatedBackend:
        self._inner = self._inner.to(device)
        return self

    def eval(self) -> GatedBackend:
        self._inner = self._inner.eval()
        return self

    def __call__(self, images, conditionals, image_index=None):
        hooks = self._hooks
        hooks.gate.wait(timeout=30)
        if hooks.oom_above is not None and images.shape[0] > hooks.oom_above:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        hooks.logits_calls.append(int(images.shape[0]))
        return self._inner(images, conditionals, image_index)

    def embed_phrases(self, phrases, template="none"):
        if any("poison" in p for p in phrases):
            raise RuntimeError("poisoned prompt")
        return self._inner.embed_phrases(phrases, template)


class GatedPredictor(Predictor):
    """A predictor over a ``GatedBackend``: ``gate`` holds its model calls,
    ``logits_calls`` records them, ``oom_above`` simulates running out of memory."""

    gate: threading.Event
    logits_calls: list[int]  # images per model call
    oom_above: int | None = None  # simulate CUDA OOM for batches with more images

    def __init__(self, model, **kwargs) -> None:
        super().__init__(GatedBackend(model, self), **kwargs)


@pytest.fixture
def backend() -> str:
    """The backend ``factory``'s predictors run. A module whose API tests must hold for
    both overrides it: ``@pytest.fixture(params=BACKENDS)``."""
    return "torch"


BACKENDS = ["torch", "onnx"]


@pytest.fixture
def factory(tiny_model, backend, request):
    """Returns a predictor factory; ``factory.gate`` (set by default) holds the model."""
    gate = threading.Event()
    gate.set()
    onnx = backend == "onnx"
    model = OnnxClipSeg(request.getfixturevalue("tiny_onnx")) if onnx else tiny_model

    def build(settings: Settings) -> Predictor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = GatedPredictor(
                model, device="cpu", dtype="float32", text_cache_size=settings.text_cache_size
            )
        predictor.gate = gate
        predictor.logits_calls = build.logits_calls
        predictor.oom_above = build.oom_above
        build.instances.append(predictor)
        return predictor

    build.gate = gate
    build.logits_calls = []
    build.oom_above = None
    build.instances = []
    return build


@pytest.fixture
def serve(factory):
    """``with serve(**settings) as server`` runs the tiny-model app on loopback."""
    servers = []

    def start(ready: bool = True, log_level: str = "warning", **overrides) -> LiveServer:
        app = create_app(make_settings(**overrides), factory)
        server = LiveServer(app, ready=ready, log_level=log_level)
        servers.append(server)
        return server

    yield start
    factory.gate.set()
    for server in servers:
        if server.thread.is_alive():
            server.stop()
