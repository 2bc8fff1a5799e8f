"""Settings come from CLIPSEG_* variables; the console script starts from them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from clipseg_serve.service.config import DEFAULT_PORT, Settings
from clipseg_serve.service.main import build_parser, settings_from

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "open_clip", "fastapi", "starlette", "uvicorn", "model")


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


def test_flags_override_the_environment_and_absent_flags_keep_it(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env file
    monkeypatch.setenv("CLIPSEG_PORT", "9123")
    monkeypatch.setenv("CLIPSEG_LOG_FORMAT", "JSON")
    args = build_parser().parse_args(["--host", "127.0.0.1", "--log-level", "debug"])
    settings = settings_from(args)
    assert settings.port == 9123 and settings.host == "127.0.0.1"
    assert settings.log_level == "debug" and settings.log_format == "json"
    assert settings_from(build_parser().parse_args(["--port", "81"])).port == 81


def test_a_bad_environment_value_is_one_line_and_status_2(monkeypatch):
    env = {**os.environ, "CLIPSEG_LOG_FORMAT": "yaml", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "clipseg_serve.service.main"], capture_output=True, text=True,
        env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("clipseg-serve: invalid settings:")
    assert "log_format" in result.stderr and "Traceback" not in result.stderr


def test_every_flag_names_its_variable_and_default():
    flags = [a for a in build_parser()._actions if a.dest != "help"]
    assert {a.dest for a in flags} >= {"host", "port", "log_level", "log_format", "weights"}
    for action in flags:
        default = Settings.model_fields[action.dest].default
        assert f"(CLIPSEG_{action.dest.upper()}; default: {default})" in action.help


def test_serve_help_is_fast_and_imports_nothing_heavy():
    """--help answers before torch, open_clip, FastAPI or uvicorn are imported (they take
    seconds); the wall-clock bound is generous for a loaded 2-core machine."""
    probe = (
        "import sys\n"
        "from service.main import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
        timeout=120,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert "--log-format" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert elapsed < 3.0, f"--help took {elapsed:.2f} s"


SCRIPTS = {
    "clipseg-serve": "clipseg_serve.service.main",
    "clipseg-predict": "clipseg_serve.model.cli.predict",
    "clipseg-train": "clipseg_serve.training.train",
    "clipseg-eval": "clipseg_serve.training.evaluate",
    "clipseg-label": "clipseg_serve.label.cli",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_help(script):
    """Each console script answers --help (the installed script when on PATH)."""
    installed = shutil.which(script, path=os.path.dirname(sys.executable))
    command = [installed] if installed else [sys.executable, "-m", SCRIPTS[script]]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout and script in result.stdout
