"""Logs operators can use: request IDs, one format (text or JSON) for uvicorn and the
app, a "ready" line, each warning once, and one ERROR line when the weights cannot be had."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest
import torch
from huggingface_hub import constants

from clipseg_serve.model.device import resolve_dtype
from clipseg_serve.model.onnx.int8_kernels import kernel_class
from clipseg_serve.service.app import create_app
from clipseg_serve.service.logs import configure_logging
from tests.conftest import encode, random_image
from tests.service.conftest import make_settings
from tests.service.live import LiveServer

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+) "
    r"\[(?P<rid>[^\]]+)\] (?P<message>.*)$"
)
HEX_ID = re.compile(r"[0-9a-f]{32}")
FIXES = ("--weights random:tiny (CLIPSEG_WEIGHTS=random:tiny)", "HF_HUB_OFFLINE=1")


class Captured:
    """The process's log output, configured by ``configure_logging`` into a buffer."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()


@pytest.fixture
def logs():
    """``logs(level, fmt)`` routes all logging into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    captured = Captured()

    def configure(level: str = "info", fmt: str = "text") -> Captured:
        configure_logging(level, fmt, captured.buffer)  # type: ignore[arg-type]
        return captured

    yield configure
    logging.captureWarnings(False)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def post_text(url: str, headers: dict | None = None, **data) -> httpx.Response:
    files = {"image": ("i.png", encode(random_image(16, 16)), "image/png")}
    data = {"prompt": "a cat", **data}
    return httpx.post(url + "/v1/segment/text", data=data, files=files, headers=headers)


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# Request IDs -----------------------------------------------------------------------------


def test_request_id_round_trip(serve):
    with serve(api_keys=["k"], cors_origins=["https://app.example"]) as server:
        auth = {"Authorization": "Bearer k"}
        given = post_text(server.url, {**auth, "X-Request-ID": "client-42.a:b_c"})
        assert given.status_code == 200 and given.headers["x-request-id"] == "client-42.a:b_c"
        generated = post_text(server.url, auth)
        assert HEX_ID.fullmatch(generated.headers["x-request-id"])
        assert (
            post_text(server.url, auth).headers["x-request-id"] != generated.headers["x-request-id"]
        )
        for bad in (b"has space", b"x" * 129, b"a,b", b'quote"d', "ünï".encode()):
            replaced = post_text(server.url, {**auth, "X-Request-ID": bad})
            assert HEX_ID.fullmatch(replaced.headers["x-request-id"]), bad
        # Error answers, from the app and from the door, carry it in header and body.
        invalid = post_text(server.url, {**auth, "X-Request-ID": "bad-field"}, threshold="7")
        assert invalid.status_code == 422 and invalid.headers["x-request-id"] == "bad-field"
        assert invalid.json()["error"]["request_id"] == "bad-field"
        denied = post_text(server.url, {"X-Request-ID": "no-key"})
        assert denied.status_code == 401 and denied.headers["x-request-id"] == "no-key"
        assert denied.json()["error"]["request_id"] == "no-key"
        # Browser code may send it and read it.
        cors = httpx.get(
            server.url + "/readyz", headers={"Origin": "https://app.example", "X-Request-ID": "c"}
        )
        assert "x-request-id" in cors.headers["access-control-expose-headers"].lower()
        preflight = httpx.options(
            server.url + "/v1/segment/text",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-request-id",
            },
        )
        assert preflight.status_code == 200


def test_the_request_id_is_in_the_log_lines_of_its_request(serve, logs):
    captured = logs("info")
    with serve(log_level="info", max_wait_ms=0.0) as server:
        assert post_text(server.url, {"X-Request-ID": "trace-me"}).status_code == 200
        # A job failing on the model thread: the batch's IDs are bound there.
        failed = post_text(server.url, {"X-Request-ID": "poisoned-1"}, prompt="poison")
        assert failed.status_code == 500
        assert failed.json()["error"]["request_id"] == "poisoned-1"
    parsed = [TEXT_LINE.match(line) for line in captured.lines()]
    records = [m.groupdict() for m in parsed if m]
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["rid"] == "trace-me" and "/v1/segment/text" in r["message"] for r in access)
    failures = [r for r in records if r["message"] == "job failed"]
    assert [(r["level"], r["rid"]) for r in failures] == [("ERROR", "poisoned-1")]
    # Outside requests there is no ID, and says so.
    assert any(r["rid"] == "-" and r["logger"] == "uvicorn.error" for r in records)


# Formats ---------------------------------------------------------------------------------


def test_text_lines_carry_level_names_and_uvicorn_shares_the_format(serve, logs):
    captured = logs("info", "text")
    with serve(log_level="info") as server:
        post_text(server.url)
    lines = captured.lines()
    assert lines
    for line in lines:
        match = TEXT_LINE.match(line)
        assert match and match["level"] in LEVELS, line
    loggers = {TEXT_LINE.match(line)["logger"] for line in lines}
    assert {"uvicorn.error", "uvicorn.access", "clipseg_serve.service.state"} <= loggers


def test_json_lines_parse_with_the_expected_keys(serve, logs):
    captured = logs("info", "json")
    with serve(log_level="info", max_wait_ms=0.0) as server:
        post_text(server.url, {"X-Request-ID": "json-1"})
        post_text(server.url, {"X-Request-ID": "json-2"}, prompt="poison")
    entries = [json.loads(line) for line in captured.lines()]  # every line is one object
    assert entries
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        assert entry["level"] in LEVELS
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["time"])
    access = [e for e in entries if e["logger"] == "uvicorn.access"]
    assert any(e.get("request_id") == "json-1" for e in access)
    (failure,) = [e for e in entries if e["message"] == "job failed"]
    assert failure["request_id"] == "json-2" and "poisoned prompt" in failure["exception"]
    uvicorn_error = [e for e in entries if e["logger"] == "uvicorn.error"]
    assert any("request_id" not in e for e in uvicorn_error), uvicorn_error


def test_python_warnings_are_one_log_line(logs):
    captured = logs("info", "text")
    warnings.warn("something odd here", UserWarning, stacklevel=1)
    (line,) = captured.lines()
    match = TEXT_LINE.match(line)
    assert match and match["level"] == "WARNING" and match["logger"] == "py.warnings"
    assert match["message"].endswith("UserWarning: something odd here")


# Start-up --------------------------------------------------------------------------------


def test_the_ready_line_says_why_int8_is_off(logs, tiny_onnx):
    """An export never checked against fp32 runs fp32 under dtype=auto, and says why."""
    captured = logs("info")
    app = create_app(make_settings(weights=str(tiny_onnx), backend="onnx"))
    with LiveServer(app, log_level="info") as server:
        assert httpx.get(server.url + "/info").json()["dtype"] == "float32"
    (ready,) = [line for line in captured.lines() if "ready: serving" in line]
    assert f"int8 off on {kernel_class()}: int8 was never checked against fp32" in ready


def test_ready_line_once_and_the_random_weights_warning_once(logs):
    captured = logs("info")
    app = create_app(make_settings(weights="random:tiny"))  # the real loader
    with LiveServer(app, log_level="info") as server:
        assert httpx.get(server.url + "/readyz").status_code == 200
        url = server.url
    lines = captured.lines()
    ready = [line for line in lines if "ready: serving" in line]
    assert len(ready) == 1, lines
    assert TEXT_LINE.match(ready[0])["level"] == "INFO"
    # dtype=auto: bf16 on a CPU with native bf16, fp32 elsewhere
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).removeprefix("torch.")
    for part in (
        "random:tiny",
        "variant tiny",
        "on cpu",
        f"in {dtype}",
        "(torch backend)",
        f"at {url}",
    ):
        assert part in ready[0]
    startup = next(i for i, line in enumerate(lines) if "Application startup complete" in line)
    assert lines.index(ready[0]) > startup  # the line that matters comes when /readyz is 200
    random_lines = [line for line in lines if "RANDOM WEIGHTS" in line]
    assert len(random_lines) == 1 and " WARNING " in random_lines[0]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE with an empty cache (huggingface_hub reads its environment at import,
    hence the patched constants). Returns the cache directory."""
    cache = tmp_path / "secret-cache" / "hub"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize("level", ["info", "debug"])
