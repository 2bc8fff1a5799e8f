"""--init: the paper's recipe by default (OpenAI CLIP + fresh rd64 decoder), errors on one
line, and the clip recipe end to end with a local backbone file (no download here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import clipseg_serve.training.initial
from clipseg_serve.model.config import get_variant
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.weights.loader import build_random, load_model
from clipseg_serve.training.config import TrainConfig
from clipseg_serve.training.initial import load_initial
from clipseg_serve.training.train import main as train_main


def test_default_init_is_openai_clip_with_a_fresh_rd64_decoder(monkeypatch):
    cfg = TrainConfig()
    asked = []

    def offline(source, config):
        asked.append((source, config.variant, config.backbone.name))
        raise WeightsError("no network")

    monkeypatch.setattr(clipseg_serve.training.initial, "backbone_state", offline)
    with pytest.raises(WeightsError):
        load_initial(cfg.init, variant=cfg.variant, backbone=cfg.backbone)
    assert asked == [("openai", "rd64", "ViT-B-16")]


def test_unloadable_weights_fail_on_one_line_without_traceback(monkeypatch, tmp_path, capsys):
    def offline(source, config):
        raise WeightsError("cannot fetch the OpenAI ViT-B/16 weights\n  fixes: ...")

    monkeypatch.setattr(clipseg_serve.training.initial, "backbone_state", offline)
    code = train_main(["--dataset", "synthetic", "--output", str(tmp_path), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "clipseg-train: error: cannot fetch the OpenAI ViT-B/16 weights fixes: ..."
    )


@pytest.fixture
def backbone_file(tmp_path):
    """A tiny CLIP's weights as a local file: what --backbone takes offline."""
    clip = build_random(get_variant("tiny"), seed=5).clip
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, path)
    return path, clip.state_dict()


def test_clip_init_loads_the_backbone_and_seeds_a_fresh_decoder(backbone_file):
    path, expected = backbone_file
    torch.manual_seed(0)
    first = load_initial("clip", variant="tiny", backbone=str(path))
    torch.manual_seed(0)
    again = load_initial("clip", variant="tiny", backbone=str(path))
    assert first.kind == "clip" and first.backbone_source == str(path)
    clip = first.model.clip.state_dict()
    assert all(torch.equal(clip[k], expected[k]) for k in expected)
    torch.manual_seed(1)
    other = load_initial("clip", variant="tiny", backbone=str(path))
    decoder, seeded = first.model.decoder.state_dict(), again.model.decoder.state_dict()
    assert all(torch.equal(decoder[k], seeded[k]) for k in decoder)  # from the seed...
    fresh = other.model.decoder.state_dict()
    assert not all(torch.equal(decoder[k], fresh[k]) for k in decoder)  # ...and only it


def test_training_from_clip_writes_a_checkpoint_with_that_backbone(backbone_file, tmp_path):
    path, expected = backbone_file
    output = tmp_path / "run"
    args = ["--init", "clip", "--variant", "tiny", "--backbone", str(path), "--steps", "2",
            "--batch-size", "2", "--eval-every", "0", "--num-workers", "0",
            "--output", str(output)]  # fmt: skip
    assert train_main(args) == 0
    loaded = load_model(output / "final")
    assert loaded.backbone_source == str(path) and loaded.model.config.variant == "tiny"
    clip = loaded.model.clip.state_dict()
    assert all(torch.equal(clip[k], expected[k]) for k in expected)


def test_offline_first_run_is_one_line_naming_the_train_flags(tmp_path):
    """The real default (OpenAI CLIP through open_clip) with no network and an empty cache:
    one error line with fixes worded for clipseg-train, and none of open_clip's own log
    lines (it logs a download ERROR through the root logger)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-m", "clipseg_serve.training.train",
         "--output", str(tmp_path / "run"), "--steps", "1"],
        capture_output=True, text=True, env=env, timeout=120, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    assert not [line for line in lines if "open_clip" in line or " root " in line], lines
    last = lines[-1]
    assert last.startswith("clipseg-train: error: cannot load the weights 'openai': ")
    assert "HF_HUB_OFFLINE is set" in last
    assert "--init random:tiny" in last and "--weights" not in last and "CLIPSEG_" not in last
