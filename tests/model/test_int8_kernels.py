"""Which int8 format this machine's ONNX Runtime kernels compute exactly, and the class
they are named by: the probe against the CPU's own flags, the choice among an export's
formats. (The AVX2 path itself runs under qemu in tests/training/test_int8_avx2.py.)"""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

import clipseg_serve.model.onnx.int8_kernels as kernels
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.onnx.int8_kernels import (
    FORMATS,
    choose_format,
    exact_formats,
    format_named,
    kernel_class,
)
from clipseg_serve.model.onnx.runtime import int8_format_for

#: Classes whose u8 x s8 kernels sum pairs of products in int16 (``vpmaddubsw``).
SATURATING = {"x86-64 avx2", "x86-64 avx512-core"}


def _linux_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_7_bit_format_is_exact_on_every_kernel():
    assert "u8s7" in exact_formats()


def test_the_probe_agrees_with_the_kernel_class():
    """Full-range int8 weights are exact exactly where the class has int32 dot products."""
    assert ("u8s8" in exact_formats()) is (kernel_class() not in SATURATING)
    assert choose_format().name == ("u8s7" if kernel_class() in SATURATING else "u8s8")


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads Linux's CPU flags")
def test_the_kernel_class_follows_the_cpu_flags():
    if platform.machine().lower() not in ("x86_64", "amd64"):
        assert kernel_class() == "arm64" or kernel_class() == platform.machine().lower()
        return
    flags, name = _linux_flags(), kernel_class()
    if "amx_int8" in flags and "amx_tile" in flags:
        assert name == "x86-64 amx"
    elif {"avx512bw", "avx512_vnni"} <= flags:
        assert name == "x86-64 avx512-vnni"
    elif "avx512bw" in flags:
        assert name == "x86-64 avx512-core"
    elif "avx2" in flags:
        assert name == ("x86-64 avx-vnni" if "avx_vnni" in flags else "x86-64 avx2")


def test_choice_takes_the_fastest_exact_format_the_export_has(monkeypatch):
    assert [f.name for f in FORMATS] == ["u8s8", "u8s7"]  # fastest first
    assert choose_format(["u8s7"]).name == "u8s7"
    assert choose_format([]) is None
    monkeypatch.setattr(kernels, "exact_formats", lambda: ("u8s7",))  # a saturating CPU
    assert choose_format(["u8s8", "u8s7"]).name == "u8s7"
    assert choose_format(["u8s8"]) is None
    old_export = {"int8": {"method": "dynamic"}}  # no formats recorded: u8s8 only
    with pytest.raises(WeightsError, match=r"none of the export's int8 formats \(u8s8\)"):
        int8_format_for(old_export)
    monkeypatch.setattr(kernels, "exact_formats", lambda: ("u8s8", "u8s7"))
    assert choose_format(["u8s7", "u8s8"]).name == "u8s8"
    assert int8_format_for(old_export).name == "u8s8"
    with pytest.raises(WeightsError, match="no int8 graphs"):
        int8_format_for({})


def test_formats_are_named():
    assert format_named("u8s7").reduce_range and not format_named("u8s8").reduce_range
    with pytest.raises(ValueError, match="unknown int8 format"):
        format_named("u8u8")
