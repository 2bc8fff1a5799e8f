"""The onnx backend behind ``Predictor``: the same masks as the torch backend through the
same batching, prompts and post-processing (tiny model), its precision rules and loaders.
The full-size parity lives in test_onnx_parity.py."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import onnxruntime
import pytest
import torch

from clipseg_serve.model.backends import load_predictor
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.inference.batch import SegmentRequest
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.masks.postprocess import PostProcess
from clipseg_serve.model.onnx.int8_kernels import choose_format, kernel_class
from clipseg_serve.model.onnx.runtime import OnnxClipSeg, read_manifest
from clipseg_serve.model.onnx.source import load_onnx
from tests.conftest import random_image


@pytest.fixture(scope="module")
def onnx_predictor(tiny_onnx):
    return Predictor(OnnxClipSeg(tiny_onnx), device="cpu")


@pytest.fixture(scope="module")
def torch_predictor(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor(tiny_model, device="cpu", dtype="float32")


def _median(p: Predictor, image, prompt: str = "a cat") -> float:
    """The median probability of ``prompt``'s map: the random tiny model's maps are
    nearly flat, and a threshold there gives masks with both values (where a difference
    between the backends would show)."""
    pixels = p.prepare_image(image).pixels[None]
    return float(torch.sigmoid(p.logits(pixels, p.text_embeddings([prompt]))).median())


def _support():
    image = random_image(70, 50, seed=11)
    mask = np.zeros((50, 70), np.uint8)
    mask[10:40, 20:60] = 1
    return image, mask


def test_text_visual_and_hybrid_masks_equal_the_torch_backend(onnx_predictor, torch_predictor):
    image = random_image(90, 61, seed=1)
    for predictor in (onnx_predictor, torch_predictor):
        predictor.clear_text_cache()
    results = {}
    for name, p in (("onnx", onnx_predictor), ("torch", torch_predictor)):
        visual = p.visual_embedding([_support()])
        hybrid = p.hybrid(p.text_embeddings(["a red mug"])[0], visual, 0.3)
        cut = _median(torch_predictor, image)
        results[name] = [
            p.segment(image, ["a cat", "the red mug on the table", "sky"], soft=True,
                      threshold=cut),
            p.segment(image, conditionals=torch.stack([visual, hybrid]), soft=True,
                      threshold=cut),
            p.segment(image, ["a cat"], template="ensemble", negative_prompts=["sky"],
                      threshold=cut),
        ]  # fmt: skip
    for got, want in zip(results["onnx"], results["torch"], strict=True):
        assert 0.05 < want.masks.mean() < 0.95
        assert np.array_equal(got.masks, want.masks)
        if want.soft is not None:
            assert np.abs(got.soft.astype(int) - want.soft.astype(int)).max() <= 1
        assert np.allclose(got.scores, want.scores, atol=1e-4)


def test_a_batch_of_requests_goes_through_the_same_plan(onnx_predictor, torch_predictor):
    """Three requests, two distinct images, shared phrases and post-processing: the plan
    runs the query graph once per image and the decoder over every row."""
    images = [random_image(64, 48, seed=s) for s in (2, 3)]

    cut = [_median(torch_predictor, image, "sky") for image in images]

    def requests(p: Predictor) -> list[SegmentRequest]:
        prepared = [p.prepare_image(i, guide=True) for i in images]
        post = PostProcess(refine="guided", min_area=4, instances=True)
        return [
            SegmentRequest(pixels=prepared[0].pixels, size=prepared[0].size, image_key="a",
                           prompts=("a cat", "sky"), threshold=cut[0]),
            SegmentRequest(pixels=prepared[1].pixels, size=prepared[1].size, image_key="b",
                           prompts=("sky",), post=post, guide=prepared[1].guide,
                           threshold=cut[1]),
            SegmentRequest(pixels=prepared[0].pixels, size=prepared[0].size, image_key="a",
                           prompts=("a dog", "sky"), combine="union", threshold=cut[0]),
        ]  # fmt: skip

    got = onnx_predictor.segment_batch(requests(onnx_predictor))
    want = torch_predictor.segment_batch(requests(torch_predictor))
    for g, w in zip(got, want, strict=True):
        assert g is not None and w is not None
        assert 0.05 < w.masks.mean() < 0.95
        assert np.array_equal(g.masks, w.masks) and g.labels == w.labels
        assert (g.instances is None) == (w.instances is None)


def test_int8_runs_the_quantised_vision_graphs(tiny_onnx, torch_predictor):
    """In the format this machine would choose (``u8s8`` where its kernels are exact,
    ``u8s7`` on AVX2): what it serves, so what must be close here."""
    int8 = Predictor(OnnxClipSeg(tiny_onnx, precision="int8"), device="cpu")
    fmt = choose_format()
    assert int8.describe()["dtype"] == "int8" and int8.model.int8_format == fmt.name
    wanted = {f"query{fmt.suffix}.onnx", f"visual{fmt.suffix}.onnx"}
    assert {f.name for f in int8.model.files} >= wanted
    image = random_image(80, 60, seed=4)
    got = int8.logits(int8.prepare_image(image).pixels[None], int8.text_embeddings(["a cat"]))
    want = torch_predictor.logits(
        torch_predictor.prepare_image(image).pixels[None],
        torch_predictor.text_embeddings(["a cat"]),
    )
    diff = float((got - want).abs().max())
    # Quantised (not bit-equal), but close: the int8 weights are per channel.
    assert 0 < diff < 0.05 * float(want.abs().max())


def test_describe_reports_the_backend_and_its_providers(onnx_predictor, torch_predictor):
    described = onnx_predictor.describe()
    assert described["backend"] == "onnx" and described["dtype"] == "float32"
    assert described["providers"] == ["CPUExecutionProvider"]
    assert torch_predictor.describe()["backend"] == "torch"
    assert "providers" not in torch_predictor.describe()


def test_precision_rules(tiny_onnx):
    model = OnnxClipSeg(tiny_onnx)
    with pytest.raises(ValueError, match="runs float32"):
        Predictor(model, device="cpu", dtype="bfloat16")
    with pytest.raises(ValueError, match="compile_buckets"):
        Predictor(model, device="cpu", compile_buckets=(1,))
    with pytest.raises(ValueError, match="unknown precision"):
        OnnxClipSeg(tiny_onnx, precision="float16")
    with pytest.raises(ValueError, match="float32 or int8"):
        load_onnx(str(tiny_onnx), dtype="bfloat16")
    with pytest.raises(ValueError, match="unknown int8 format"):
        OnnxClipSeg(tiny_onnx, precision="int8", int8_format="u4s4")


def test_auto_runs_int8_only_with_a_passing_record_for_this_kernel_class(tiny_onnx, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(tiny_onnx, folder)
    loaded = load_onnx(str(folder))  # int8 not checked yet, and no images to check it on
    assert loaded.model.precision == "float32" and not loaded.int8.use_int8
    assert "never checked" in loaded.int8.reason
    fmt = choose_format().name
    record = {"format": fmt, "onnxruntime": onnxruntime.__version__, "recommended": True,
              "bar": 0.95, "checked_images": 4, "fidelity": {"mean_iou": 0.99}}  # fmt: skip
    manifest = read_manifest(folder)
    manifest["int8"]["checks"] = {kernel_class(): record}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_onnx(str(folder))
    assert loaded.model.precision == "int8" and loaded.kind == "onnx"
    assert loaded.model.int8_format == fmt and kernel_class() in loaded.int8.reason
    assert load_onnx(str(folder), dtype="float32").model.precision == "float32"
    with pytest.raises(WeightsError, match="holds 'tiny'"):
        load_onnx(str(folder), variant="rd64-refined")
    # A failed record, or one of another kernel class, format or onnxruntime, says
    # nothing good about this machine.
    others = ({"recommended": False}, {"format": "u8s8" if fmt == "u8s7" else "u8s7"},
              {"onnxruntime": "0.0"})  # fmt: skip
    for other in others:
        manifest["int8"]["checks"] = {kernel_class(): record | other}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        assert load_onnx(str(folder)).model.precision == "float32"
    manifest["int8"]["checks"] = {"x86-64 some-other-class": record}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert load_onnx(str(folder)).model.precision == "float32"


def test_missing_int8_graphs_and_foreign_folders_are_weights_errors(tiny_onnx, tmp_path):
    folder = tmp_path / "fp32-only"
    shutil.copytree(tiny_onnx, folder)
    for path in folder.glob("*.int8*.onnx"):
        path.unlink()
    with pytest.raises(WeightsError, match=r"query\.int8.*\.onnx.*--int8"):
        OnnxClipSeg(folder, precision="int8")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(WeightsError, match="not written by clipseg-export"):
        OnnxClipSeg(tmp_path / "other")
    with pytest.raises(WeightsError, match="not a clipseg-export folder"):
        read_manifest(tmp_path)


def test_from_source_loads_an_export_folder(tiny_onnx):
    predictor = load_predictor(str(tiny_onnx), backend="onnx", device="cpu")
    described = predictor.describe()
    assert described["backend"] == "onnx" and described["weights"]["kind"] == "onnx"
    assert described["variant"] == "tiny"
    with pytest.raises(ValueError, match="unknown backend"):
        load_predictor(str(tiny_onnx), backend="tensorflow")


def test_int8_graphs_the_manifest_does_not_list_are_not_used(tiny_onnx, tmp_path):
    """A re-export into the same folder removes the old int8 graphs; int8 files that the
    manifest does not list (copied in by hand) are refused, not run."""
    folder = tmp_path / "export"
    shutil.copytree(tiny_onnx, folder)
    manifest = read_manifest(folder)
    del manifest["int8"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="int8 graphs in its manifest"):
        OnnxClipSeg(folder, precision="int8")


def test_auto_device_is_the_cpu_without_a_gpu_provider(monkeypatch):
    import onnxruntime as ort

    from clipseg_serve.model.onnx.source import resolve_onnx_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert resolve_onnx_device("auto") == torch.device("cpu")
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    assert resolve_onnx_device("auto") == torch.device("cuda")
    assert resolve_onnx_device("cpu") == torch.device("cpu")


def test_cuda_devices_ask_for_the_gpu_providers_first(monkeypatch):
    import onnxruntime as ort

    from clipseg_serve.model.onnx.runtime import providers_for

    assert providers_for(torch.device("cpu")) == ["CPUExecutionProvider"]
    every = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: every)
    assert providers_for(torch.device("cuda:1")) == [
        ("TensorrtExecutionProvider", {"device_id": 1}),
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="needs onnxruntime-gpu"):
        providers_for(torch.device("cuda"))
