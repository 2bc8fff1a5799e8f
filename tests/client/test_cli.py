"""``clipseg-client``: mask files and JSON from a live server; --help fast and complete."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipseg_client import Client
from clipseg_client.cli import main
from tests.client.test_retries import free_port
from tests.test_cli_help import HELP_BOUND_S, run_script, undocumented


def script() -> list[str]:
    """The installed entry point (``pip install ./client`` wrote it), else the module."""
    installed = Path(sys.executable).parent / "clipseg-client"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "clipseg_client.cli"]


def test_help_is_fast_and_complete():
    result, elapsed = run_script(script(), "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: clipseg-client")
    assert undocumented(result.stdout) == []
    assert "--support IMAGE MASK" in result.stdout and "--prompt" in result.stdout
    assert elapsed < HELP_BOUND_S, f"--help took {elapsed:.1f} s"


@pytest.fixture
def photo_file(photo, tmp_path) -> Path:
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    return path


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "L"
        values = np.asarray(image)
    assert set(np.unique(values)) <= {0, 255}
    return values > 0


def test_writes_one_mask_png_per_prompt(server, photo_file, tmp_path, capsys):
    out = tmp_path / "out"
    code = main([
        str(photo_file), "--prompt", "a red disc", "--prompt", "a blue sky!", "--threshold",
        "0.445", "--url", server.url, "-o", str(out),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["a red disc", "a blue sky!"]
    assert sorted(p.name for p in out.iterdir()) == ["00_a-red-disc.png", "01_a-blue-sky.png"]
    with Client(server.url) as client:
        expected = client.segment_text(photo_file, ["a red disc", "a blue sky!"], threshold=0.445)
    for line, mask in zip(lines, expected.masks, strict=True):
        written = read_mask(Path(line["path"]))
        assert written.shape == (48, 64) and np.array_equal(written, mask.mask)
        assert line["area"] == mask.area and line["bbox"] == list(mask.bbox)


def test_json_output_and_soft_maps(server, photo_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(photo_file), "--prompt", "a cat", "--prompt", "a dog", "--combine", "union"]
    code = main([*args, "--soft", "--format", "both", "--url", server.url, "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    answer = json.loads((out / "photo.json").read_text())
    assert (answer["width"], answer["height"]) == (64, 48) and len(answer["request_id"]) == 32
    (entry,) = answer["masks"]
    assert entry["prompt"] == "union" and set(entry["rle"]) == {"size", "counts"}
    assert (out / "00_union.png").is_file()
    with Image.open(out / "00_union_soft.png") as soft:
        assert soft.size == (64, 48) and soft.mode == "L"


def test_visual_mode_with_two_supports(server, photo_file, support, tmp_path, capsys):
    image, mask = support
    Image.fromarray(image).save(tmp_path / "s.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    pair = [str(tmp_path / "s.png"), str(tmp_path / "m.png")]
    code = main([
        str(photo_file), "--support", *pair, "--support", *pair, "--prompt", "a cat",
        "--text-weight", "0.3", "--url", server.url, "-o", str(tmp_path / "out"),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["prompt"] == "visual" and read_mask(Path(line["path"])).shape == (48, 64)


def test_bad_arguments_fail_before_any_request(photo_file, tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing there: a request would fail as 1
    missing = tmp_path / "nope.jpg"
    assert main([str(missing), "--prompt", "a cat", "--url", url]) == 2
    assert capsys.readouterr().err.strip() == (
        f"clipseg-client: error: cannot read image '{missing}': no such file"
    )
    assert main([str(photo_file), "--url", url]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_server_errors_are_one_line_with_the_code_and_request_id(server, photo_file, capsys):
    code = main([str(photo_file), "--prompt", "a cat", "--threshold", "1.5", "--url", server.url])
    assert code == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("clipseg-client: error: invalid_field: threshold")
    assert "HTTP 422, request " in line


def test_no_server_fails_within_the_budget(photo_file, capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert main([str(photo_file), "--prompt", "a cat", "--url", url, "--budget", "0.5"]) == 1
    assert "connection_failed" in capsys.readouterr().err
