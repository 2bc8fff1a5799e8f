"""Every console script of pyproject.toml answers ``--help`` at once, from the install.

The scripts run as subprocesses from the venv's ``bin/`` (the installed entry points, so
the wrapper pip wrote is what is timed); ``python -m`` only where a script is not
installed. The target is < 1 s; the bound here is 3 s because a loaded 2-core CI machine
is noisy: the < 1 s figure itself is measured by hand (`/usr/bin/time clipseg-predict
--help`: 0.03-0.04 s on the CI machine, 3.97 s before its parser moved to model/cli_args.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
HELP_BOUND_S = 3.0


def console_scripts() -> dict[str, str]:
    """[project.scripts]: script name -> ``module:function``."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def script_command(name: str, target: str) -> list[str]:
    installed = Path(sys.executable).parent / name
    if installed.exists():
        return [str(installed)]
    return [sys.executable, "-m", target.partition(":")[0]]


def script_env(**extra: str) -> dict[str, str]:
    """This checkout first on the path: the venv's editable install may point at another
    checkout of the project (in CI both are the same, and this changes nothing)."""
    env = dict(os.environ, COLUMNS="100", PYTHONPATH=str(ROOT), **extra)
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    return env


def run_script(
    command: list[str], *args: str, **env: str
) -> tuple[subprocess.CompletedProcess, float]:
    """Run a script with ``args``; its result and wall time in seconds."""
    start = time.perf_counter()
    result = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        env=script_env(**env),
        cwd=ROOT,
        timeout=120,
    )
    return result, time.perf_counter() - start


def undocumented(help_text: str) -> list[str]:
    """Invocations in argparse's help output that have no description.

    An entry is a line indented by exactly two spaces after the first section header;
    its help follows on the same line after two or more spaces, or on the next line,
    indented further. Options (``-x``) count in every section, other entries in the
    "positional arguments" section.
    """
    lines = help_text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.fullmatch(r"\S.*:", line)), len(lines))
    missing, section = [], ""
    for i in range(start, len(lines)):
        line = lines[i]
        if re.fullmatch(r"\S.*:", line):
            section = line
            continue
        if not re.match(r"  \S", line):
            continue
        invocation, *described = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        if not (invocation.startswith("-") or section.startswith("positional")):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if not described and not re.match(r"   +\S", following):
            missing.append(invocation)
    return missing


def test_undocumented_finds_options_without_help():
    text = (
        "usage: x [-h]\n\npositional arguments:\n  image       the image\n  other\n\n"
        "options:\n  -h, --help  show this help message and exit\n  --port PORT\n"
        "  --weights WEIGHTS\n                weights source\n  --log-level LOG_LEVEL\n"
    )
    assert undocumented(text) == ["other", "--port PORT", "--log-level LOG_LEVEL"]


def test_every_script_is_listed():
    scripts = console_scripts()
    assert {"clipseg-predict", "clipseg-serve", "clipseg-train", "clipseg-eval"} <= set(scripts)


@pytest.mark.parametrize("name", sorted(console_scripts()))
def test_help_is_fast_and_complete(name):
    command = script_command(name, console_scripts()[name])
    result, elapsed = run_script(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:"), result.stdout[:200]
    # Both findings in one message: a slow script often lacks help texts too.
    problems = [f"without help text: {option}" for option in undocumented(result.stdout)]
    if elapsed >= HELP_BOUND_S:
        problems.append(f"--help took {elapsed:.1f} s")
    assert not problems, f"{name}: {problems}"


# --- clipseg-predict checks its files before it loads anything ---------------------------


@pytest.fixture(scope="module")
def predict() -> list[str]:
    return script_command("clipseg-predict", console_scripts()["clipseg-predict"])


def test_predict_missing_image_fails_fast_without_torch(predict, tmp_path):
    missing = tmp_path / "nosuch.jpg"
    # PYTHONPROFILEIMPORTTIME lists every module imported on stderr: torch must not be one.
    result, elapsed = run_script(
        predict, str(missing), "--prompt", "a cat", PYTHONPROFILEIMPORTTIME="1"
    )
    assert result.returncode == 2
    imported = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    modules = {line.rsplit("|", 1)[-1].strip() for line in imported}
    assert imported and "argparse" in modules  # the profile did run
    assert not {"torch", "open_clip", "numpy"} & modules
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == [f"clipseg-predict: error: cannot read image '{missing}': no such file"]
    assert elapsed < HELP_BOUND_S


@pytest.mark.parametrize(
    ("make", "role", "reason"),
    [
        (lambda d: d, "image", "not a file"),
        (lambda d: _write(d / "notes.jpg", b"not an image"), "image", "not an image format"),
        (lambda d: d / "gone_mask.png", "--support-mask", "no such file"),
    ],
)
def test_predict_reports_the_bad_file_in_one_line(predict, tmp_path, make, role, reason):
    image = _write(tmp_path / "photo.png", (ROOT / "docs" / "example.png").read_bytes())
    bad = make(tmp_path)
    if role == "image":
        args = [str(bad), "--prompt", "a cat"]
    else:
        args = [str(image), "--support-image", str(image), "--support-mask", str(bad)]
    result, _ = run_script(predict, *args)
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"clipseg-predict: error: cannot read {role} '{bad}': {reason}")


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
