"""DDP: each rank on its own device, and a non-finite loss on one rank stops every rank."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from clipseg_serve.training.distributed import resolve_device, select_device
from clipseg_serve.training.train import main as train_main
from clipseg_serve.training.trainer import Trainer

QUICK = ["--init", "random:tiny", "--dataset", "synthetic", "--num-workers", "0"]
#: Rank and step (1-based) whose loss the test turns into NaN.
BAD_RANK, BAD_STEP = 1, 2


@pytest.mark.parametrize(
    ("name", "local_rank", "world", "cuda", "expected"),
    [
        ("auto", 1, 2, True, "cuda:1"),
        ("cuda", 3, 4, True, "cuda:3"),  # not cuda:0 for every rank
        ("auto", 1, 2, False, "cpu"),
        ("cpu", 1, 2, True, "cpu"),
        ("cuda:1", 0, 1, True, "cuda:1"),  # an explicit index, in one process
    ],
)
def test_each_rank_selects_its_local_device(name, local_rank, world, cuda, expected):
    assert select_device(name, local_rank, world, cuda_available=cuda) == torch.device(expected)


@pytest.mark.parametrize(
    ("name", "world", "cuda", "match"),
    [
        ("cuda:1", 2, True, "all 2 ranks on one GPU"),
        ("cuda", 1, False, "CUDA is not available"),
        ("tpu9", 1, True, "unknown device"),
    ],
)
def test_device_selection_errors(name, world, cuda, match):
    with pytest.raises(ValueError, match=match):
        select_device(name, 0, world, cuda_available=cuda)


def test_resolve_device_reads_local_rank_and_sets_the_current_device(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, output: str) -> None:
    """One spawned DDP process: trains with rank BAD_RANK's loss NaN at step BAD_STEP."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
    )  # fmt: skip
    torch.set_num_threads(1)
    real_loss = Trainer._loss

    def loss(self: Trainer, batch, micro_index: int) -> torch.Tensor:
        value = real_loss(self, batch, micro_index)
        if self.info.rank == BAD_RANK and self.step + 1 == BAD_STEP:
            return value * float("nan")
        return value

    Trainer._loss = loss
    stderr = io.StringIO()
    args = [*QUICK, "--steps", "3", "--batch-size", "2", "--eval-every", "0",
            "--output", str(Path(output) / "run")]  # fmt: skip
    with warnings.catch_warnings(), contextlib.redirect_stderr(stderr):
        warnings.simplefilter("ignore")
        code = train_main(args)
    report = {"code": code, "stderr": stderr.getvalue()}
    (Path(output) / f"rank{rank}.json").write_text(json.dumps(report))


def test_nan_on_one_rank_stops_both_ranks(tmp_path):
    """2 processes, gloo on CPU: rank 1's loss turns NaN at step 2; both ranks must stop
    with the message (none may hang in a collective) within the time limit."""
    context = mp.spawn(
        _rank, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + 120
    try:
        while not context.join(timeout=0.2):
            assert time.monotonic() < deadline, "a rank hangs after the NaN loss"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    message = f"the loss became nan at step {BAD_STEP} on rank {BAD_RANK}; stopping all 2 ranks"
    for rank, report in enumerate(reports):
        assert report["code"] == 1, (rank, report["stderr"][-2000:])
        assert message in report["stderr"], (rank, report["stderr"][-2000:])
