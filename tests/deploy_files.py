"""Parsers for the deployment files, shared by tests/test_deploy*.py (no Docker engine).

A Dockerfile parser (stages, instructions, ARG/ENV), compose's variable substitution,
moby's .dockerignore matching, and a model of the build cache: which layers two builds
with different build arguments share.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import yaml

ROOT = Path(__file__).resolve().parents[1]
SERVICE, CPU_SERVICE = "clipseg", "clipseg-cpu"
TRAIN_SERVICE, TRAIN_CPU_SERVICE = "train", "train-cpu"
TRAINERS = (TRAIN_SERVICE, TRAIN_CPU_SERVICE)
SERVERS = (SERVICE, CPU_SERVICE)
#: The "lb" profile: a second GPU replica (unpublished) and HAProxy in front.
LB_REPLICA, LB_SERVICE = "clipseg-gpu1", "lb"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


# --- Dockerfile parsing -----------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def values(self, keyword: str) -> list[str]:
        return [i.value for i in self.instructions if i.keyword == keyword]

    def args(self) -> dict[str, str]:
        return dict(_arg(value) for value in self.values("ARG"))

    def env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for value in self.values("ENV"):
            tokens = shlex.split(value)
            if "=" not in tokens[0]:  # legacy "ENV KEY value"
                env[tokens[0]] = value.split(None, 1)[1]
            else:
                env.update(token.split("=", 1) for token in tokens)
        return env


def _arg(value: str) -> tuple[str, str]:
    name, _, default = value.partition("=")
    return name.strip(), shlex.split(default)[0] if default.strip() else ""


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (before the first FROM) and the stages with their instructions.

    Handles ``\\`` continuations, comment lines (also inside continuations) and
    parser directives; keywords are upper-cased, values keep their inner spacing.
    """
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending.strip():
        logical.append(pending)

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        if keyword == "FROM":
            parts = value.split()
            parts = [p for p in parts if not p.startswith("--")]
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(_expand(parts[0], global_args), name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may precede FROM, found {keyword}"
            global_args.update([_arg(value)])
        else:
            stages[-1].instructions.append(Instruction(keyword, value))
    return global_args, stages


def _expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), ""), value)


def exec_form(value: str) -> list[str]:
    assert value.startswith("["), f"use the exec (JSON) form: {value}"
    return json.loads(value)


def parse_healthcheck(value: str) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    rest = value
    while rest.startswith("--"):
        option, _, rest = rest.partition(" ")
        key, _, val = option[2:].partition("=")
        options[key] = val
        rest = rest.strip()
    keyword, _, command = rest.partition(" ")
    assert keyword.upper() == "CMD", f"HEALTHCHECK without CMD: {value}"
    return options, exec_form(command.strip())


def seconds(duration: str) -> float:
    """Docker/compose durations: 90s, 10m, 1m30s, 1h."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(a + b for a, b in parts) == duration, f"bad duration {duration!r}"
    return sum(float(amount) * units[unit] for amount, unit in parts)


# --- compose helpers --------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def resolve(value, env: dict[str, str] | None = None):
    """Compose variable substitution with an empty environment (the defaults)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: resolve(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if name in env and (env[name] or op != ":-"):
            return env[name]
        assert op is None or "?" not in op, f"${{{name}}} is required"
        return default

    return _INTERPOLATION.sub(substitute, value).replace("$$", "$")


def interpolated_names(text: str) -> set[str]:
    return {m.group(1) for m in _INTERPOLATION.finditer(text)}


def gpu_devices(service: dict) -> list[dict]:
    deploy = service.get("deploy", {})
    return deploy.get("resources", {}).get("reservations", {}).get("devices", [])


def split_volume(spec: str) -> tuple[str, str, str]:
    source, target, *mode = spec.split(":")
    return source, target, mode[0] if mode else "rw"


# --- build context ----------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[re.Pattern, bool]]:
    """moby's patternmatcher: ``*`` stays in a path segment, ``**`` spans segments, a
    pattern that matches a parent excludes everything under it, ``!`` re-includes, and
    the last matching rule wins."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        pattern = re.sub(r"^\./", "", pattern)
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex), include))
    return rules


def ignored(path: str, rules) -> bool:
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, include in rules:
        if any(regex.fullmatch(c) for c in candidates):
            excluded = not include
    return excluded


# --- build cache model ------------------------------------------------------------------

_VARIABLE = re.compile(r"\$\{?(\w+)")


def variables_used(value: str) -> set[str]:
    """Names referenced as ``$NAME`` or ``${NAME}`` (``$(...)`` is a subshell, not one)."""
    return set(_VARIABLE.findall(value))


def layer_keys(stage: Stage, build_args: dict[str, str]) -> list[str]:
    """A cache key per instruction of ``stage`` for a build with ``build_args``.

    Docker's rule: a RUN sees every ARG declared before it in the stage (as its
    environment), so its cache misses when any of their values differ; other
    instructions only when they reference the ARG. Keys chain: a miss invalidates every
    later layer of the stage.
    """
    declared: dict[str, str] = {}
    key, keys = "", []
    for instruction in stage.instructions:
        if instruction.keyword == "ARG":
            name, default = _arg(instruction.value)
            declared[name] = build_args.get(name, default)
        seen = declared if instruction.keyword == "RUN" else {
            n: v for n, v in declared.items() if n in variables_used(instruction.value)
        }  # fmt: skip
        payload = json.dumps([key, instruction.keyword, instruction.value, sorted(seen.items())])
        key = hashlib.sha256(payload.encode()).hexdigest()
        keys.append(key)
    return keys


# --- loading ------------------------------------------------------------------------------


@functools.cache
def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@functools.cache
def load_dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "docker" / "Dockerfile").read_text())


# --- a stub /readyz for the healthcheck probes ---------------------------------------------


class _Readyz(BaseHTTPRequestHandler):
    status: ClassVar[int] = 200
    port: ClassVar[int] = 0
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.paths.append(self.path)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@contextmanager
def readyz_stub() -> Iterator[type[_Readyz]]:
    """A server on a free loopback port answering ``/readyz`` with ``handler.status``;
    the handler class carries ``port`` and the ``paths`` requested."""
    handler = type("Handler", (_Readyz,), {"status": 200, "paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.port = server.server_port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def run_probe(command: list[str], env: dict[str, str]) -> int:
    """Exit status of a ``python -c`` healthcheck run here with ``env`` as its environment."""
    assert command[:2] == ["python", "-c"], command
    run = subprocess.run([sys.executable, "-c", command[2]], env=env, capture_output=True)
    return run.returncode


def app_get_routes() -> set[str]:
    """Paths the app answers with GET (what probes and health checks use)."""
    from clipseg_serve.service.app import create_app
    from clipseg_serve.service.config import Settings

    app = create_app(Settings(_env_file=None))  # builds the app; loads no weights
    return {
        route.path
        for route in app.routes
        if hasattr(route, "path") and "GET" in (getattr(route, "methods", None) or ())
    }
