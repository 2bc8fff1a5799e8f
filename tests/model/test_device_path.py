"""The device side of a batch: 8-bit uploads normalised on the device, the launch/collect
split, pinned copies, JPEG decoding on the device (torchvision; on the CPU here, nvJPEG in
the gpu-marked tests) and bf16 weights."""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from clipseg_serve.model.errors import ImageDecodeError
from clipseg_serve.model.imaging.device_decode import DeferredJpeg, decode_on_device, orient, squash
from clipseg_serve.model.imaging.image_modes import upright
from clipseg_serve.model.imaging.transforms import normalize_pixels, to_model_input, to_model_pixels
from clipseg_serve.model.inference.batch import SegmentRequest, plan_batch
from clipseg_serve.model.inference.predictor import Predictor
from clipseg_serve.model.inference.transfer import Transfers
from tests.conftest import encode, random_image

PROMPTS = ["a cat", "grass", "the sky"]


def photo(width: int = 400, height: int = 300, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus mild noise: JPEG-friendly like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], -1)
    rgb += rng.normal(0, 6, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, orientation: int | None = None, **kwargs) -> bytes:
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    return encode(image, "JPEG", quality=92, **kwargs)


@pytest.fixture
def device_predictor(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Predictor(tiny_model, device="cpu", dtype="float32", decode="device")


# ------------------------------------------------------------------ 8-bit uploads
def test_eight_bit_pixels_normalised_later_are_the_same_input():
    image = random_image(97, 61, seed=2)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = to_model_pixels(image, 64)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 64, 64)
    assert torch.equal(normalize_pixels(pixels, mean, std), to_model_input(image, 64, mean, std))
    with pytest.raises(ValueError, match="uint8"):
        normalize_pixels(pixels.float(), mean, std)


def test_logits_of_uint8_and_of_normalised_float_images_are_identical(predictor):
    prepared = predictor.prepare_image(random_image(50, 40, seed=1))
    assert prepared.pixels.dtype == torch.uint8
    cfg = predictor.config
    floats = normalize_pixels(prepared.pixels, cfg.mean, cfg.std)
    conds = predictor.text_embeddings(PROMPTS[:1])
    assert torch.equal(
        predictor.logits(prepared.pixels[None], conds), predictor.logits(floats[None], conds)
    )


def test_a_batch_mixing_uint8_and_float_images_is_normalised_once_each(predictor):
    a = predictor.prepare_image(random_image(30, 30, seed=1))
    b = predictor.prepare_image(random_image(30, 30, seed=2))
    cfg = predictor.config
    float_b = normalize_pixels(b.pixels, cfg.mean, cfg.std)
    mixed = [
        SegmentRequest(a.pixels, a.size, "a", prompts=("x",)),
        SegmentRequest(float_b, b.size, "b", prompts=("x",)),
    ]
    same = [
        SegmentRequest(a.pixels, a.size, "a", prompts=("x",)),
        SegmentRequest(b.pixels, b.size, "b", prompts=("x",)),
    ]
    for got, want in zip(
        predictor.segment_batch(mixed), predictor.segment_batch(same), strict=True
    ):
        assert np.array_equal(got.packed_masks, want.packed_masks)
        assert np.array_equal(got.scores, want.scores)


# ------------------------------------------------------------------ launch / collect
def test_two_launches_before_either_collect_give_the_sequential_answers(predictor):
    """A pipelined worker launches batch N+1 before collecting N: nothing is shared."""
    plans = []
    for seed in (3, 4):
        prepared = predictor.prepare_image(random_image(45, 35, seed=seed))
        request = SegmentRequest(
            prepared.pixels, prepared.size, str(seed), prompts=PROMPTS, soft=True, runs=True
        )
        plans.append(plan_batch([request]))
    sequential = [predictor.execute(plan)[0] for plan in plans]
    first, second = (predictor.launch(plan) for plan in plans)
    overlapped = [predictor.collect(second)[0], predictor.collect(first)[0]][::-1]
    for got, want in zip(overlapped, sequential, strict=True):
        assert np.array_equal(got.packed_masks, want.packed_masks)
        assert np.array_equal(got.soft, want.soft)
        assert all(np.array_equal(g, w) for g, w in zip(got.runs, want.runs, strict=True))


