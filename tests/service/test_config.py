"""Settings come from CLIPSEG_* variables; the console script starts from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from pydantic import ValidationError

from service.config import DEFAULT_PORT, Settings
from service.main import build_parser


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("CLIPSEG_WEIGHTS", "random:tiny")
    monkeypatch.setenv("CLIPSEG_MAX_BATCH_IMAGES", "7")
    monkeypatch.setenv("CLIPSEG_API_KEYS", "alpha, beta")
    monkeypatch.setenv("CLIPSEG_CORS_ORIGINS", '["https://a.example"]')
    settings = Settings(_env_file=None)
    assert settings.weights == "random:tiny" and settings.max_batch_images == 7
    assert settings.api_keys == ["alpha", "beta"]
    assert settings.cors_origins == ["https://a.example"]
    assert settings.port == DEFAULT_PORT


def test_invalid_settings_are_refused(monkeypatch):
    monkeypatch.setenv("CLIPSEG_MAX_BATCH_IMAGES", "0")
    with pytest.raises(ValidationError, match="max_batch_images"):
        Settings(_env_file=None)
    monkeypatch.setenv("CLIPSEG_MAX_BATCH_IMAGES", "4")
    monkeypatch.setenv("CLIPSEG_DTYPE", "float8")
    with pytest.raises(ValidationError, match="dtype"):
        Settings(_env_file=None)


def test_cli_flags_default_to_the_settings(monkeypatch):
    monkeypatch.setenv("CLIPSEG_PORT", "9123")
    args = build_parser(Settings(_env_file=None)).parse_args([])
    assert args.port == 9123 and args.host == "0.0.0.0"


SCRIPTS = {
    "clipseg-serve": "service.main",
    "clipseg-predict": "model.cli",
    "clipseg-train": "training.train",
    "clipseg-eval": "training.evaluate",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_help(script):
    """Each console script answers --help (the installed script when on PATH)."""
    installed = shutil.which(script, path=os.path.dirname(sys.executable))
    command = [installed] if installed else [sys.executable, "-m", SCRIPTS[script]]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and script in result.stdout
