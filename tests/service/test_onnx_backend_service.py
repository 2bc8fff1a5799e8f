"""CLIPSEG_BACKEND=onnx through the service's own predictor factory: an export folder, or
weights exported at start; the settings that do not fit the backend are refused. (The API
tests run on both backends: test_api.py, test_post_api.py.)"""

from __future__ import annotations

from unittest.mock import ANY

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.onnx.int8_kernels import choose_format, kernel_class
from clipseg_serve.model.onnx.runtime import OnnxClipSeg
from clipseg_serve.service.app import create_app
from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer
from tests.service.test_api import png_array, post_text


def test_the_service_serves_an_export_folder(tiny_onnx):
    image = encode(random_image(72, 40, seed=6))
    settings = make_settings(weights=str(tiny_onnx), backend="onnx", dtype="int8")
    with LiveServer(create_app(settings)) as server:  # the real factory
        info = httpx.get(server.url + "/info").json()
        response = post_text(server.url, image, ["a cat"], threshold="0.4466")
    assert info["backend"] == "onnx" and info["dtype"] == "int8"
    assert info["weights"]["kind"] == "onnx" and len(info["weights"]["sha256"]) == 64
    assert info["providers"] == ["CPUExecutionProvider"]
    # Which integer kernels, which int8 format, and why int8 runs (asked for here).
    assert info["int8"] == {"kernel_class": kernel_class(), "format": choose_format().name,
                            "use_int8": True, "reason": ANY}  # fmt: skip
    assert "not consulted" in info["int8"]["reason"]
    assert response.status_code == 200
    library = Predictor(OnnxClipSeg(tiny_onnx, precision="int8"), device="cpu")
    expected = library.segment(image, ["a cat"], threshold=0.4466).masks[0]
    assert np.array_equal(png_array(response.content) > 0, expected)


def test_other_weights_are_exported_at_start():
    settings = make_settings(weights="random:tiny", backend="onnx")
    with LiveServer(create_app(settings)) as server:
        info = httpx.get(server.url + "/info").json()
        response = post_text(server.url, encode(random_image(30, 20)), ["sky"])
    assert info["backend"] == "onnx" and info["weights"]["kind"] == "onnx-exported"
    assert info["dtype"] == "float32" and response.status_code == 200
    assert info["int8"]["use_int8"] is False and "no fidelity check" in info["int8"]["reason"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backend": "torch", "dtype": "int8"}, "int8 needs backend onnx"),
        ({"backend": "onnx", "dtype": "bfloat16"}, "auto, float32 or int8"),
        ({"backend": "onnx", "compile_batch_sizes": "1,2"}, "for backend torch"),
        ({"backend": "tensorflow"}, "backend"),
    ],
)
def test_settings_that_do_not_fit_the_backend_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        make_settings(**fields)
