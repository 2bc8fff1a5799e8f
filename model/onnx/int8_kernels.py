"""Which int8 format ONNX Runtime's integer kernels compute exactly on this machine.

ONNX Runtime multiplies int8 matrices with MLAS kernels chosen at run time by the CPU:

=================  ===========================  ==========================================
kernel class       u8 x s8 (activations x        what follows
                   int8 weights)
=================  ===========================  ==========================================
x86-64 avx2        ``vpmaddubsw``: pairs of      a pair's sum saturates at 32767: full-range
x86-64 avx512-core products summed in int16      int8 weights give wrong sums
x86-64 avx-vnni    ``vpdpbusd``: int32 sums      exact
x86-64 avx512-vnni ``vpdpbusd``                  exact
x86-64 amx         ``tdpbusd`` tiles, int32      exact
arm64              ``sdot`` / widening NEON      exact
=================  ===========================  ==========================================

(``onnxruntime/core/mlas/lib/platform.cpp`` picks them; the quantisation docs name the
saturation and its two cures: ``reduce_range`` or uint8 weights.) So the exports carry
two formats of the int8 vision graphs and each machine runs the fastest one its kernels
compute exactly:

* ``u8s8``: int8 weights over their full range — the fastest wherever it is exact;
* ``u8s7``: int8 weights in 7 bits (``reduce_range``): two products of 255 x 64 stay
  under 32767, so even ``vpmaddubsw`` is exact, at the same speed as ``u8s8``. Its one
  bit less of weight costs little on masks (README, Backends (CPU)), far less than a
  saturated sum.

Exactness is not read from a table but measured: ``exact_formats`` runs ONNX Runtime's own
``MatMulInteger`` on inputs whose pair sums overflow int16 (255 x 127 x 2) and compares
with the exact sum. It is the kernel that will run the model that answers, on
any CPU, under any emulator (qemu's ``-cpu Haswell`` included) and for any future kernel.
``kernel_class`` names the class for logs, ``/info`` and the fidelity checks' records.

Imports onnxruntime only when called (the ``onnx`` extra).
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass

import numpy as np

__all__ = ["FORMATS", "Int8Format", "choose_format", "exact_formats", "kernel_class"]


@dataclass(frozen=True)
class Int8Format:
    """How the int8 vision graphs' weights are quantised (activations are always uint8)."""

    name: str
    #: ONNX Runtime's ``reduce_range``: weights in 7 bits.
    reduce_range: bool
    #: The largest weight magnitude the format uses (the exactness probe's weight).
    max_weight: int
    #: File-name suffix of the graphs: ``query{suffix}.onnx``.
    suffix: str


#: Fastest first; ``choose_format`` takes the first that is exact here.
FORMATS = (
    Int8Format("u8s8", reduce_range=False, max_weight=127, suffix=".int8"),
    Int8Format("u8s7", reduce_range=True, max_weight=64, suffix=".int8-u8s7"),
)
_BY_NAME = {f.name: f for f in FORMATS}


def format_named(name: str) -> Int8Format:
    """The format called ``name``; a ``ValueError`` for an unknown one."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown int8 format {name!r}; use one of {sorted(_BY_NAME)}") from None


def _probe_graph(weight: int, rows: int, depth: int, cols: int) -> bytes:
    """A ``MatMulInteger`` of a uint8 input [rows, depth] by a constant int8 [depth, cols]
    filled with ``weight``, as a serialised ONNX model."""
    from onnx import TensorProto, helper

    weights = np.full((depth, cols), weight, np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        "int8-probe",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [rows, depth])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [rows, cols])],
        [helper.make_tensor("B", TensorProto.INT8, [depth, cols], weights.tobytes(), raw=True)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # readable by every onnxruntime the onnx extra allows
    return model.SerializeToString()


def _is_exact(fmt: Int8Format) -> bool:
    """True when ONNX Runtime's CPU kernels multiply ``fmt``'s extreme values exactly.

    255 against the format's largest weight, in a GEMM (4 rows) and a GEMV (1 row) — MLAS
    has a kernel for each — over a depth that fills every kernel's inner block."""
    import onnxruntime as ort

    depth, cols = 256, 32
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    for rows in (4, 1):
        session = ort.InferenceSession(
            _probe_graph(fmt.max_weight, rows, depth, cols),
            options,
            providers=["CPUExecutionProvider"],
        )
        activations = np.full((rows, depth), 255, np.uint8)
        got = session.run(None, {"A": activations})[0]
        if not (got == 255 * fmt.max_weight * depth).all():
            return False
    return True


@functools.cache
def exact_formats() -> tuple[str, ...]:
    """The names of the formats ONNX Runtime computes exactly on this machine, fastest
    first (a few milliseconds, once per process)."""
    return tuple(f.name for f in FORMATS if _is_exact(f))


def choose_format(available: tuple[str, ...] | list[str] | None = None) -> Int8Format | None:
    """The fastest format among ``available`` (default: all) that is exact here; None
    when none is (the int8 graphs would give wrong sums on this machine)."""
    wanted = [f.name for f in FORMATS] if available is None else list(available)
    for name in exact_formats():
        if name in wanted:
            return _BY_NAME[name]
    return None


def _x86_features() -> dict[str, bool]:
    """numpy's run-time CPU features (read with CPUID and XGETBV, like MLAS's own)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__
    return dict(__cpu_features__)


def _amx() -> bool:
    import torch

    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


@functools.cache
def kernel_class() -> str:
    """The MLAS integer-kernel class of this CPU, e.g. "x86-64 avx512-vnni" (see module).

    AVX-VNNI has no flag in numpy's list; among AVX2 CPUs without AVX-512 it is the one
    whose u8 x s8 products are exact, so the probe tells it apart.
    """
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64"
    if machine not in ("x86_64", "amd64"):
        return machine or "unknown"
    features = _x86_features()
    if _amx():
        name = "amx"
    elif features.get("AVX512BW") and features.get("AVX512VNNI"):
        name = "avx512-vnni"
    elif features.get("AVX512BW"):
        name = "avx512-core"
    elif features.get("AVX2"):
        name = "avx-vnni" if "u8s8" in exact_formats() else "avx2"
    else:
        name = "sse"
    return f"x86-64 {name}"
