"""The GPU suite: one command, under 8 minutes, one table of the GPU figures of issue 11.

    python bench/gpu_suite.py --json gpu_suite.json      # on the GPU machine (CUDA)
    python bench/gpu_suite.py --smoke --json smoke.json  # tiny scale, any device (tests)

Run it from a checkout with the project installed (``pip install -e '.[train]'``; the
suite serves and trains *this* checkout's code). ``--sections 13`` runs some sections
only; ``--budget-s`` (default 450) caps the whole run, ``--client-procs`` / ``--conns``
size the closed-loop load (default: a quarter of the host's cores, 2..6, x 32).

Nothing is downloaded: every model is random (``random:rd64-refined``, the full-size
ViT-B/16 + refined rd64 decoder; ``random:tiny`` with ``--smoke``). Each section runs
under its own time cap inside try/except: a failing section puts its error in its row and
the suite goes on; every server and training process it starts is stopped (and, should a
section be cut short, killed by id afterwards); ports are picked free. Rows:

1. **model only** — images/s of ``Predictor.logits(images, conditionals)`` (backbone up
   to block 9 + decoder, one prompt per image, conditionals precomputed as the service
   caches them), in ``torch.inference_mode``, bf16 autocast and fp32, batch 1, 8, 32,
   128, on device-resident random images. Warm-up calls, one synchronised call to size
   the run, then >= 1.5 s timed with CUDA events. FLOPs per image: FlopCounterMode on one
   batch-1 forward (attention decomposed into matmuls so that it is counted; ~77.7
   GFLOP); "% of peak" = FLOPs x images/s / the device's bf16 dense peak (a small table
   keyed on the device name; "n/a" if unknown) — for fp32 rows too, against the same
   bf16 peak. A batch that runs out of memory says so in its row. fp32 matmuls run as
   torch is configured (TF32 off by default). Target: >= 4,000 images/s at batch 128 bf16.
2. **bf16 vs fp32 masks** — a few 1920x1080 photo-like JPEGs (``bench/host_path.py``'s
   ``photo_like``) through ``Predictor.prepare_image``, several prompts; masks at the
   images' own size through ``Predictor.execute`` (text encoder, backbone, decoder,
   rendering) in each precision. Random weights give logits of arbitrary offset, so each
   (image, prompt) is thresholded at the median probability of its fp32 map: masks are
   about half on, the hardest case for agreement. % of pixels equal; target >= 99 %.
3. **service end to end** — the real ``clipseg-serve`` (``bench/server.py``) on loopback,
   2 MP JPEGs (~0.47 MB), 1 prompt, RLE answers, from several client processes
   (``bench/loadgen.py``: raw HTTP/1.1, pre-encoded bodies, every request's bytes
   distinct so no two share a backbone pass). Max throughput: closed loop at high
   concurrency, 200s only (non-200s reported); then p50/p99 latency in an open loop at
   half that rate. Configurations: batching on (defaults) / off
   (``CLIPSEG_MAX_BATCH_IMAGES=1``, ``CLIPSEG_MAX_WAIT_MS=0``), CPU / GPU decode
   (``CLIPSEG_DECODE=cpu|gpu``; a build without that setting ignores it: its rows say so
   and GPU decode, which would repeat the CPU run, is not run). Each server start gets
   at least 45 s; each load runs ~12 s closed + ~8 s open after 2 s of warm-up.
   Targets: >= 1,500 req/s; p99 <= 100 ms at half that rate; on/off >= 5x.
4. **memory** — model only: ``torch.cuda.max_memory_allocated`` over each precision's
   runs; service: the device's ``memory.used`` sampled with ``nvidia-smi`` during the
   load (device-wide: it includes any other process and this suite's own CUDA context),
   and the server's host peak RSS (``VmHWM``). Off CUDA the GPU figures are "n/a".
5. **training** — ``clipseg-train --init random:rd64-refined --dataset synthetic --amp
   bf16 --eval-every 0 --num-workers 6``, 100 steps of batch 64 (global), under
   ``torchrun`` with 2 processes (DDP) when there are >= 2 GPUs, else 1 process;
   samples/s from its ``metrics.csv`` (between the first and last logged step, so
   start-up is excluded; smoke: random:tiny, 5 steps of 4); then the server is started
   on the checkpoint it wrote and one ``/v1/segment/text`` request must return 200 with
   a mask.

The header gives the device, torch/CUDA versions and host CPUs; the footer the wall time.
Verdicts: PASS/FAIL against a target, "n/a" where there is no figure (or in ``--smoke``,
whose scale makes targets meaningless), "-" for rows without a target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import gpu_service
from gpu_runner import SECTIONS, Row, Scale, Suite, full_scale, run_section, smoke_scale
from machine import cpu_model
from server import ROOT

COLUMNS = (("#", 1), ("row", 54), ("value", 16), ("target", 16), ("verdict", 7))


def environment(scale: Scale) -> dict:
    import torch
    from gpu_model import device_name

    cuda = torch.cuda.is_available()
    return {
        "device": device_name() if scale.device.startswith("cuda") else f"CPU ({cpu_model()})",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "fp32_matmul_precision": torch.get_float32_matmul_precision(),
        "python": platform.python_version(),
        "host_cpus": os.cpu_count(),
        "host_cpu": cpu_model(),
        "source": str(ROOT),
        "mode": "smoke" if scale.smoke else "full",
        "variant": scale.variant,
        "settings_known": sorted(_known_settings() & {"decode", "pipeline"}),
    }


def _known_settings() -> set[str]:
    try:
        return gpu_service.settings_supported()
    except Exception:  # an environment line is no reason to stop
        return set()


def _value(row: Row) -> str:
    if row.value is None:
        return "n/a"
    if row.unit in ("images/s", "req/s", "samples/s", "MiB"):
        return f"{row.value:,.0f} {row.unit}" if row.value >= 100 else f"{row.value:.1f} {row.unit}"
    if row.unit == "yes=1":
        return "yes" if row.value else "no"
    precision = 2 if row.unit in ("%", "x") else 1
    return f"{row.value:.{precision}f} {row.unit}"


def table(rows: list[Row]) -> str:
    header = "  ".join(f"{name:<{width}}" for name, width in COLUMNS) + "  note"
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = (str(row.section), row.name, _value(row), row.target or "-", row.verdict)
        note = f"ERROR {row.error}" if row.error else row.note
        lines.append(
            "  ".join(f"{c:<{w}}" for c, (_, w) in zip(cells, COLUMNS, strict=True)) + "  " + note
        )
    return "\n".join(lines)


def report(suite: Suite, env: dict) -> dict:
    return {
        "suite": "clipseg-serve gpu_suite",
        "smoke": suite.scale.smoke,
        "environment": env,
        "sections": {str(k): v for k, v in SECTIONS.items()},
        "rows": [asdict(row) for row in suite.rows],
        "wall_s": time.monotonic() - suite.started,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny scale on any device")
    parser.add_argument("--json", type=Path, help="also write the table here as JSON")
    parser.add_argument("--budget-s", type=float, default=450.0, help="whole-suite time cap")
    parser.add_argument("--client-procs", type=int, help="load-generator processes")
    parser.add_argument("--conns", type=int, help="closed-loop connections per process")
    parser.add_argument("--sections", default="12345", help="which sections, e.g. 13")
    args = parser.parse_args(argv)

    import torch

    if args.smoke:
        scale = smoke_scale("cuda" if torch.cuda.is_available() else "cpu")
    elif not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; run with --smoke elsewhere", file=sys.stderr)
        return 2
    else:
        scale = full_scale(os.cpu_count() or 1)
    overrides = {"client_procs": args.client_procs, "conns": args.conns}
    scale = Scale(**{**asdict(scale), **{k: v for k, v in overrides.items() if v}})
    suite = Suite(scale, args.budget_s)
    env = environment(scale)
    print(
        f"[gpu-suite] {env['device']}, torch {env['torch']} (CUDA {env['cuda']}), "
        f"{env['host_cpus']} host CPUs, {env['mode']}",
        file=sys.stderr,
    )

    import gpu_model

    work = {
        1: gpu_model.model_only,
        2: gpu_model.agreement,
        3: gpu_service.service,
        4: gpu_service.memory,
        5: gpu_service.training,
    }
    interrupted, number = False, 1
    try:
        for number in sorted({int(c) for c in args.sections if c in "12345"}):
            if number >= 3:  # the service's GPU memory is read device-wide: free ours
                suite.release_model()
            run_section(suite, number, work[number])
    except KeyboardInterrupt:  # still print what was measured
        interrupted = True
        suite.add(Row(number, SECTIONS[number], error="interrupted (Ctrl-C)"))
    finally:
        suite.cleanup()
        shutil.rmtree(suite.tmp, ignore_errors=True)
    result = report(suite, env)
    print(
        f"\nclipseg-serve GPU suite: {env['device']}, torch {env['torch']} "
        f"(CUDA {env['cuda']}), {env['host_cpus']} host CPUs, {env['mode']} "
        f"(random:{scale.variant})"
    )
    print(table(suite.rows))
    print(f"wall time {result['wall_s']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
