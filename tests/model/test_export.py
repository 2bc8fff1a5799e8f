"""Split ONNX export (model.onnx.export, clipseg-export): every graph equals PyTorch under ONNX
Runtime at other batch sizes than the export's, and the graphs chained give the model's
logits for several images and prompts."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from clipseg_serve.model.cli.export import main
from clipseg_serve.model.network.text import tokenize
from clipseg_serve.model.onnx.export import GRAPHS, check_graphs
from clipseg_serve.model.weights import native


@pytest.fixture(scope="module")
def exported(tiny_onnx):
    return tiny_onnx, json.loads((tiny_onnx / "manifest.json").read_text())


def test_every_graph_matches_pytorch(tiny_model, exported):
    folder, manifest = exported
    assert set(manifest["graphs"]) == set(GRAPHS) and manifest["opset"] == 18
    assert json.loads((folder / "manifest.json").read_text())["config"]["input_size"] == (
        tiny_model.config.input_size
    )
    for batch, rows in ((1, 1), (4, 7)):
        for check in check_graphs(tiny_model, folder, batch=batch, rows=rows, seed=batch):
            assert check.max_abs_diff < 1e-4, check
            assert check.max_abs_value > 1e-3  # real outputs, not zeros


def test_chained_graphs_give_the_models_logits(tiny_model, exported):
    """query -> text -> decoder for 2 images x 3 prompts, as the predictor would run them."""
    folder, _ = exported
    run = {g: ort.InferenceSession(str(folder / f"{g}.onnx")) for g in GRAPHS}
    size = tiny_model.config.input_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    tokens = tokenize(["a cat", "a red mug", "sky"], tiny_model.config.backbone.context_length)
    index = torch.tensor([0, 0, 1, 1, 0, 1])
    taps = run["query"].run(None, {"pixels": pixels.numpy()})
    text = run["text"].run(None, {"tokens": tokens.numpy()})[0]
    conditionals = np.concatenate([text, text])
    feeds = {f"tap{i}": t for i, t in enumerate(taps)}
    feeds |= {"conditionals": conditionals, "image_index": index.numpy()}
    logits = run["decoder"].run(None, feeds)[0]
    with torch.inference_mode():
        vectors = tiny_model.embed_text(tokens)
        expected = tiny_model(pixels, torch.cat([vectors, vectors]), index)
    assert logits.shape == (6, size, size)
    assert np.abs(logits - expected.numpy()).max() < 1e-4


def test_clipseg_export_writes_and_checks(tiny_model, tmp_path, capsys):
    weights = native.save_checkpoint(tiny_model, tmp_path / "ckpt", backbone_source="random:0")
    out = tmp_path / "graphs"
    assert main(["--weights", str(weights), "-o", str(out)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["graph"] for line in lines] == list(GRAPHS)
    assert all(line["max_abs_diff"] < 1e-4 for line in lines)
    assert {p.name for p in out.iterdir()} == {f"{g}.onnx" for g in GRAPHS} | {"manifest.json"}
    # An impossible tolerance fails the check, with a message.
    assert main(["--weights", str(weights), "-o", str(out), "--tolerance", "0"]) == 1
    assert "differs from PyTorch" in capsys.readouterr().err
    assert main(["--weights", str(tmp_path / "missing"), "-o", str(out)]) == 2


def test_static_int8_needs_calibration_images(tmp_path, capsys):
    """Refused before anything is loaded; an empty calibration folder is an error too."""
    assert main(["--weights", "random:tiny", "-o", str(tmp_path), "--int8", "static"]) == 2
    assert "--calibrate" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    args = ["--weights", "random:tiny", "-o", str(tmp_path / "out"), "--no-graph-check",
            "--int8", "static", "--calibrate", str(empty)]  # fmt: skip
    assert main(args) == 2
    assert "no readable images" in capsys.readouterr().err
