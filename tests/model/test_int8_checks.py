"""Verdicts per kernel class (``model.onnx.int8_checks``): the export's check keeps its images
and records its machine's class; a machine of another class checks at start-up once,
caches its verdict beside the export (or in the user's cache when it cannot write there)
and runs int8 only when it passed; a new export's check outdates the cached verdicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

import clipseg_serve.model.onnx.fidelity
from clipseg_serve.model.onnx.gate import check_export
from clipseg_serve.model.onnx.int8_checks import CACHE_FILE, STORED_IMAGES, STORED_SIDE
from clipseg_serve.model.onnx.int8_kernels import choose_format, kernel_class
from clipseg_serve.model.onnx.runtime import read_manifest
from clipseg_serve.model.onnx.source import load_onnx
from tests.conftest import random_image

PROMPTS = ["a cat", "a red square"]


@pytest.fixture
def checked(tiny_model, tiny_onnx, tmp_path) -> Path:
    """tiny_onnx checked here on 10 images (bar 0.5: random weights)."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_onnx, folder)
    images = []
    for i in range(10):
        path = tmp_path / f"{i}.png"
        random_image(700 - 10 * i, 600, seed=i).save(path)
        images.append(path)
    report = check_export(tiny_model, folder, images, PROMPTS, bar=0.5)
    assert report.kernel_class == kernel_class() and report.int8_format == choose_format().name
    return folder


@pytest.fixture
def checks_run(monkeypatch) -> list[int]:
    """Counts the fidelity comparisons (a start-up check is one)."""
    calls: list[int] = []
    original = clipseg_serve.model.onnx.fidelity.compare_backends

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(clipseg_serve.model.onnx.fidelity, "compare_backends", counted)
    return calls


def _as_another_class(folder: Path, **spec) -> None:
    """Make the export's record one of another machine's class (and change the check)."""
    manifest = read_manifest(folder)
    int8 = manifest["int8"]
    int8["checks"] = {"x86-64 another-class": next(iter(int8["checks"].values()))}
    int8["check"].update(spec)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_export_check_keeps_images_and_records_this_class(checked):
    int8 = read_manifest(checked)["int8"]
    assert list(int8["checks"]) == [kernel_class()]
    record = int8["checks"][kernel_class()]
    assert record["format"] == choose_format().name and record["checked_images"] == 10
    assert int8["check"]["prompts"] == PROMPTS and int8["check"]["bar"] == 0.5
    kept = [checked / name for name in int8["check"]["images"]]
    assert len(kept) == STORED_IMAGES
    for path in kept:
        with Image.open(path) as image:
            assert max(image.size) <= STORED_SIDE and image.format == "PNG"
    loaded = load_onnx(str(checked))
    assert loaded.model.precision == "int8" and "checked at export" in loaded.int8.reason


def test_another_class_checks_at_start_up_once(checked, checks_run):
    _as_another_class(checked)
    first = load_onnx(str(checked))
    assert len(checks_run) == 1 and first.model.precision == "int8"
    assert "checked at start-up" in first.int8.reason
    assert first.int8.record["reference"] == "onnx float32"
    assert first.int8.record["checked_images"] == STORED_IMAGES
    cached = json.loads((checked / CACHE_FILE).read_text())
    assert cached[kernel_class()]["format"] == choose_format().name
    second = load_onnx(str(checked))
    assert len(checks_run) == 1 and second.model.precision == "int8"
    assert "checked at an earlier start" in second.int8.reason


def test_an_export_it_cannot_write_to_caches_in_the_users_folder(
    checked, checks_run, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _as_another_class(checked)
    (checked / CACHE_FILE).mkdir()  # neither readable nor writable as a file
    assert load_onnx(str(checked)).model.precision == "int8"
    (cache,) = (tmp_path / "cache" / "clipseg-serve" / "int8-checks").glob("*.json")
    assert kernel_class() in json.loads(cache.read_text())
    assert load_onnx(str(checked)).model.precision == "int8" and len(checks_run) == 1


def test_a_failed_start_up_check_runs_fp32_and_a_new_check_outdates_the_cache(checked, checks_run):
    _as_another_class(checked, bar=1.01)  # a bar no quantised model reaches
    loaded = load_onnx(str(checked))
    assert loaded.model.precision == "float32" and len(checks_run) == 1
    assert "failed the fidelity check" in loaded.int8.reason and "1.01" in loaded.int8.reason
    _as_another_class(checked, bar=0.5)  # another manifest: the cached verdict is not its
    assert load_onnx(str(checked)).model.precision == "int8" and len(checks_run) == 2


def test_explicit_dtypes_are_not_gated(tiny_onnx):
    forced = load_onnx(str(tiny_onnx), dtype="int8")
    assert forced.model.precision == "int8" and forced.int8.use_int8
    assert forced.model.int8_format == choose_format().name
    assert "not consulted" in forced.int8.reason
    plain = load_onnx(str(tiny_onnx), dtype="float32")
    assert plain.model.precision == "float32" and not plain.int8.use_int8
