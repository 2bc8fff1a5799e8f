"""Device and precision selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clipseg_serve.model import device as device_module
from clipseg_serve.model.device import autocast, cpu_bf16_support, resolve_device, resolve_dtype


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


def test_cpu_bf16_keeps_the_residual_streams_in_the_weights_dtype(tiny_model):
    """Under CPU autocast every transformer block (vision, text, decoder) gets its input in
    the weights' dtype (fp32), so attention keeps its fused path: with a bf16 stream torch
    expands each weight per token, 25x slower at batch 2
    (``model.network.clipseg.in_weight_dtype``). The matmuls inside still run in bf16."""
    seen: dict[str, torch.dtype] = {}
    blocks = {
        "vision": tiny_model.clip.visual.transformer.resblocks[0],
        "text": tiny_model.clip.transformer.resblocks[0],
        "decoder": tiny_model.decoder.blocks[0],
    }
    hooks = [
        block.register_forward_pre_hook(
            lambda _, args, name=name: seen.update({name: args[0].dtype})
        )
        for name, block in blocks.items()
    ]
    size = tiny_model.config.input_size
    try:
        with torch.inference_mode(), autocast(torch.device("cpu"), torch.bfloat16):
            conditionals = tiny_model.embed_phrases(["a cat", "a dog"])
            logits = tiny_model(torch.randn(2, 3, size, size), conditionals)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == {name: torch.float32 for name in blocks}
    assert logits.dtype == torch.bfloat16  # autocast did run the model in bf16
