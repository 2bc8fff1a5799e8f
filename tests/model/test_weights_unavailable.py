"""Weights that cannot be had here (hub unreachable, offline, not cached, no such path)
raise one ``WeightsUnavailableError`` whose one-line message says why and what to do.

"Offline" is simulated without any network: huggingface_hub's offline switch, an empty
cache in a temporary directory, and a hub endpoint on a closed loopback port.
"""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from clipseg_serve.model.errors import WeightsError, WeightsUnavailableError
from clipseg_serve.model.weights.loader import load_model

HUB_ID = "nosuch-org/nosuch-clipseg"
FIXES = (
    "--weights random:tiny (CLIPSEG_WEIGHTS=random:tiny)",
    "--weights ./my-checkpoint",
    "HF_HUB_OFFLINE=1",
)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty HF cache. huggingface_hub reads its environment at import, hence the
    constants are patched rather than the variables."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _assert_one_line_with_fixes(error: WeightsUnavailableError) -> str:
    text = str(error)
    assert "\n" not in text
    assert text.startswith("cannot load the weights ")
    for fix in FIXES:
        assert fix in text
    return text


def test_offline_and_not_cached(empty_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model(HUB_ID)
    text = _assert_one_line_with_fixes(caught.value)
    assert f"{HUB_ID!r}: HF_HUB_OFFLINE is set and the HF cache ({empty_cache})" in text
    assert caught.value.source == HUB_ID
    assert isinstance(caught.value, WeightsError)  # existing handlers still catch it


def test_hub_unreachable_and_not_cached(empty_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard: refused
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model(HUB_ID)
    text = _assert_one_line_with_fixes(caught.value)
    assert "the HuggingFace hub cannot be reached (" in text
    assert f"and the HF cache ({empty_cache}) does not hold it" in text


@pytest.mark.parametrize("source", ["/nonexistent/checkpoint", "./missing-dir", "rd64"])
def test_a_path_that_does_not_exist(source):
    with pytest.raises(WeightsUnavailableError) as caught:
        load_model(source)
    text = _assert_one_line_with_fixes(caught.value)
    assert f"{source!r}: no such file or directory" in text


def test_fixes_can_be_worded_for_another_cli():
    error = WeightsUnavailableError("x/y", "offline")
    assert error.problem() == "cannot load the weights 'x/y': offline"
    fixes = error.fixes(flag="--init", env=None)
    assert "--init random:tiny;" in fixes and "CLIPSEG_WEIGHTS" not in fixes