def test_cpu_transfers_are_the_identity():
    transfers = Transfers(torch.device("cpu"))
    tensor = torch.arange(12, dtype=torch.uint8).view(3, 4)
    assert transfers.to_device(tensor) is tensor
    (back,) = transfers.to_host([tensor]).wait()
    assert torch.equal(back, tensor)


# ------------------------------------------------------------------ device decode
def test_orientation_matches_pillows_exif_transpose():
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    for orientation in range(1, 9):
        want = np.asarray(upright(Image.fromarray(pixels), orientation))
        got = orient(torch.from_numpy(pixels).permute(2, 0, 1), orientation).permute(1, 2, 0)
        assert np.array_equal(got.numpy(), want), orientation


def test_device_decoding_agrees_with_pillow_within_jpeg_tolerance():
    """torchvision (libjpeg-turbo here, nvJPEG on CUDA) at full size + torch's antialiased
    bilinear vs Pillow's full decode + BILINEAR resize (the reference processor's path)."""
    image = photo(640, 480)
    data = jpeg(image)
    (got,) = decode_on_device([DeferredJpeg(data)], 352, torch.device("cpu"), fallback=None)
    want = to_model_pixels(Image.open(io.BytesIO(data)).convert("RGB"), 352)
    diff = (got.int() - want.int()).abs()
    assert got.dtype == torch.uint8 and got.shape == (3, 352, 352)
    assert diff.float().mean() < 0.5 and diff.max() <= 3


def test_a_deferred_jpeg_is_checked_now_and_decoded_in_the_batch(device_predictor, predictor):
    data = jpeg(photo(500, 300), orientation=6)  # stored landscape, shown portrait
    prepared = device_predictor.prepare_image(data)
    assert isinstance(prepared.pixels, DeferredJpeg) and prepared.size == (500, 300)
    assert prepared.pixels.orientation == 6
    on_device = device_predictor.segment(data, PROMPTS, soft=True)
    on_cpu = predictor.segment(data, PROMPTS, soft=True)
    assert on_device.size == on_cpu.size == (500, 300)
    # Two decoders and two resamplers: 8-bit maps a level or two apart at most.
    assert np.abs(on_device.soft.astype(int) - on_cpu.soft.astype(int)).max() <= 2


def test_what_the_device_cannot_decode_takes_the_cpu_path(device_predictor, predictor):
    cmyk = encode(photo(64, 48).convert("CMYK"), "JPEG")
    png = encode(photo(64, 48))
    for data in (cmyk, png):
        prepared = device_predictor.prepare_image(data)
        assert isinstance(prepared.pixels, torch.Tensor)
        assert torch.equal(prepared.pixels, predictor.prepare_image(data).pixels)


def test_a_jpeg_too_large_for_the_device_is_decoded_on_the_cpu(device_predictor, monkeypatch):
    data = jpeg(photo(64, 48))
    assert isinstance(device_predictor.prepare_image(data).pixels, DeferredJpeg)
    monkeypatch.setattr("clipseg_serve.model.inference.preparation.DEVICE_MAX_PIXELS", 64 * 48 - 1)
    assert isinstance(device_predictor.prepare_image(data).pixels, torch.Tensor)


def test_a_jpeg_that_fails_on_the_device_falls_back_alone(device_predictor):
    good, broken = jpeg(photo(80, 60, seed=1)), jpeg(photo(80, 60, seed=2))[:400]
    calls = []

    def fallback(data):
        calls.append(data)
        return device_predictor.preparer.cpu_pixels(data)

    out = decode_on_device([DeferredJpeg(good)], 352, torch.device("cpu"), fallback)
    assert len(out) == 1 and not calls
    with pytest.raises(ImageDecodeError):
        decode_on_device(
            [DeferredJpeg(good), DeferredJpeg(broken)], 352, torch.device("cpu"), fallback
        )
    assert calls == [broken]  # the good one decoded on the device, only the broken retried


def test_squash_is_pillows_bilinear_within_a_level():
    image = photo(700, 500, seed=3)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    diff = (squash(tensor, 352).int() - to_model_pixels(image, 352).int()).abs()
    assert diff.max() <= 1


