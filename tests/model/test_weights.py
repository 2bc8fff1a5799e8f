"""Loading every weights source strictly, with errors that name what is wrong."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from clipseg_serve.model.config import get_variant
from clipseg_serve.model.errors import WeightsError
from clipseg_serve.model.weights import native
from clipseg_serve.model.weights.loader import RANDOM_WARNING, build_random, load_model


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_source_warns_loudly_once(caplog):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with caplog.at_level(logging.WARNING, logger="clipseg_serve.model"):
            loaded = load_model("random:tiny")
    assert loaded.kind == "random" and loaded.model.config.variant == "tiny"
    assert "meaningless" in RANDOM_WARNING
    # One log record, and no warnings.warn beside it (a service prints both).
    assert [r.getMessage() for r in caplog.records] == [RANDOM_WARNING]
    assert not [x for x in w if "RANDOM" in str(x.message)]


@pytest.mark.parametrize("include_backbone", [True, False])
def test_native_checkpoint_round_trip(tmp_path, tiny_model, include_backbone):
    config = tiny_model.config.replace(threshold=0.37)
    model = build_random(config, seed=0)
    native.save_checkpoint(
        model,
        tmp_path,
        backbone_source="random:0",
        include_backbone=include_backbone,
        metrics={"fg_iou": 0.5},
    )
    loaded = load_model(tmp_path)
    assert loaded.kind == "native" and loaded.metrics == {"fg_iou": 0.5}
    assert loaded.model.config.threshold == 0.37
    assert _same_weights(loaded.model, model)
    assert (tmp_path / native.BACKBONE_FILE).exists() == include_backbone


def test_missing_key_is_named(tmp_path, tiny_model):
    native.save_checkpoint(tiny_model, tmp_path, backbone_source="random:0")
    state = load_file(str(tmp_path / native.DECODER_FILE))
    del state["film_mul.weight"]
    save_file(state, str(tmp_path / native.DECODER_FILE))
    with pytest.raises(WeightsError, match=r"missing keys: film_mul\.weight"):
        load_model(tmp_path)


def test_unexpected_key_is_named(tmp_path, tiny_model):
    native.save_checkpoint(tiny_model, tmp_path, backbone_source="random:0")
    state = load_file(str(tmp_path / native.DECODER_FILE))
    state["bogus.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / native.DECODER_FILE))
    with pytest.raises(WeightsError, match=r"unexpected keys: bogus\.weight"):
        load_model(tmp_path)


def test_wrong_shape_is_named(tmp_path, tiny_model):
    native.save_checkpoint(tiny_model, tmp_path, backbone_source="random:0")
    state = load_file(str(tmp_path / native.DECODER_FILE))
    state["film_add.bias"] = torch.zeros(3)
    save_file(state, str(tmp_path / native.DECODER_FILE))
    with pytest.raises(WeightsError, match=r"film_add\.bias \(checkpoint \(3,\)"):
        load_model(tmp_path)


def test_wrong_variant_is_an_error(tmp_path, tiny_model):
    native.save_checkpoint(tiny_model, tmp_path, backbone_source="random:0")
    with pytest.raises(WeightsError, match="variant 'tiny', not the requested 'rd64'"):
        load_model(tmp_path, variant="rd64")


def test_unknown_config_key_is_an_error(tmp_path, tiny_model):
    native.save_checkpoint(tiny_model, tmp_path, backbone_source="random:0")
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["colour"] = "blue"
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="colour"):
        load_model(tmp_path)


def _official_file(model: torch.nn.Module, path, *, with_clip: bool):
    """An official-style .pth: decoder keys at top level, the unused ``reduce`` layer."""
    state = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    width, r = model.config.backbone.width, model.config.reduce_dim
    state["reduce.weight"], state["reduce.bias"] = torch.zeros(r, width), torch.zeros(r)
    if with_clip:
        state.update({f"clip_model.{k}": v.clone() for k, v in model.clip.state_dict().items()})
        state.update({f"model.{k}": v for k, v in model.clip.visual.state_dict().items()})
    torch.save(state, path)
    return path


def test_official_decoder_file_with_clip_weights(tmp_path):
    model = build_random(get_variant("rd64-refined").replace(backbone=get_variant("tiny").backbone,
                         extract_layers=(1, 2, 3), input_size=96), seed=3)  # fmt: skip
    path = _official_file(model, tmp_path / "rd64-uni-refined.pth", with_clip=True)
    # The registered rd64-refined is ViT-B/16 sized, so a tiny official file must not fit it.
    with pytest.raises(WeightsError, match="shape mismatches"):
        load_model(path)


def test_official_decoder_file_loads_by_name(tmp_path, monkeypatch):
    from clipseg_serve.model import config as config_module

    tiny = get_variant("tiny")
    # An official file is matched to a registered variant by its shapes; register a tiny
    # "rd16-refined" for this test only.
    monkeypatch.setitem(
        config_module._VARIANTS, "rd16-refined", tiny.replace(variant="rd16-refined")
    )
    model = build_random(get_variant("rd16-refined"), seed=3)
    path = _official_file(model, tmp_path / "rd16.pth", with_clip=True)
    loaded = load_model(path)
    assert loaded.kind == "official" and loaded.model.config.variant == "rd16-refined"
    assert _same_weights(loaded.model, model)
    with pytest.raises(WeightsError, match="not the requested 'rd64'"):
        load_model(path, variant="rd64")
    backbone_file = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.clip.state_dict().items()}, str(backbone_file))
    decoder_only = _official_file(model, tmp_path / "decoder_only.pth", with_clip=False)
    assert _same_weights(load_model(decoder_only, backbone=str(backbone_file)).model, model)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"film_mul.weight": torch.zeros(1), "payload": object()}, path)
    with pytest.raises(WeightsError, match="refusing to unpickle"):
        load_model(path)


def test_not_a_source(tmp_path):
    with pytest.raises(WeightsError):
        load_model(tmp_path / "nothing-here.pth")
    with pytest.raises(WeightsError, match=r"no config\.json"):
        load_model(tmp_path)
