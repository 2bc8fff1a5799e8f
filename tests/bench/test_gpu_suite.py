"""The GPU suite (``bench/gpu_suite.py``) at smoke scale, and its load generator's bodies.

The smoke run is the suite's whole code path on whatever device exists (here a CPU:
``random:tiny``, batch 1 and 2, a few requests, 5 training steps), as a subprocess like a
person runs it: every section must give a figure, not an error, and the JSON its keys.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.loadgen import BOUNDARY, COUNTER_DIGITS, text_request_body

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = {1, 2, 3, 4, 5}


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _image_of(body: bytes) -> bytes:
    start = body.index(b"Content-Type: image/jpeg\r\n\r\n") + len(
        b"Content-Type: image/jpeg\r\n\r\n"
    )
    return body[start : body.index(f"\r\n--{BOUNDARY}--\r\n".encode())]


def test_request_bodies_differ_in_bytes_but_not_in_pixels():
    jpeg = _jpeg()
    body = text_request_body(jpeg, "a cat")
    first = body.head + b"0" * COUNTER_DIGITS + body.tail
    second = body.head + b"1" * COUNTER_DIGITS + body.tail
    assert len(first) == body.length and first != second
    assert b'name="prompt"\r\n\r\na cat\r\n' in first and b'name="format"\r\n\r\nrle\r\n' in first
    images = [Image.open(io.BytesIO(_image_of(b))) for b in (first, second)]
    original = np.asarray(Image.open(io.BytesIO(jpeg)))
    for image in images:
        assert image.format == "JPEG"
        assert np.array_equal(np.asarray(image), original)


def test_smoke_run_gives_every_section_a_figure(tmp_path):
    out = tmp_path / "suite.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "bench/gpu_suite.py", "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wall time" in done.stdout and "verdict" in done.stdout, done.stdout
    result = json.loads(out.read_text())
    assert {"suite", "smoke", "environment", "sections", "rows", "wall_s"} <= set(result)
    assert result["smoke"] is True
    assert {"device", "torch", "cuda", "host_cpus"} <= set(result["environment"])
    rows = result["rows"]
    assert {"section", "name", "value", "unit", "target", "verdict", "note", "error"} <= set(
        rows[0]
    )
    errors = [(r["name"], r["error"]) for r in rows if r["error"]]
    assert not errors, errors
    with_figures = {r["section"] for r in rows if isinstance(r["value"], (int, float))}
    assert with_figures == SECTIONS, rows
    by_name = {r["name"]: r for r in rows}
    assert by_name["model only, bf16, batch 2"]["value"] > 0
    assert by_name["model only, fp32, batch 1"]["value"] > 0
    assert 90 <= by_name["bf16 vs fp32 masks, pixels equal"]["value"] <= 100
    closed = by_name["service, batching on, CPU decode, max throughput"]
    assert closed["value"] > 0 and closed["details"]["closed"]["bad_answers"] == 0
    assert by_name["service, batching on, CPU decode, p99 at half the max"]["value"] > 0
    assert by_name["training, checkpoint served"]["value"] == 1.0
    # The smoke scale makes the targets meaningless: no PASS/FAIL is claimed.
    assert {r["verdict"] for r in rows} <= {"n/a", "-"}
