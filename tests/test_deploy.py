"""The deployment files keep their contract with the code (pure parsing; no Docker engine).

docker-compose.yml, docker/Dockerfile, .dockerignore and .env.example are checked against
the app's routes, ``service.config`` (port, settings) and pyproject.toml.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import pytest

from service.config import DEFAULT_PORT, Settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
SERVICE, CPU_SERVICE, TRAIN_SERVICE = "clipseg", "clipseg-cpu", "train"
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "cmake")


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


def probe_url(command: list[str]) -> str:
    """The URL a ``python -c`` healthcheck opens."""
    assert command[:2] == ["python", "-c"], command
    urls = re.findall(r"https?://[^'\"\s)]+", command[2])
    assert len(urls) == 1, command
    return urls[0]


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return resolve(compose["services"])


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return parse_dockerfile((ROOT / "docker" / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def builder_stage(dockerfile) -> Stage:
    return dockerfile[1][0]


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """Paths the app answers with GET (the probes' method)."""
    from service.app import create_app

    app = create_app(Settings(_env_file=None))  # builds the app; loads no weights
    # Wrappers of included routers carry no path of their own; their routes are listed too.
    return {
        route.path
        for route in app.routes
        if hasattr(route, "path") and "GET" in (getattr(route, "methods", None) or ())
    }


@pytest.fixture(scope="module")
def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- the parser itself --------------------------------------------------------------------


def test_dockerfile_parser_handles_continuations_comments_and_stages():
    text = (
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS build\nRUN a \\\n    # a comment inside\n    && b\n"
        'ENV A=1 \\\n    B="two words"\nfrom build\nuser 10\n'
    )
    global_args, stages = parse_dockerfile(text)
    assert global_args == {"BASE": "python:3.11-slim"}
    assert [(s.base, s.name) for s in stages] == [("python:3.11-slim", "build"), ("build", None)]
    assert stages[0].values("RUN") == ["a  && b"]
    assert stages[0].env() == {"A": "1", "B": "two words"}
    assert stages[1].values("USER") == ["10"]
    assert resolve("${X:-8000}:8000") == "8000:8000"
    assert resolve("${X:-a}", {"X": "b"}) == "b"
    assert resolve("${X-a}", {"X": ""}) == ""


# --- GPU, profiles, CPU variant -----------------------------------------------------------


@pytest.mark.parametrize("name", [SERVICE, TRAIN_SERVICE])
def test_gpu_reservation(services, name):
    devices = gpu_devices(services[name])
    assert devices, f"{name} reserves no device"
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert len(nvidia) == 1, f"{name}: expected one nvidia device request, got {devices}"
    gpu = nvidia[0]
    assert "gpu" in gpu["capabilities"]
    count = gpu.get("count")
    assert count == "all" or int(count) >= 1 or gpu.get("device_ids")


def test_profiles(services):
    assert "profiles" not in services[SERVICE], "plain `docker compose up` must start it"
    assert services[CPU_SERVICE]["profiles"] == ["cpu"]
    assert services[TRAIN_SERVICE]["profiles"] == ["train"]


def test_cpu_variant(services):
    cpu = services[CPU_SERVICE]
    assert not gpu_devices(cpu)
    assert cpu["environment"]["CLIPSEG_DEVICE"] == "cpu"
    assert cpu["build"]["args"]["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert cpu["build"]["dockerfile"] == services[SERVICE]["build"]["dockerfile"]
    assert cpu["image"] != services[SERVICE]["image"], "the two builds need their own tags"


# --- health, ports, command -----------------------------------------------------------------


def test_healthchecks_probe_the_readyz_route(services, final_stage, routes):
    assert {"/healthz", "/readyz"} <= routes
    (value,) = final_stage.values("HEALTHCHECK")
    options, command = parse_healthcheck(value)
    compose_check = services[SERVICE]["healthcheck"]
    assert compose_check["test"][0] == "CMD"
    for probe in (command, compose_check["test"][1:]):
        url = urlparse(probe_url(probe))
        assert url.path == "/readyz" and url.path in routes
        assert url.port == DEFAULT_PORT and url.hostname in ("127.0.0.1", "localhost")
    # Long enough for the first weights download.
    assert seconds(options["start-period"]) >= 300
    assert seconds(compose_check["start_period"]) >= 300


class _Status(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if self.path == "/ok/readyz" else 503
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_healthcheck_command_fails_on_503_and_passes_on_200(services, final_stage):
    """Run the probes against a stub server: exit 0 only for a 200."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    probes = [parse_healthcheck(final_stage.values("HEALTHCHECK")[0])[1]]
    probes.append(services[SERVICE]["healthcheck"]["test"][1:])
    try:
        for probe in probes:
            code = probe[2]
            for prefix, expected in (("/ok", 0), ("/loading", 1)):
                url = base + prefix + "/readyz"
                patched = code.replace(f"http://127.0.0.1:{DEFAULT_PORT}/readyz", url)
                assert patched != code
                run = subprocess.run([sys.executable, "-c", patched], capture_output=True)
                assert run.returncode == expected, (prefix, run.stderr)
    finally:
        server.shutdown()
        server.server_close()


def test_ports_match_default_port(services, final_stage, pyproject):
    assert final_stage.values("EXPOSE") == [str(DEFAULT_PORT)]
    (cmd,) = final_stage.values("CMD")
    command = exec_form(cmd)
    assert command[0] == "clipseg-serve" and command[0] in pyproject["project"]["scripts"]
    assert command[command.index("--port") + 1] == str(DEFAULT_PORT)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    for name in (SERVICE, CPU_SERVICE):
        (port,) = services[name]["ports"]
        host, _, container = str(port).rpartition(":")
        assert container.split("/")[0] == str(DEFAULT_PORT)
        assert host == str(DEFAULT_PORT)  # the default published port


def test_server_lifecycle_settings(services):
    drain = Settings(_env_file=None).request_timeout_s + 5  # service.main's graceful timeout
    for name in (SERVICE, CPU_SERVICE):
        service = services[name]
        assert service["restart"] == "unless-stopped"
        assert seconds(service["stop_grace_period"]) > drain
        assert service["env_file"] == [{"path": ".env", "required": False}]


# --- volume, user, image layout ------------------------------------------------------------


def test_named_volume_holds_hf_cache_and_checkpoints(compose, services, final_stage):
    hf_home = final_stage.env()["HF_HOME"]
    mounts = {}
    for name in (SERVICE, CPU_SERVICE, TRAIN_SERVICE):
        named = [split_volume(v) for v in services[name]["volumes"]]
        named = [(s, t) for s, t, _ in named if s in (compose.get("volumes") or {})]
        assert len(named) == 1, f"{name}: expected one named volume, got {named}"
        mounts[name] = named[0]
    assert len(set(mounts.values())) == 1, f"services must share the volume: {mounts}"
    _, target = mounts[SERVICE]
    assert hf_home.startswith(target.rstrip("/") + "/")

    train = services[TRAIN_SERVICE]
    entrypoint = train["entrypoint"]
    assert entrypoint[0] == "clipseg-train"
    output = entrypoint[entrypoint.index("--output") + 1]
    assert output.startswith(target.rstrip("/") + "/checkpoints/")
    # The image creates the mount point, owned by its user, so the volume is writable.
    setup = " ".join(final_stage.values("RUN"))
    assert re.search(rf"mkdir -p [^&]*{target}/checkpoints", setup)
    assert re.search(rf"chown -R \S+ {target}\b", setup)


def test_train_service(services, pyproject):
    train = services[TRAIN_SERVICE]
    extras = train["build"]["args"]["EXTRAS"]
    assert extras == "train" and extras in pyproject["project"]["optional-dependencies"]
    assert train["entrypoint"][0] in pyproject["project"]["scripts"]
    datasets = [split_volume(v) for v in train["volumes"] if ":/datasets" in v]
    assert datasets and datasets[0][2] == "ro" and datasets[0][0] == "./data"
    shm = train["shm_size"]
    assert shm.lower().endswith(("gb", "g")) and float(re.sub(r"[^\d.]", "", shm)) >= 1
    assert train["healthcheck"] == {"disable": True}  # the image's probe is for the server


def test_final_stage_runs_as_the_user_it_creates(final_stage):
    (user,) = final_stage.values("USER")
    name = user.split(":")[0]
    assert name not in ("root", "0", "")
    setup = " ".join(final_stage.values("RUN"))
    useradd = shlex.split(re.search(r"useradd\s[^&;|]*", setup).group(0))
    created_name = useradd[-1]
    created_uid = useradd[useradd.index("--uid") + 1] if "--uid" in useradd else None
    assert name in (created_name, created_uid)
    keywords = [i.keyword for i in final_stage.instructions]
    assert keywords.index("USER") < keywords.index("CMD")
    assert "RUN" not in keywords[keywords.index("USER") :], "nothing runs as root after USER"


def test_final_stage_has_no_build_tools(dockerfile, final_stage):
    global_args, stages = dockerfile
    assert len(stages) >= 2, "multi-stage build"
    for run in final_stage.values("RUN"):
        words = set(re.split(r"[\s;&|]+", run))
        assert not words & set(COMPILERS), run
        assert "pip install" not in run, "install in the builder, copy the venv"
    copies = final_stage.values("COPY")
    assert any(c.startswith("--from=") and "/opt/venv" in c for c in copies)
    assert "/opt/venv/bin" in final_stage.env()["PATH"].split(":")
    # Same base in both stages: the venv's interpreter symlinks must resolve.
    assert {s.base for s in stages} == {"python:3.11-slim-bookworm"}
    assert global_args["PYTHON_IMAGE"] == "python:3.11-slim-bookworm"


def test_runtime_environment(final_stage):
    env = final_stage.env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["HF_HOME"] == "/data/huggingface"
    assert not any("weights" in c or ".safetensors" in c for c in final_stage.values("COPY"))


def test_torch_index_url_build_arg(builder_stage):
    args = builder_stage.args()
    assert args["TORCH_INDEX_URL"] == "", "default: PyPI's CUDA build"
    assert args["EXTRAS"] == ""
    runs = builder_stage.values("RUN")
    (torch_run,) = [r for r in runs if "$TORCH_INDEX_URL" in r]
    assert "pip install" in torch_run and '--index-url "$TORCH_INDEX_URL"' in torch_run
    project_run = next(i for i, r in enumerate(runs) if "pip install --no-deps ." in r)
    assert runs.index(torch_run) < project_run, "torch before the project"


def test_requirements_step_reads_pyproject(builder_stage, pyproject, tmp_path):
    """Run the builder's requirements one-liner through sh, as the build does."""
    (run,) = [r for r in builder_stage.values("RUN") if "tomllib" in r]
    command = run.split("/root/.cache/pip", 1)[1].split("&&")[0].strip()
    command = command.replace("/tmp/requirements.txt", str(tmp_path / "req.txt"))
    command = command.replace("python -c", shlex.quote(sys.executable) + " -c", 1)
    project = pyproject["project"]
    for extras in ("", "train"):
        subprocess.run(
            ["sh", "-c", command],
            cwd=ROOT,
            env={"EXTRAS": extras, "PATH": "/usr/bin:/bin"},
            check=True,
            timeout=60,
        )
        expected = project["dependencies"] + project["optional-dependencies"].get(extras, [])
        assert (tmp_path / "req.txt").read_text().split() == expected


# --- settings -------------------------------------------------------------------------------


def test_compose_environment_names_real_settings(compose, services, monkeypatch):
    fields = Settings.model_fields
    for name, service in services.items():
        for key in service.get("environment") or {}:
            if key.startswith("CLIPSEG_"):
                assert key[len("CLIPSEG_") :].lower() in fields, f"{name}: {key} is no setting"
    # The compose defaults parse, and equal the app's own defaults.
    environment = services[SERVICE]["environment"]
    for key, value in environment.items():
        monkeypatch.setenv(key, str(value))
    configured = Settings(_env_file=None)
    defaults = Settings.model_construct()
    for key in environment:
        if key.startswith("CLIPSEG_"):
            attr = key[len("CLIPSEG_") :].lower()
            assert getattr(configured, attr) == getattr(defaults, attr), key


def test_env_example(compose):
    text = (ROOT / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))
    compose_vars = interpolated_names((ROOT / "docker-compose.yml").read_text())
    fields = Settings.model_fields
    for name in names:
        setting = name.startswith("CLIPSEG_") and name[len("CLIPSEG_") :].lower() in fields
        assert setting or name in compose_vars, f"{name} is neither a setting nor used"
    for key in ("CLIPSEG_WEIGHTS", "CLIPSEG_DEVICE", "CLIPSEG_MAX_BATCH_IMAGES"):
        assert key in names
    settings = Settings(_env_file=ROOT / ".env.example")  # every value parses
    assert settings.weights == "CIDAS/clipseg-rd64-refined" and settings.api_keys == []


# --- build context --------------------------------------------------------------------------


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


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python", ".venv-gpu/lib/x.py", ".git/HEAD", ".env", "data/coco/a.jpg",
        "checkpoints/run1/best/decoder.safetensors", "runs/clipseg/state/last.pt",
        "model/weights/rd64-uni.pth", "x.safetensors", "hf/pytorch_model.bin",
        "service/__pycache__/app.cpython-311.pyc", ".pytest_cache/v/x", ".ruff_cache/x",
        "clipseg_serve.egg-info/PKG-INFO", "bench/out/result.json",
    ],
)  # fmt: skip
def test_dockerignore_excludes(path):
    assert ignored(path, dockerignore_rules())


