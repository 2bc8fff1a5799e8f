"""Training end to end: it learns, resumes exactly, runs under torchrun, and the service
serves what it writes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from model.weights.loader import load_model
from service.app import create_app
from tests.service.conftest import make_settings
from tests.service.live import LiveServer
from training.config import TrainConfig, config_from_args
from training.datasets import build_dataset
from training.evaluate import main as eval_main
from training.train import Trainer, TrainingError
from training.train import main as train_main

QUICK = ["--init", "random:tiny", "--dataset", "synthetic", "--num-workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A short CPU run on synthetic shapes with the tiny model (about half a minute)."""
    output = tmp_path_factory.mktemp("run")
    args = [*QUICK, "--steps", "600", "--batch-size", "16", "--lr", "3e-3",
            "--eval-every", "300", "--eval-samples", "200", "--checkpoint-every", "300",
            "--num-workers", "1", "--log-every", "100", "--output", str(output)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(args) == 0
    return output


def test_training_learns_and_keeps_the_best_checkpoint(trained):
    summary = json.loads((trained / "summary.json").read_text())
    initial, best = summary["initial_fg_iou"], summary["best"]["best_fg_iou"]
    print(f"held-out fg IoU: untrained {initial:.3f} -> trained {best:.3f}")
    assert best >= 0.5 and best > initial + 0.3
    meta = json.loads((trained / "best" / "config.json").read_text())
    assert meta["model"]["threshold"] == summary["best"]["best_threshold"]
    assert meta["metrics"]["best_fg_iou"] == best
    assert meta["metrics"]["initial_fg_iou"] == initial
    decoder_bytes = (trained / "best" / "decoder.safetensors").stat().st_size
    assert decoder_bytes < 5_000_000
    rows = (trained / "metrics.csv").read_text().splitlines()
    assert any(",train/loss," in row for row in rows) and any(",val/ap," in row for row in rows)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def test_the_service_serves_the_trained_checkpoint(trained):
    """Started on the checkpoint (its calibrated threshold is the default), the service
    segments NEW synthetic images with IoU > 0.5."""
    best = trained / "best"
    threshold = json.loads((best / "config.json").read_text())["model"]["threshold"]
    settings = make_settings(weights=str(best))
    test_set = build_dataset("synthetic", "", "test", 7, augment=False, negative_prob=0.0)
    with LiveServer(create_app(settings)) as server:
        info = httpx.get(server.url + "/info").json()
        ious = []
        for i in range(40):
            sample = test_set[i]
            buffer = io.BytesIO()
            sample.image.save(buffer, format="PNG")
            response = httpx.post(
                server.url + "/segment/text",
                data={"prompt": sample.phrase},
                files={"image": ("s.png", buffer.getvalue(), "image/png")},
                timeout=30,
            )
            mask = np.asarray(Image.open(io.BytesIO(response.content))) > 0
            ious.append(_iou(mask, sample.mask))
    assert info["threshold"] == threshold and info["weights"]["kind"] == "native"
    print(f"service IoU on new images: mean {np.mean(ious):.3f}")
    assert np.mean(ious) > 0.5


def test_clipseg_eval_reports_and_writes_json(trained, tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = eval_main(["--weights", str(trained / "best"), "--dataset", "synthetic",
                      "--max-samples", "64", "--device", "cpu", "--output", str(out)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["samples"] == 64 and 0.0 <= result["ap"] <= 1.0
    assert f"{result['best_fg_iou']:.4f}" in table
    assert result["per_prompt"]


def _decoder_state(output: Path) -> dict[str, torch.Tensor]:
    return load_model(output / "final").model.decoder.state_dict()


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_continues_exactly(tmp_path, workers):
    """k + k steps with a resume in between equal 2k steps straight (same seed, CPU):
    decoder dropout, data order, supports and mixing weights all continue identically."""
    common = [*QUICK, "--batch-size", "4", "--eval-every", "0", "--num-workers", str(workers),
              "--dataset-options", '{"support_prob": 0.5}', "--accumulate", "2"]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight, split = tmp_path / "straight", tmp_path / "split"
        assert train_main([*common, "--steps", "6", "--output", str(straight)]) == 0
        first = [*common, "--steps", "6", "--checkpoint-every", "3", "--output", str(split)]
        trainer = Trainer(config_from_args(first))
        batches = trainer._loader()
        for _ in range(3):
            trainer._train_step(batches)
        trainer._save_state()  # as if the run had been killed right after step 3
        assert train_main([*first, "--resume", str(split)]) == 0
    a, b = _decoder_state(straight), _decoder_state(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    start = load_model("random:tiny").model.decoder.state_dict()
    assert not all(torch.equal(a[k], start[k]) for k in a)  # it did train


def test_non_finite_loss_stops_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "_loss", lambda self, batch, i: torch.tensor(float("nan")))
    args = [*QUICK, "--steps", "3", "--batch-size", "2", "--eval-every", "0",
            "--output", str(tmp_path)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(args) == 1
    assert "loss became nan at step 1" in capsys.readouterr().err
    with pytest.raises(TrainingError):
        trainer = Trainer(config_from_args(args))
        trainer._train_step(trainer._loader())


def test_config_file_flags_and_validation(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text(json.dumps({"steps": 50, "lr": 0.01, "dataset_options": {"a": 1}}))
    cfg = config_from_args(["--config", str(config_file), "--lr", "0.002"])
    assert (cfg.steps, cfg.lr, cfg.dataset_options) == (50, 0.002, {"a": 1})
    assert cfg.batch_size == 64 and cfg.lr_min == 1e-4  # the paper's defaults
    config_file.write_text(json.dumps({"stepz": 50}))
    with pytest.raises(ValueError, match="stepz"):
        config_from_args(["--config", str(config_file)])
    with pytest.raises(ValueError, match="not divisible"):
        TrainConfig(batch_size=10, accumulate=4).validate()


def test_ddp_two_cpu_processes_under_torchrun(tmp_path):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--standalone", "-m", "training.train", *QUICK, "--steps", "4",
               "--batch-size", "4", "--eval-every", "2", "--eval-samples", "8",
               "--output", str(output)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    # A session of its own, so a hang is cleaned up with every worker torchrun started.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    summaries = [line for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1  # only rank 0 reports and writes
    assert json.loads(summaries[0])["steps"] == 4
    assert sorted(p.name for p in output.iterdir() if (p / "config.json").exists()) == [
        "best",
        "final",
    ]
    assert load_model(output / "final").model.config.variant == "tiny"
