"""docker/Dockerfile and .dockerignore keep their contract with the code (no Docker engine).

Checked against the app's routes, ``service.config`` (host, port, settings) and
pyproject.toml, and against a model of Docker's build cache (tests/deploy_files.py): which
layers the variants share and what a source edit rebuilds. docker-compose.yml:
tests/test_deploy_compose.py.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from clipseg_serve.service.config import DEFAULT_PORT, Settings
from tests.deploy_files import (
    ROOT,
    Stage,
    app_get_routes,
    dockerignore_rules,
    exec_form,
    ignored,
    layer_keys,
    load_compose,
    load_dockerfile,
    parse_dockerfile,
    parse_healthcheck,
    readyz_stub,
    resolve,
    run_probe,
    seconds,
    variables_used,
)

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "cmake")
SOURCES = ("clipseg_serve", "model", "service", "training")


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return load_dockerfile()


@pytest.fixture(scope="module")
def builder_stage(dockerfile) -> Stage:
    return dockerfile[1][0]


@pytest.fixture(scope="module")
def final_stage(dockerfile) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return app_get_routes()


def keywords(stage: Stage) -> list[str]:
    return [i.keyword for i in stage.instructions]


def first_index(stage: Stage, predicate) -> int:
    return next(i for i, ins in enumerate(stage.instructions) if predicate(ins))


def copies_sources(value: str) -> bool:
    """A COPY from the build context that brings project sources or package files."""
    words = [w for w in value.split() if not w.startswith("--")]
    return not value.startswith("--from=") and any(
        w.rstrip("/") in (*SOURCES, "README.md", "LICENSE", ".") for w in words[:-1]
    )


# --- the helpers themselves ---------------------------------------------------------------


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


def test_layer_keys_follow_dockers_arg_rule():
    """A RUN after an ARG misses the cache when the ARG differs; layers before it do not."""
    text = "FROM b\nRUN apt\nARG A=1\nCOPY x .\nRUN uses $A\nARG B=1\nRUN other\nCOPY y .\n"
    (stage,) = parse_dockerfile(text)[1]
    base = layer_keys(stage, {})
    assert layer_keys(stage, {"A": "1"}) == base  # the default value: same cache
    a2 = layer_keys(stage, {"A": "2"})
    assert a2[:3] == base[:3] and a2[3] != base[3]  # RUN apt, ARG, COPY shared
    b2 = layer_keys(stage, {"B": "2"})
    assert b2[:5] == base[:5]  # a RUN needn't name B to miss, and every layer after it
    assert all(x != y for x, y in zip(b2[5:], base[5:], strict=True))
    assert variables_used('if [ -n "$A" ]; then ${B}; fi; $(cmd)') == {"A", "B"}


# --- build arguments and layer sharing -------------------------------------------------------


def test_each_arg_is_declared_just_before_its_first_use(dockerfile):
    """After the previous RUN (so earlier layers do not depend on it), before any use."""
    _, stages = dockerfile
    checked = 0
    for stage in stages:
        for index, instruction in enumerate(stage.instructions):
            if instruction.keyword != "ARG":
                continue
            name = instruction.value.partition("=")[0].strip()
            uses = [i for i, ins in enumerate(stage.instructions) if name in
                    variables_used(ins.value) and ins.keyword != "ARG"]  # fmt: skip
            assert uses, f"ARG {name} is never used"
            assert min(uses) > index, f"{name} is used before it is declared"
            between = keywords(stage)[index + 1 : min(uses)]
            assert "RUN" not in between, f"ARG {name}: a RUN between it and its first use"
            checked += 1
    assert checked >= 3  # TORCH_INDEX_URL, TORCH_PACKAGES, EXTRAS


def build_variants() -> dict[str, dict[str, str]]:
    """Build arguments of each compose service that builds the image."""
    services = resolve(load_compose()["services"])
    return {name: s["build"].get("args", {}) for name, s in services.items() if "build" in s}


def test_variants_share_their_common_layers(builder_stage):
    variants = build_variants()
    assert len(variants) == 4, variants  # CUDA / CPU x service / trainer
    keys = {name: layer_keys(builder_stage, args) for name, args in variants.items()}
    runs = [i for i, ins in enumerate(builder_stage.instructions) if ins.keyword == "RUN"]
    torch_run = first_index(builder_stage, lambda i: "$TORCH_INDEX_URL" in i.value)
    for layer in runs[: runs.index(torch_run)]:  # apt, venv: one layer for every variant
        assert len({k[layer] for k in keys.values()}) == 1, builder_stage.instructions[layer]
    by_index: dict[str, set[str]] = {}
    for name, args in variants.items():
        by_index.setdefault(args.get("TORCH_INDEX_URL", ""), set()).add(keys[name][torch_run])
    assert len(by_index) == 2, "a CUDA and a CPU torch index"
    # Service and trainer of one index share the torch layer; the two indexes do not.
    assert all(len(k) == 1 for k in by_index.values())
    assert len(set.union(*by_index.values())) == 2


def test_dependencies_install_before_the_sources_arrive(builder_stage):
    """A source edit invalidates the builder from the first source COPY on: no dependency
    is installed after it, and nothing after it writes into the dependency venv."""
    source_copy = first_index(builder_stage, lambda i: i.keyword == "COPY" and
                              copies_sources(i.value))  # fmt: skip
    before = builder_stage.instructions[:source_copy]
    installs = [i.value for i in before if i.keyword == "RUN" and "pip install" in i.value]
    assert any("$TORCH_PACKAGES" in r for r in installs), "torch before the sources"
    assert any("-r /tmp/requirements.txt" in r for r in installs), "requirements too"
    context_copies = [i.value for i in before if i.keyword == "COPY"]
    assert context_copies == ["pyproject.toml ./"], "only what the requirements step reads"
    after = [i.value for i in builder_stage.instructions[source_copy:] if i.keyword == "RUN"]
    assert after, "the project is installed after its sources arrive"
    for run in after:
        for install in re.findall(r"pip install[^&;]*", run):
            assert "--no-deps" in install and "--prefix /opt/project" in install, install


def test_final_image_keeps_the_dependency_layer_across_source_edits(final_stage):
    """The venv is copied whole (one layer, same digest while the dependencies are), the
    project (about 1.4 MB) in a later layer of its own."""
    copies = [c for c in final_stage.values("COPY") if c.startswith("--from=")]
    assert copies == [
        "--from=builder /opt/venv /opt/venv",
        "--from=builder /opt/project/ /opt/venv/",
    ]
    venv_copy = first_index(final_stage, lambda i: i.value == copies[0])
    project_copy = first_index(final_stage, lambda i: i.value == copies[1])
    assert venv_copy < project_copy
    # Nothing between them or after: no RUN rewrites the venv in a later layer.
    assert "RUN" not in keywords(final_stage)[venv_copy:]


def test_build_inputs_named_by_pyproject_are_copied(builder_stage, pyproject):
    project = pyproject["project"]
    needed = {project["readme"], *project.get("license-files", [])}
    install = first_index(builder_stage, lambda i: "--prefix /opt/project" in i.value)
    copied = set()
    for ins in builder_stage.instructions[:install]:
        if ins.keyword == "COPY" and not ins.value.startswith("--from="):
            copied |= {w.rstrip("/") for w in ins.value.split()[:-1]}
    assert needed <= copied, needed - copied
    assert set(SOURCES) <= copied


def test_setuptools_range_is_bounded(pyproject):
    (requirement,) = [r for r in pyproject["build-system"]["requires"] if "setuptools" in r]
    assert re.fullmatch(r"setuptools>=(\d+),<(\d+)", requirement.replace(" ", "")), requirement
    low = int(re.search(r">=(\d+)", requirement).group(1))
    assert low >= 77, "the SPDX license string needs setuptools 77"
    assert isinstance(pyproject["project"]["license"], str)  # SPDX, not the deprecated table
    for name in pyproject["project"].get("license-files", []):
        assert (ROOT / name).is_file(), name


# --- port, host, command, healthcheck --------------------------------------------------------


def test_cmd_takes_host_and_port_from_settings(final_stage, pyproject, monkeypatch):
    (cmd,) = final_stage.values("CMD")
    assert exec_form(cmd) == ["clipseg-serve"], "no --host/--port: the settings apply"
    assert "clipseg-serve" in pyproject["project"]["scripts"]
    env = final_stage.env()
    assert env["CLIPSEG_HOST"] == "0.0.0.0" and env["CLIPSEG_PORT"] == str(DEFAULT_PORT)
    for key in ("CLIPSEG_HOST", "CLIPSEG_PORT"):
        monkeypatch.setenv(key, env[key])
    settings = Settings(_env_file=None)
    assert (settings.host, settings.port) == ("0.0.0.0", DEFAULT_PORT)
    assert final_stage.values("EXPOSE") == [str(DEFAULT_PORT)]


def test_no_port_is_hard_coded_in_cmd_or_healthcheck(final_stage):
    commands = final_stage.values("CMD") + final_stage.values("HEALTHCHECK")
    for command in commands:
        assert not re.search(rf"(?<!\d){DEFAULT_PORT}(?!\d)", command), command
    (value,) = final_stage.values("HEALTHCHECK")
    assert "CLIPSEG_PORT" in parse_healthcheck(value)[1][2]


def test_image_healthcheck_probes_readyz_on_the_configured_port(final_stage, routes):
    (value,) = final_stage.values("HEALTHCHECK")
    options, probe = parse_healthcheck(value)
    assert seconds(options["start-period"]) >= 300  # the first weights download
    assert "/readyz" in routes
    with readyz_stub() as stub:
        env = {"PATH": "/usr/bin:/bin", "CLIPSEG_PORT": str(stub.port)}
        assert run_probe(probe, env) == 0
        stub.status = 503
        assert run_probe(probe, env) == 1
        assert stub.paths == ["/readyz", "/readyz"]
        with readyz_stub() as other:  # a port nobody listens on any more
            closed = other.port
        assert run_probe(probe, {**env, "CLIPSEG_PORT": str(closed)}) != 0


# --- image layout -----------------------------------------------------------------------------


def test_final_stage_runs_as_the_user_it_creates(final_stage):
    (user,) = final_stage.values("USER")
    name = user.split(":")[0]
    assert name not in ("root", "0", "")
    setup = " ".join(final_stage.values("RUN"))
    useradd = shlex.split(re.search(r"useradd\s[^&;|]*", setup).group(0))
    created_name = useradd[-1]
    created_uid = useradd[useradd.index("--uid") + 1] if "--uid" in useradd else None
    assert name in (created_name, created_uid)
    assert keywords(final_stage).index("USER") < keywords(final_stage).index("CMD")
    after_user = keywords(final_stage)[keywords(final_stage).index("USER") :]
    assert "RUN" not in after_user, "nothing runs as root after USER"


def test_final_stage_has_no_build_tools(dockerfile, final_stage):
    global_args, stages = dockerfile
    assert len(stages) >= 2, "multi-stage build"
    for run in final_stage.values("RUN"):
        words = set(re.split(r"[\s;&|]+", run))
        assert not words & set(COMPILERS), run
        assert "pip install" not in run, "install in the builder, copy the venv"
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
    requirements = next(i for i, r in enumerate(runs) if "-r /tmp/requirements.txt" in r)
    assert runs.index(torch_run) < requirements, "torch before the rest: its index wins"


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
        assert (tmp_path / "req.txt").read_text().splitlines() == expected


# --- build context ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python", ".venv-gpu/lib/x.py", ".git/HEAD", ".env", "data/coco/a.jpg",
        "checkpoints/run1/best/decoder.safetensors", "runs/clipseg/state/last.pt",
        "model/weights/rd64-uni.pth", "x.safetensors", "hf/pytorch_model.bin",
        "service/__pycache__/app.cpython-311.pyc", ".pytest_cache/v/x", ".ruff_cache/x",
        "clipseg_serve.egg-info/PKG-INFO", "bench/out/result.json", "docs/samples/query.jpg",
        "client/clipseg_client/client.py",
    ],
)  # fmt: skip
def test_dockerignore_excludes(path):
    assert ignored(path, dockerignore_rules())


def test_dockerignore_keeps_the_build_inputs(dockerfile):
    rules = dockerignore_rules()
    for path in ("pyproject.toml", "README.md", "LICENSE"):
        assert not ignored(path, rules), path
    for package in SOURCES:
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
