"""Service fixtures: an app around the tiny random model, served on loopback."""

from __future__ import annotations

import threading
import warnings

import pytest

from model.predictor import Predictor
from service.app import create_app
from service.config import Settings
from tests.service.live import LiveServer


def make_settings(**overrides) -> Settings:
    base = {
        "weights": "random:tiny",
        "device": "cpu",
        "max_wait_ms": 20.0,
        "request_timeout_s": 30.0,
    }
    return Settings(_env_file=None, **{**base, **overrides})


class GatedPredictor(Predictor):
    """A predictor whose model calls wait on ``gate`` (to hold batches in flight) and
    fail for prompts containing "poison" (to test failure isolation)."""

    gate: threading.Event

    def logits(self, images, conditionals, image_index=None):
        self.gate.wait(timeout=30)
        return super().logits(images, conditionals, image_index)

    def text_embeddings(self, prompts, template="none"):
        if any("poison" in p for p in prompts):
            raise RuntimeError("poisoned prompt")
        return super().text_embeddings(prompts, template)


@pytest.fixture
def factory(tiny_model):
    """Returns a predictor factory; ``factory.gate`` (set by default) holds the model."""
    gate = threading.Event()
    gate.set()

    def build(settings: Settings) -> Predictor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            predictor = GatedPredictor(
                tiny_model, device="cpu", text_cache_size=settings.text_cache_size
            )
        predictor.gate = gate
        return predictor

    build.gate = gate
    return build


@pytest.fixture
def serve(factory):
    """``with serve(**settings) as server`` runs the tiny-model app on loopback."""
    servers = []

    def start(ready: bool = True, **overrides) -> LiveServer:
        server = LiveServer(create_app(make_settings(**overrides), factory), ready=ready)
        servers.append(server)
        return server

    yield start
    factory.gate.set()
    for server in servers:
        if server.thread.is_alive():
            server.stop()
