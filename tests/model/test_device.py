"""Device and precision selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model import device as device_module
from model.device import autocast, cpu_bf16_support, resolve_device, resolve_dtype


def _flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in
            line.split(":", 1)[1].split()}  # fmt: skip


def test_auto_device_and_dtype_follow_the_hardware():
    device = resolve_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    native = cpu_bf16_support()
    expected = torch.bfloat16 if native else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux's /proc/cpuinfo")
def test_native_bf16_detection_agrees_with_the_cpu_flags():
    """torch's probes against the kernel's own list of the CPU's instructions."""
    flags = _flags()
    if "amx_tile" in flags:
        assert cpu_bf16_support() == "amx"
    elif "avx512_bf16" in flags:
        assert cpu_bf16_support() == "avx512_bf16"
    else:
        assert cpu_bf16_support() is None


def test_auto_is_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: None)
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(device_module, "cpu_bf16_support", lambda: "avx512_bf16")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16


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
