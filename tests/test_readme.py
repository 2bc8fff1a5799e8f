"""The README's test command is exactly what CI runs."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ci_command() -> str:
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if "README test command" in line)
    return lines[marker + 1].strip()


def test_readme_names_the_ci_test_command():
    command = ci_command()
    assert command.endswith("pytest") and "pip install" in command
    assert command in (ROOT / "README.md").read_text()


def test_console_scripts_point_at_real_functions():
    import importlib

    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "clipseg-predict" in scripts
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name))


def test_every_setting_is_documented():
    from service.config import Settings

    readme = (ROOT / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`CLIPSEG_{n.upper()}`" not in readme]
    assert not missing, f"settings missing from README: {missing}"
