"""Device and precision selection: bf16/fp16 autocast on CUDA, bf16 autocast on CPUs with
native bf16 (AVX-512 BF16 or AMX), fp32 elsewhere."""

from __future__ import annotations

import contextlib
import functools

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


@functools.cache
def cpu_bf16_support() -> str | None:
    """The CPU's native bf16 instructions ("amx" or "avx512_bf16"), or None.

    Without them bf16 matmuls are emulated and slower than fp32, so ``auto`` only picks
    bf16 on a CPU that has them. torch's own probes (the ones its kernels dispatch on)
    are private; a torch without them counts as no support.
    """
    probes = (("amx", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        check = getattr(torch.cpu, probe, None)
        if check is not None and check():
            return name
    return None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on GPUs that support it (fp16 on older ones); on CPU, bf16 where it
    has native bf16 (``cpu_bf16_support``), fp32 elsewhere."""
    if name == "auto":
        if device.type != "cuda":
            return torch.bfloat16 if cpu_bf16_support() else torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        dtype = DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}") from None
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("float16 autocast is not supported on CPU; use bfloat16 or float32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for ``dtype`` below fp32; a no-op context in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
