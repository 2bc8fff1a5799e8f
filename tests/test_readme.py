"""The README and the documentation site match the repository: the test command is what
CI runs, every setting is documented, the examples use files that are in it, the site
builds with no broken link, and the README stays short."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.docs_pages import documentation

ROOT = Path(__file__).resolve().parents[1]
#: The README introduces and links; the documentation site holds the rest.
README_MAX_LINES = 300


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
    from clipseg_serve.service.config import Settings

    page = (ROOT / "docs" / "settings.md").read_text()
    missing = [n for n in Settings.model_fields if f"`CLIPSEG_{n.upper()}`" not in page]
    assert not missing, f"settings missing from docs/settings.md: {missing}"


def test_the_readme_stays_short_and_links_every_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    # the home page repeats the README; the client's page is client/README.md
    assert pages - linked <= {"docs/index.md", "docs/client.md"}, pages - linked
    assert "](client/README.md)" in readme


def test_the_documentation_site_builds_with_no_broken_link(tmp_path):
    """mkdocs --strict fails on any warning: a link to a missing page or anchor, a page
    missing from the navigation."""
    import subprocess
    import sys

    pytest.importorskip("mkdocs")
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "s")]
    env = {**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    client = (tmp_path / "s" / "client" / "index.html").read_text()
    assert "segment_many" in client  # client/README.md, included


# --- the curl examples and their sample files ----------------------------------------------

SAMPLE_LIMIT = 100 * 1024  # bytes per sample file: they live in git


def readme_curl_lines() -> list[str]:
    """Every curl command in the documentation's bash blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", documentation(), flags=re.S)
    lines = [line.strip() for b in blocks for line in b.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line.startswith("curl") and " -F " in line]


def test_curl_examples_use_files_in_the_repo_and_the_v1_paths():
    commands = [c for c in readme_curl_lines() if "/segment/" in c]
    assert len(commands) >= 3
    uploads = set()
    for command in commands:
        tokens = shlex.split(command.split("  #")[0])
        uploads |= {t.partition("=@")[2] for t in tokens if "=@" in t}
        (url,) = [t for t in tokens if t.startswith("http")]
        assert re.fullmatch(r"http://localhost:8000/v1/segment/(text|visual)", url), url
    assert uploads >= {"docs/samples/query.jpg", "docs/samples/support.jpg"}
    for path in uploads:  # pasted from the repository root, so relative to it
        assert (ROOT / path).is_file(), f"README uploads {path}, which is not in the repo"
        assert (ROOT / path).stat().st_size < SAMPLE_LIMIT, path


def test_every_sample_the_readme_names_exists():
    named = set(re.findall(r"docs/samples/[\w./-]+\w", documentation()))
    assert named
    for path in named:
        assert (ROOT / path).is_file(), path


def test_samples_are_what_the_script_makes(tmp_path):
    """docs/samples/ is docs/make_samples.py's output: pixels equal (JPEG within 1 level
    on average, as another libjpeg may round differently), the mask exactly."""
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "docs/make_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made = module.write(tmp_path)
    assert sorted(p.name for p in made) == sorted(p.name for p in module.OUT.iterdir())
    for path in made:
        committed = np.asarray(Image.open(module.OUT / path.name), dtype=np.int16)
        fresh = np.asarray(Image.open(path), dtype=np.int16)
        assert committed.shape == fresh.shape, path.name
        if path.suffix == ".png":
            assert np.array_equal(committed, fresh), path.name
        else:
            assert np.abs(committed - fresh).mean() <= 1.0, path.name
        assert path.stat().st_size < SAMPLE_LIMIT


def test_support_mask_fits_its_image_and_marks_an_object():
    samples = ROOT / "docs" / "samples"
    support, mask = Image.open(samples / "support.jpg"), Image.open(samples / "support_mask.png")
    assert mask.size == support.size, "the API wants a mask of its support image's size"
    values = np.asarray(mask)
    assert set(np.unique(values)) == {0, 255}
    assert 0.02 < (values > 0).mean() < 0.5  # an object, not the whole picture
