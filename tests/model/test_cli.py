"""clipseg-predict end to end on the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from clipseg_serve.model.cli.predict import main
from clipseg_serve.model.weights import native
from tests.conftest import random_image


def test_cli_writes_one_mask_per_prompt(tmp_path, tiny_model, capsys):
    weights = native.save_checkpoint(tiny_model, tmp_path / "ckpt", backbone_source="random:0")
    image = tmp_path / "photo.png"
    random_image(70, 45).save(image)
    out = tmp_path / "out"
    code = main([str(image), "--prompt", "a cat", "--prompt", "the red mug", "--weights",
                 str(weights), "-o", str(out), "--soft", "--device", "cpu"])  # fmt: skip
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["label"] for line in lines] == ["a cat", "the red mug"]
    for line in lines:
        mask = Image.open(line["path"])
        assert mask.mode == "L" and mask.size == (70, 45)
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert int((np.asarray(mask) > 0).sum()) == line["area"]
        assert Image.open(line["soft_path"]).size == (70, 45)


def test_cli_visual_prompt_and_errors(tmp_path, tiny_model, capsys):
    weights = native.save_checkpoint(tiny_model, tmp_path / "ckpt", backbone_source="random:0")
    image, support, mask = tmp_path / "q.png", tmp_path / "s.png", tmp_path / "m.png"
    random_image(40, 30).save(image)
    random_image(50, 50, seed=1).save(support)
    m = np.zeros((50, 50), np.uint8)
    m[10:30, 5:25] = 255
    Image.fromarray(m).save(mask)
    args = [str(image), "--weights", str(weights), "-o", str(tmp_path / "o")]
    assert main([*args, "--support-image", str(support), "--support-mask", str(mask)]) == 0
    assert Image.open(tmp_path / "o" / "00_visual-0.png").size == (40, 30)
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(mask)
    assert main([*args, "--support-image", str(support), "--support-mask", str(mask)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(args) == 2  # neither prompt nor support


def test_parser_choices_are_the_models_own():
    """model.cli.args spells the enums out (importing them imports torch): keep them equal."""
    from clipseg_serve.model.cli import args as cli_args
    from clipseg_serve.model.masks.postprocess import Combine
    from clipseg_serve.model.network.text import Template

    assert tuple(t.value for t in Template) == cli_args.TEMPLATES
    assert tuple(c.value for c in Combine) == cli_args.COMBINES


def test_bad_arguments_fail_before_the_model_loads(tmp_path, monkeypatch, capsys):
    import clipseg_serve.model.backends

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(clipseg_serve.model.backends, "load_predictor", no_loading)
    image = tmp_path / "photo.png"
    random_image(20, 20).save(image)
    cases = [
        ([str(tmp_path / "nosuch.jpg"), "--prompt", "a cat"], "nosuch.jpg': no such file"),
        ([str(image), "--support-image", str(image)], "one --support-mask per"),
        ([str(image), "--prompt", "a", "--prompt", "b", "--support-image", str(image),
          "--support-mask", str(image), "--text-weight", "0.5"], "exactly one --prompt"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(args) == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("clipseg-predict: error: ") and message in line


def test_post_processing_flags(tmp_path, tiny_model, capsys):
    from pycocotools import mask as coco

    from clipseg_serve.model.cli.args import BACKGROUNDS, REFINES
    from clipseg_serve.model.masks.postprocess import Background, Refine

    assert tuple(r.value for r in Refine) == REFINES
    assert tuple(b.value for b in Background) == BACKGROUNDS
    weights = native.save_checkpoint(tiny_model, tmp_path / "ckpt", backbone_source="random:0")
    image = tmp_path / "photo.png"
    random_image(64, 48, seed=3).save(image)
    args = [str(image), "--weights", str(weights), "--device", "cpu", "--prompt", "a cat"]
    out = tmp_path / "inst"
    code = main([*args, "--threshold", "0.0", "--refine", "guided", "--instances",
                 "--polygons", "--polygon-tolerance", "0", "-o", str(out)])  # fmt: skip
    assert code == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["instance"] == 0 and line["bbox"] == [0, 0, 64, 48]  # threshold 0: all on
    annotation = json.loads(Path(line["polygons_path"]).read_text())
    decoded = coco.decode(coco.merge(coco.frPyObjects(annotation["segmentation"], 48, 64)))
    assert decoded.all()
    out = tmp_path / "feather"
    assert main([*args, "--prompt", "grass", "--threshold", "0.45", "--threshold", "0.5",
                 "--feather", "8", "-o", str(out)]) == 0  # fmt: skip
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2
    for entry in lines:
        alpha = np.asarray(Image.open(entry["path"]))
        assert alpha.shape == (48, 64) and int((alpha >= 128).sum()) == entry["area"]
    assert main([*args, "--threshold", "0.4", "--threshold", "0.5", "-o", str(out)]) == 2
    assert "2 --threshold for 1 --prompt" in capsys.readouterr().err
    assert main([*args, "--dilate", "-1", "-o", str(out)]) == 2
    assert "dilate" in capsys.readouterr().err


def test_polygons_past_the_vertex_cap_are_an_error_naming_it(tmp_path, tiny_model, capsys):
    from clipseg_serve.model.cli.args import POLYGON_VERTICES
    from clipseg_serve.model.codecs.polygons import DEFAULT_MAX_VERTICES

    assert POLYGON_VERTICES == DEFAULT_MAX_VERTICES
    weights = native.save_checkpoint(tiny_model, tmp_path / "ckpt", backbone_source="random:0")
    image = tmp_path / "photo.png"
    random_image(64, 48, seed=3).save(image)
    args = [str(image), "--weights", str(weights), "--device", "cpu", "--prompt", "a cat",
            "--threshold", "0.0", "--polygons", "-o", str(tmp_path / "out")]  # fmt: skip
    assert main([*args, "--max-polygon-vertices", "4"]) == 0  # all on: one rectangle
    capsys.readouterr()
    assert main([*args, "--max-polygon-vertices", "3"]) == 2
    assert "more than 3 vertices" in capsys.readouterr().err
    assert main([*args, "--max-polygon-vertices", "0"]) == 2
    assert "--max-polygon-vertices must be >= 1" in capsys.readouterr().err


def test_cli_runs_the_onnx_backend_on_an_export_folder(tmp_path, tiny_onnx, capsys):
    from clipseg_serve.model.inference.predictor import Predictor
    from clipseg_serve.model.onnx.runtime import OnnxClipSeg

    image = tmp_path / "photo.png"
    random_image(64, 40, seed=9).save(image)
    out = tmp_path / "out"
    code = main([str(image), "--prompt", "sky", "--weights", str(tiny_onnx), "--backend", "onnx",
                 "--dtype", "int8", "--threshold", "0.4466", "-o", str(out),
                 "--device", "cpu"])  # fmt: skip
    assert code == 0
    (line,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    library = Predictor(OnnxClipSeg(tiny_onnx, precision="int8"), device="cpu")
    want = library.segment(Image.open(image), ["sky"], threshold=0.4466).masks[0]
    assert np.array_equal(np.asarray(Image.open(line["path"])) > 0, want)
