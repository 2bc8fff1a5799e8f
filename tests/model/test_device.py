"""Device and precision selection."""

from __future__ import annotations

import pytest
import torch

from model.device import autocast, resolve_device, resolve_dtype


def test_auto_device_and_dtype_follow_the_hardware():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32


def test_explicit_choices_and_errors():
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="float16 autocast"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_autocast_is_a_no_op_in_float32_and_casts_in_bfloat16():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast(torch.device("cpu"), torch.float32):
        assert layer(x).dtype == torch.float32
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
