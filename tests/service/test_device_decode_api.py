"""The service with JPEGs decoded in the batch (CLIPSEG_DECODE=gpu's path, on the CPU here):
same answers as the CPU path within decoder tolerance, and a broken JPEG is still a 400."""

from __future__ import annotations

import base64
import io
import warnings

import httpx
import numpy as np
from PIL import Image

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.service.app import create_app
from tests.conftest import encode
from tests.model.test_device_path import photo
from tests.service.conftest import make_settings
from tests.service.live import LiveServer
from tests.service.test_api import post_text


def _serve(tiny_model, decode: str) -> LiveServer:
    def factory(settings):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Predictor(tiny_model, device="cpu", dtype="float32", decode=decode)

    return LiveServer(create_app(make_settings(warmup=False), factory), log_level="error")


def test_jpegs_decoded_in_the_batch_answer_like_the_cpu_path(tiny_model):
    good = encode(photo(320, 240, seed=1), "JPEG", quality=90)
    broken = good[: len(good) // 3]  # the header is intact: refused only when decoded
    answers = {}
    for decode in ("cpu", "device"):
        with _serve(tiny_model, decode) as server:
            assert httpx.get(server.url + "/info").json()["decode"] == decode
            ok = post_text(server.url, good, ["a cat"], soft="true", format="rle")
            bad = post_text(server.url, broken, ["a cat"])
            alive = post_text(server.url, good, ["a dog"])
        assert ok.status_code == 200 and alive.status_code == 200
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "undecodable_image"
        answers[decode] = ok.json()["masks"][0]
    cpu, device = answers["cpu"], answers["device"]
    assert abs(cpu["score"] - device["score"]) < 0.01

    def soft(entry) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["soft_png"]))), dtype=int)

    assert np.abs(soft(cpu) - soft(device)).max() <= 2