def test_weights_unavailable_is_one_error_line_and_readyz_says_it(logs, offline_hub, level):
    captured = logs(level)
    reasons: list[str] = []
    settings = make_settings(weights="nosuch-org/nosuch-clipseg")
    app = create_app(settings, on_fatal=reasons.append)  # the real loader
    with LiveServer(app, ready=False, log_level=level) as server:
        wait_for(lambda: reasons)
        ready = httpx.get(server.url + "/readyz")
    errors = [line for line in captured.lines() if " ERROR " in line]
    assert len(errors) == 1, captured.lines()
    (error,) = errors
    assert (
        "loading the weights failed: cannot load the weights 'nosuch-org/nosuch-clipseg': " in error
    )
    assert f"HF_HUB_OFFLINE is set and the HF cache ({offline_hub}) does not hold it" in error
    for fix in FIXES:
        assert fix in error
    # The traceback only at debug level.
    assert ("Traceback" in captured.buffer.getvalue()) == (level == "debug")
    assert ready.status_code == 503
    body = ready.json()["error"]
    assert body["code"] == "unhealthy"
    assert (
        "nosuch-org/nosuch-clipseg" in body["message"]
        and "HF_HUB_OFFLINE is set" in body["message"]
    )
    for fix in FIXES:
        assert fix in body["message"]
    assert "secret-cache" not in body["message"] and "<path>" in body["message"]


def test_clipseg_serve_offline_first_start(tmp_path):
    """The newcomer's first command without internet: one ERROR line that says what to do,
    no traceback, exit status 3."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "CLIPSEG_DEVICE": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("CLIPSEG_WEIGHTS", None)  # the default: CIDAS/clipseg-rd64-refined
    command = [sys.executable, "-m", "clipseg_serve.service.main", "--port", "0"]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, timeout=180)
    stderr = done.stderr.decode()
    assert done.returncode == 3, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    assert "'CIDAS/clipseg-rd64-refined': HF_HUB_OFFLINE is set" in errors[0]
    for fix in FIXES:
        assert fix in errors[0]
    assert "stopping with exit status 3" in stderr
