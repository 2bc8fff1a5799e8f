"""The GPU suite's frame: scales, rows, the per-section time cap, process clean-up.

See ``bench/gpu_suite.py``. Standard library only: the load generator's spawned processes
re-import the suite's main module, and they should start in a moment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

SECTIONS = {
    1: "model only",
    2: "bf16 vs fp32 masks",
    3: "service end to end",
    4: "memory",
    5: "training",
}
#: The alarm that stops a section which overran its cap (a hang) comes this much later;
#: the sections themselves plan their work to end inside the cap.
GRACE_S = 15.0


class SectionTimeout(BaseException):
    """Raised by the alarm in a section past its cap (BaseException: no section's own
    ``except Exception`` swallows it)."""


@dataclass(frozen=True)
class Scale:
    """How big each section runs: full size on a GPU, or ``--smoke``."""

    smoke: bool
    variant: str
    device: str
    batches: tuple[int, ...]
    warmup: int
    min_seconds: float
    agreement_images: int
    prompts: tuple[str, ...]
    jpegs: int  # distinct 1920x1080 JPEGs for the service
    client_procs: int
    conns: int  # closed-loop connections per client process
    load_warmup_s: float
    closed_s: float
    open_s: float
    train_steps: int
    train_batch: int
    train_workers: int
    caps: dict[int, float]


PROMPTS = ("a cat", "the red mug", "something to sit on", "the sky", "a person")


def full_scale(cpus: int) -> Scale:
    return Scale(
        smoke=False,
        variant="rd64-refined",
        device="cuda",
        batches=(1, 8, 32, 128),
        warmup=3,
        min_seconds=1.5,
        agreement_images=4,
        prompts=PROMPTS,
        jpegs=8,
        client_procs=max(2, min(6, cpus // 4)),
        conns=32,
        load_warmup_s=2.0,
        closed_s=12.0,
        open_s=8.0,
        train_steps=100,
        train_batch=64,
        train_workers=6,
        caps={1: 60, 2: 30, 3: 240, 4: 5, 5: 130},
    )


def smoke_scale(device: str) -> Scale:
    return Scale(
        smoke=True,
        variant="tiny",
        device=device,
        batches=(1, 2),
        warmup=1,
        min_seconds=0.05,
        agreement_images=2,
        prompts=PROMPTS[:3],
        jpegs=2,
        client_procs=2,
        conns=4,
        load_warmup_s=0.5,
        closed_s=2.0,
        open_s=1.5,
        train_steps=5,
        train_batch=4,
        train_workers=0,
        caps={1: 60, 2: 60, 3: 120, 4: 5, 5: 90},
    )


@dataclass
class Row:
    section: int
    name: str
    value: float | None = None
    unit: str = ""
    target: str = ""
    verdict: str = "-"  # PASS | FAIL | n/a | - (no target)
    note: str = ""
    error: str | None = None
    details: dict = field(default_factory=dict)


class Suite:
    """The rows so far, the shared state of the sections, and every process started."""

    def __init__(self, scale: Scale, budget_s: float) -> None:
        self.scale = scale
        self.started = time.monotonic()
        self.deadline = self.started + budget_s
        self.rows: list[Row] = []
        self.memory: dict[str, dict] = {}  # section 4's figures, gathered by 1 and 3
        self.processes: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="clipseg-gpu-suite-"))
        self._model = None

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def judge(self, value: float | None, ok: bool) -> str:
        if value is None or self.scale.smoke:
            return "n/a"
        return "PASS" if ok else "FAIL"

    def model(self):
        """The random model of ``scale.variant`` (built once, shared by sections 1-2)."""
        if self._model is None:
            # Here, not at the top: the runner itself imports no torch.
            from clipseg_serve.model.config import get_variant
            from clipseg_serve.model.weights.loader import build_random

            self._model = build_random(get_variant(self.scale.variant), seed=0).eval()
        return self._model

    def release_model(self) -> None:
        """Drop the model of sections 1-2 and return its cached device memory."""
        self._model = None
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def track(self, process: subprocess.Popen) -> subprocess.Popen:
        self.processes.append(process)
        return process

    def cleanup(self) -> None:
        """Kill, by id, whatever this suite started that still runs: tracked processes
        (their process groups for torchrun) and servers a cut-short start left behind."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(OSError):
                    if _own_group(process.pid):  # torchrun and its ranks
                        os.killpg(process.pid, signal.SIGKILL)
                    else:
                        process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
        self.processes = [p for p in self.processes if p.poll() is None]
        for pid in _stray_children():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _own_group(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return os.getpgid(pid) == pid
    return False


def _stray_children() -> list[int]:
    """Ids of this process's children that run the server or the trainer (started by a
    section whose start was interrupted before it could track them)."""
    strays = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if ppid == os.getpid() and (b"service.main" in command or b"training." in command):
                strays.append(int(entry.name))
    return strays


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:300]


def run_section(suite: Suite, number: int, work: Callable[[Suite, float], None]) -> None:
    """Run ``work(suite, deadline)`` under the section's cap; errors become its row."""
    title = SECTIONS[number]
    remaining = suite.deadline - time.monotonic()
    if remaining < 10:
        suite.add(Row(number, title, error="skipped: the suite's time budget is spent"))
        return
    cap = min(suite.scale.caps[number], remaining)
    before = len(suite.rows)
    print(f"[gpu-suite] section {number}: {title} (cap {cap:.0f} s)", file=sys.stderr)

    def alarm(signum, frame):
        raise SectionTimeout

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, cap + GRACE_S)
    try:
        work(suite, time.monotonic() + cap)
    except SectionTimeout:
        suite.add(Row(number, title, error=f"stopped at its time cap ({cap:.0f} s)"))
    except Exception as exc:
        suite.add(Row(number, title, error=one_line(exc)))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        suite.cleanup()
    if len(suite.rows) == before:
        suite.add(Row(number, title, error="the section produced no row"))
