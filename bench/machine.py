"""The machine a benchmark ran on, for the line printed beside its figures."""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: CPU flags that change the model's speed or numerics (bf16 and int8 kernels).
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpuinfo(key: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_description() -> str:
    """Model name, the kernel-relevant flags it has, and the cores this process may use."""
    flags = set((_cpuinfo("flags") or "").split())
    present = [flag for flag in KERNEL_FLAGS if flag in flags]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()} ({' '.join(present) or 'no AVX2'}), {cores} cores"
