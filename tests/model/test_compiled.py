"""The bucketed, compiled vision tower: padding and chunking change no real row."""

from __future__ import annotations

import warnings

import pytest
import torch

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.network.compiled import BucketedTower
from tests.conftest import random_image


def eager(fn, dynamic):
    """A stand-in for torch.compile that records the shapes it is called with."""
    shapes: list[int] = []

    def run(images):
        shapes.append(int(images.shape[0]))
        return fn(images)

    run.shapes = shapes
    return run


@pytest.fixture
def images(tiny_model):
    size = tiny_model.config.input_size
    return torch.randn(7, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_batches_are_padded_to_the_next_bucket_and_chunked_by_the_largest(tiny_model, images):
    tower = BucketedTower(tiny_model.image_features, (4, 1, 2), compiler=eager)
    assert tower.buckets == (1, 2, 4)
    with torch.inference_mode():
        want = tiny_model.image_features(images)
        for count in (1, 2, 3, 7):
            got = tower(images[:count])
            for g, w in zip(got, want, strict=True):
                assert g.shape[0] == count
                torch.testing.assert_close(g, w[:count], rtol=1e-5, atol=1e-5)
    # 1 -> 1, 2 -> 2, 3 -> 4 (padded), 7 -> 4 + 3 (chunk, then padded to 4).
    assert tower.compiled.shapes == [1, 2, 4, 4, 4]


def test_a_compiled_predictor_warms_every_bucket_and_gives_the_eager_masks(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = Predictor(tiny_model, device="cpu", dtype="float32")
        image = random_image(60, 40, seed=3)
        want = plain.segment(image, ["a cat", "grass"], soft=True)
        # torch.compile itself (dynamo tracing) with the eager backend: no C++ build here.
        compiled = Predictor(
            tiny_model,
            device="cpu",
            dtype="float32",
            compile_buckets=(1, 2),
            compile_backend="eager",
        )
        compiled.warm_up()
        got = compiled.segment(image, ["a cat", "grass"], soft=True)
    assert compiled.describe()["compiled_batch_sizes"] == [1, 2]
    # The caller's module is left as it was: the predictor compiled a copy of its own.
    assert tiny_model.compiled_tower is None and compiled.model is not tiny_model
    assert (got.soft.astype(int) - want.soft.astype(int)).__abs__().max() <= 1
    assert (got.masks == want.masks).mean() > 0.999


def test_bad_buckets_are_refused(tiny_model):
    with pytest.raises(ValueError, match="positive"):
        BucketedTower(tiny_model.image_features, (), compiler=eager)
    from clipseg_serve.service.config import Settings

    assert Settings(_env_file=None, compile_batch_sizes="1, 8,32").compile_batch_sizes == [1, 8, 32]
    with pytest.raises(ValueError, match=">= 1"):
        Settings(_env_file=None, compile_batch_sizes="0,8")