def test_dockerignore_keeps_the_build_inputs(dockerfile):
    rules = dockerignore_rules()
    for path in ("pyproject.toml", "README.md"):
        assert not ignored(path, rules), path
    for package in ("model", "service", "training"):
        files = [p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts]
        assert files
        for file in files:
            assert not ignored(file.relative_to(ROOT).as_posix(), rules), file
    # Every COPY from the context names something that exists and is sent.
    for stage in dockerfile[1]:
        for copy in stage.values("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = [w for w in copy.split() if not w.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not ignored(source.rstrip("/"), rules), source


# --- docker compose itself (when the plugin is installed) ------------------------------------


def test_docker_compose_config_is_valid():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker CLI not installed")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if version.returncode != 0:
        reason = (version.stderr or version.stdout).strip().splitlines()
        pytest.skip(f"docker compose unavailable: {reason[0] if reason else version.returncode}")
    command = [docker, "compose", "-f", "docker-compose.yml", "--profile", "cpu"]
    command += ["--profile", "train", "config", "-q"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    if run.returncode != 0 and re.search(r"daemon|docker\.sock|permission denied", run.stderr):
        pytest.skip(f"docker compose config needs an engine here: {run.stderr.strip()[:200]}")
    assert run.returncode == 0, run.stderr
