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

from clipseg_serve.model.weights.loader import load_model
from clipseg_serve.service.app import create_app
from clipseg_serve.training.config import TrainConfig, config_from_args
from clipseg_serve.training.datasets import build_dataset
from clipseg_serve.training.evaluate import main as eval_main
from clipseg_serve.training.train import main as train_main
from clipseg_serve.training.trainer import Trainer, TrainingError
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

QUICK = ["--init", "random:tiny", "--dataset", "synthetic", "--num-workers", "0"]


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
    # The paper's metric names reach the logs: binary IoU, class mIoU (synthetic shapes
    # have 15 classes), the fixed thresholds.
    for tag in ("val/binary_iou_0.5", "val/best_miou", "val/fg_iou_0.4", "val/ap_trapezoid"):
        assert any(f",{tag}," in row for row in rows), tag
    # final/ carries the evaluation of the final weights (step 600), not best/'s.
    final = json.loads((trained / "final" / "config.json").read_text())
    assert final["metrics"]["step"] == 600 == summary["final"]["step"]
    assert final["metrics"]["best_fg_iou"] == summary["final"]["best_fg_iou"]
    assert final["model"]["threshold"] == summary["final"]["best_threshold"]


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
                server.url + "/v1/segment/text",
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
    captured = capsys.readouterr()
    table = captured.out
    result = json.loads(out.read_text())
    assert result["samples"] == 64 and 0.0 <= result["ap"] <= 1.0
    assert len(result["thresholds"]) == 49 and result["classes"] == 15
    assert f"{result['best_fg_iou']:.4f}" in table and f"{result['best_miou']:.4f}" in table
    assert result["per_prompt"]
    assert "eval" in captured.err and "64/64" in captured.err  # the progress bar


def test_clipseg_eval_measures_refinement(trained, tmp_path, capsys):
    results = {}
    for refine in ("none", "guided"):
        out = tmp_path / f"{refine}.json"
        code = eval_main(["--weights", str(trained / "best"), "--dataset", "synthetic",
                          "--max-samples", "16", "--device", "cpu", "--refine", refine,
                          "--output", str(out), "--no-progress"])  # fmt: skip
        assert code == 0
        results[refine] = json.loads(out.read_text())
    capsys.readouterr()
    none, guided = results["none"], results["guided"]
    assert 0.0 <= guided["best_fg_iou"] <= 1.0 and 0.0 <= guided["ap"] <= 1.0
    assert guided["ap"] != none["ap"]  # the maps really went through the guided filter


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
    assert (cfg.init, cfg.variant, cfg.backbone) == ("clip", None, "openai")
    config_file.write_text(json.dumps({"stepz": 50}))
    with pytest.raises(ValueError, match="stepz"):
        config_from_args(["--config", str(config_file)])
    with pytest.raises(ValueError, match="not divisible"):
        TrainConfig(batch_size=10, accumulate=4).validate()


def test_ddp_two_cpu_processes_under_torchrun(tmp_path):
    output = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--standalone", "-m", "clipseg_serve.training.train", *QUICK, "--steps", "4",
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


def _checkpoint(folder: Path) -> tuple[float, dict]:
    meta = json.loads((folder / "config.json").read_text())
    return meta["model"]["threshold"], meta["metrics"]


def test_final_gets_its_own_evaluation_and_threshold(tmp_path, monkeypatch):
    """best/ keeps the best validation's threshold and metrics; final/ gets those of the
    final weights, evaluated at the last step even off the --eval-every grid."""
    results = iter([(0.1, 0.5), (0.9, 0.3), (0.5, 0.6), (0.6, 0.7)])  # steps 0, 2, 4, 5
    steps = []

    def fake_evaluation(model, dataset, device, **kwargs):
        fg_iou, threshold = next(results)
        return {"best_fg_iou": fg_iou, "best_threshold": threshold, "ap": None, "fg_iou": []}

    monkeypatch.setattr("clipseg_serve.training.trainer.evaluate_dataset", fake_evaluation)
    original = Trainer._evaluate

    def evaluate(self):
        steps.append(self.step)
        return original(self)

    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    args = [*QUICK, "--steps", "5", "--batch-size", "2", "--eval-every", "2",
            "--output", str(tmp_path)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(args) == 0
    assert steps == [0, 2, 4, 5]
    best_threshold, best = _checkpoint(tmp_path / "best")
    final_threshold, final = _checkpoint(tmp_path / "final")
    assert (best_threshold, best["best_fg_iou"], best["step"]) == (0.3, 0.9, 2)
    assert (final_threshold, final["best_fg_iou"], final["step"]) == (0.7, 0.6, 5)
    assert final["ap"] is None and final["initial_fg_iou"] == 0.1  # undefined stays null


def test_without_validation_checkpoints_carry_no_metrics(tmp_path):
    args = [*QUICK, "--steps", "2", "--batch-size", "2", "--eval-every", "0",
            "--output", str(tmp_path)]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train_main(args) == 0
        start = load_model("random:tiny").model.config.threshold
    for name in ("best", "final"):
        threshold, metrics = _checkpoint(tmp_path / name)
        assert threshold == start and metrics == {"step": 2}  # nothing calibrated