def test_device_decode_needs_a_known_mode(tiny_model):
    with pytest.raises(ValueError, match="unknown decode"):
        Predictor(tiny_model, device="cpu", decode="nvjpeg")


# ------------------------------------------------------------------ CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_nvjpeg_decoding_equals_pillow_within_jpeg_tolerance():
    data = jpeg(photo(1920, 1080))
    (got,) = decode_on_device([DeferredJpeg(data)], 352, torch.device("cuda"), fallback=None)
    want = to_model_pixels(Image.open(io.BytesIO(data)).convert("RGB"), 352)
    diff = (got.cpu().int() - want.int()).abs()
    assert got.is_cuda and diff.float().mean() < 0.75 and diff.max() <= 4


@pytest.mark.gpu
@cuda
def test_bf16_weights_agree_with_fp32_on_99_percent_of_pixels():
    from clipseg_serve.model.config import get_variant
    from clipseg_serve.model.weights.loader import build_random

    model = build_random(get_variant("rd64-refined"), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = Predictor(model, device="cuda", dtype="float32")
        bf16 = Predictor(
            build_random(get_variant("rd64-refined"), seed=0), device="cuda", dtype="bfloat16"
        )
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    images = torch.stack([fp32.prepare_image(photo(640, 480, seed=s)).pixels for s in range(4)])
    conds = fp32.text_embeddings(PROMPTS * 4)[: images.shape[0]]
    want = torch.sigmoid(fp32.logits(images, conds))
    got = torch.sigmoid(bf16.logits(images, conds))
    threshold = want.flatten(1).median(dim=1).values.view(-1, 1, 1)  # ~half the pixels on
    agreement = ((got > threshold) == (want > threshold)).float().mean().item()
    assert agreement >= 0.99


@pytest.mark.gpu
@cuda
def test_a_bf16_predictor_leaves_a_shared_module_in_fp32():
    """An fp32 and a bf16 predictor over one module: the bf16 one casts a copy."""
    from clipseg_serve.model.config import get_variant
    from clipseg_serve.model.weights.loader import build_random

    model = build_random(get_variant("tiny"), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = Predictor(model, device="cuda", dtype="float32")
        bf16 = Predictor(model, device="cuda", dtype="bfloat16")
    assert next(fp32.model.parameters()).dtype == torch.float32
    assert next(bf16.model.parameters()).dtype == torch.bfloat16


@pytest.mark.gpu
@cuda
def test_pinned_non_blocking_cuda_path_gives_the_cpu_masks(tiny_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = Predictor(tiny_model, device="cpu", dtype="float32")
        gpu = Predictor(copy.deepcopy(tiny_model), device="cuda", dtype="float32")
    prepared = cpu.prepare_image(random_image(300, 200, seed=5))
    request = SegmentRequest(prepared.pixels, prepared.size, "x", prompts=PROMPTS, soft=True)
    first, second = gpu.launch(plan_batch([request])), gpu.launch(plan_batch([request]))
    got = [gpu.collect(first)[0], gpu.collect(second)[0]]
    want = cpu.segment_batch([request])[0]
    for result in got:
        agreement = (result.masks == want.masks).mean()
        assert agreement > 0.999
        assert np.abs(result.soft.astype(int) - want.soft.astype(int)).max() <= 1


@pytest.mark.gpu
@cuda
def test_attention_runs_in_fused_kernels_on_cuda():
    from torch.profiler import ProfilerActivity, profile

    from clipseg_serve.model.config import get_variant
    from clipseg_serve.model.weights.loader import build_random

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(build_random(get_variant("rd64-refined")), device="cuda")
    images = torch.zeros(2, 3, 352, 352, dtype=torch.uint8)
    conds = torch.randn(2, predictor.config.backbone.embed_dim)
    predictor.logits(images, conds)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        predictor.logits(images, conds)
    names = {event.key for event in prof.key_averages()}
    fused = {
        n for n in names if "flash" in n or "efficient_attention" in n or "cudnn_attention" in n
    }
    assert fused, sorted(names)
    assert "aten::_softmax" not in names
