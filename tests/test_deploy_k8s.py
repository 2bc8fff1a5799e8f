"""deploy/k8s/ renders, validates strictly and keeps its contract with the code (no cluster).

Every kustomization renders with ``kubectl kustomize``; Kubernetes' kinds validate with
kubernetes-validate's strict schemas for each claimed cluster version, the custom
resources against the CRD schemas in tests/data/crds/. The contract: the port, probe
paths, metric names and setting names in the manifests are the app's own.
"""

from __future__ import annotations

import copy
import re
import shlex

import pytest

from clipseg_serve.service.config import DEFAULT_PORT, Settings
from clipseg_serve.service.metrics import ServiceMetrics
from clipseg_serve.service.server import build_config
from tests.deploy_files import app_get_routes, load_dockerfile
from tests.k8s_files import (
    CLUSTER_VERSIONS,
    K8S,
    KUSTOMIZATIONS,
    SERVING,
    container_env,
    containers,
    find,
    is_custom,
    load_yaml,
    pod_specs,
    render,
    validate_core,
    validate_custom,
)

pytest.importorskip("kubernetes_validate")
AUTOSCALED = {"overlays/gpu": "ScaledObject", "overlays/cpu": "ScaledObject",
              "overlays/gpu-hpa": "HorizontalPodAutoscaler"}  # fmt: skip
#: Variables the manifests may set besides CLIPSEG_* settings.
OTHER_ENV = {"HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES"}


@pytest.fixture(scope="module")
def routes() -> set[str]:
    return app_get_routes()


@pytest.fixture(scope="module")
def metric_families() -> set[str]:
    """Metric names /metrics exports: families and their samples' names."""
    text = ServiceMetrics().render().decode()
    names = set(re.findall(r"^# TYPE (\w+) (\w+)", text, flags=re.M))
    samples = {f"{name}{suffix}" for name, kind in names if kind == "histogram"
               for suffix in ("_bucket", "_sum", "_count")}  # fmt: skip
    return {name for name, _ in names} | samples


def server(objects) -> dict:
    return find(objects, "Deployment", "clipseg")


def serving_container(objects) -> dict:
    (pod,) = pod_specs(server(objects))
    return next(c for c in pod["containers"] if c["name"] == "clipseg")


# --- rendering and validation -----------------------------------------------------------


@pytest.mark.parametrize("version", CLUSTER_VERSIONS)
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_renders_and_validates_strictly(name, version):
    errors = [e for o in render(name) if not is_custom(o) for e in validate_core(o, version)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_custom_resources_validate_against_their_crd_schemas(name):
    custom = [o for o in render(name) if is_custom(o)]
    errors = [e for o in custom for e in validate_custom(o)]
    assert not errors, "\n".join(errors)


def test_each_custom_kind_is_used_and_validated():
    kinds = {o["kind"] for name in KUSTOMIZATIONS for o in render(name) if is_custom(o)}
    assert kinds == {"ScaledObject", "ServiceMonitor", "PyTorchJob", "RayJob"}


@pytest.mark.parametrize(
    ("kind", "path", "field", "typo"),
    [
        (
            "Deployment",
            ("spec", "template", "spec", "containers", 0),
            "readinessProbe",
            "readinesProbe",
        ),
        ("Service", ("spec",), "selector", "selecter"),
        ("ScaledObject", ("spec",), "minReplicaCount", "minReplicaCout"),
        ("ServiceMonitor", ("spec", "endpoints", 0), "interval", "intervall"),
    ],
)
def test_a_misspelled_field_fails_validation(kind, path, field, typo):
    objects = render("overlays/gpu-hpa" if kind == "ServiceMonitor" else "overlays/gpu")
    obj = copy.deepcopy(find(objects, kind))
    node = obj
    for key in path:
        node = node[key]
    node[typo] = node.pop(field)
    errors = validate_custom(obj) if is_custom(obj) else validate_core(obj, CLUSTER_VERSIONS[0])
    assert errors and typo in errors[0], errors


@pytest.mark.parametrize(
    ("path", "field", "typo"),
    [
        (("spec",), "shutdownAfterJobFinishes", "shutdownAfterJobFinish"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0), "maxReplicas", "maxReplica"),
        (("spec", "rayClusterSpec", "headGroupSpec"), "rayStartParams", "rayStartParam"),
        (("spec", "rayClusterSpec", "workerGroupSpecs", 0, "template", "spec", "containers", 0),
         "volumeMounts", "volumeMount"),
        (("spec", "submitterPodTemplate", "spec"), "restartPolicy", "restartPolicyy"),
    ],
)  # fmt: skip
def test_a_misspelled_field_in_the_rayjob_fails(path, field, typo):
    job = copy.deepcopy(find(render("label/rayjob"), "RayJob"))
    node = job
    for key in path:
        node = node[key]
    node[typo] = node.pop(field)
    assert any(typo in e for e in validate_custom(job)), validate_custom(job)


def test_a_misspelled_field_in_a_pytorchjob_pod_fails():
    job = copy.deepcopy(find(render("training/pytorchjob"), "PyTorchJob"))
    worker = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    worker["containers"][0]["volumeMount"] = worker["containers"][0].pop("volumeMounts")
    assert any("volumeMount" in e for e in validate_custom(job))
    job["spec"]["nprocPerNod"] = job["spec"].pop("nprocPerNode")
    assert any("nprocPerNod" in e for e in validate_custom(job))


# --- the contract with the code ---------------------------------------------------------


@pytest.mark.parametrize("name", SERVING)
def test_port_is_the_apps(name):
    objects = render(name)
    container = serving_container(objects)
    (port,) = container["ports"]
    assert port["containerPort"] == DEFAULT_PORT
    assert load_dockerfile()[1][-1].env()["CLIPSEG_PORT"] == str(DEFAULT_PORT)
    env = container_env(container, objects)
    assert env["CLIPSEG_PORT"] == str(DEFAULT_PORT) and env["CLIPSEG_HOST"] == "0.0.0.0"
    (service_port,) = find(objects, "Service", "clipseg")["spec"]["ports"]
    assert service_port["targetPort"] == port["name"]
    annotations = server(objects)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(DEFAULT_PORT)


@pytest.mark.parametrize("name", SERVING)
def test_probes_hit_the_apps_health_endpoints(name, routes):
    container = serving_container(render(name))
    paths = {p: container[p]["httpGet"]["path"]
             for p in ("readinessProbe", "livenessProbe", "startupProbe")}  # fmt: skip
    assert paths == {"readinessProbe": "/readyz", "livenessProbe": "/healthz",
                     "startupProbe": "/readyz"}  # fmt: skip
    assert set(paths.values()) <= routes
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == container["ports"][0]["name"]


@pytest.mark.parametrize("name", SERVING)
def test_startup_probe_allows_a_first_download(name):
    """As long as the image's HEALTHCHECK start period (the first ~600 MB download)."""
    startup = serving_container(render(name))["startupProbe"]
    healthcheck = load_dockerfile()[1][-1].values("HEALTHCHECK")[0]
    start_period = int(re.search(r"--start-period=(\d+)s", healthcheck).group(1))
    assert startup["periodSeconds"] * startup["failureThreshold"] >= start_period


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_variable_is_a_real_setting_with_a_valid_value(name, monkeypatch):
    objects = render(name)
    for workload in objects:
        for pod in pod_specs(workload):
            for container in containers(pod):
                env = container_env(container, objects)
                unknown = {k for k in env if k.startswith("CLIPSEG_")} - {
                    f"CLIPSEG_{field.upper()}" for field in Settings.model_fields
                }
                assert not unknown, f"{container['name']}: not settings: {unknown}"
                assert {k for k in env if not k.startswith("CLIPSEG_")} <= OTHER_ENV
                for key, value in env.items():
                    if not value.startswith("<secret:"):
                        monkeypatch.setenv(key, value)
                Settings(_env_file=None)  # every value parses as its setting


@pytest.mark.parametrize("name", SERVING)
def test_termination_outlasts_the_drain(name):
    """preStop sleep + the server's graceful shutdown (from the configured request
    timeout, as service/server.py computes it) fit in the grace period."""
    objects = render(name)
    container = serving_container(objects)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    settings = Settings(_env_file=None, **{
        k.removeprefix("CLIPSEG_").lower(): v
        for k, v in container_env(container, objects).items()
        if k.startswith("CLIPSEG_") and not v.startswith("<secret:")
    })  # fmt: skip
    drain = build_config(None, host="", port=0, log_level="info", settings=settings)
    needed = int(command[1]) + settings.shutdown_delay_s + drain.timeout_graceful_shutdown
    grace = server(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > needed, f"grace {grace} s <= preStop + drain {needed} s"


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_non_root_read_only_no_token(name):
    uid = load_dockerfile()[1][-1].values("USER")[-1].split(":")[0]
    for workload in render(name):
        for pod in pod_specs(workload):
            assert pod["automountServiceAccountToken"] is False
            security = pod["securityContext"]
            assert security["runAsNonRoot"] is True and str(security["runAsUser"]) == uid
            assert security["seccompProfile"]["type"] == "RuntimeDefault"
            for container in containers(pod):
                context = container["securityContext"]
                assert context["readOnlyRootFilesystem"] is True, container["name"]
                assert context["allowPrivilegeEscalation"] is False
                assert context["capabilities"]["drop"] == ["ALL"]
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                env = load_dockerfile()[1][-1].env()
                # The paths the process writes: temp files, caches, the HF cache (not
                # for the RayJob's submitter, which only runs `ray job submit`).
                writes = {"/tmp", env["XDG_CACHE_HOME"]}
                if container["name"] != "ray-job-submitter":
                    writes.add(env["HF_HOME"])
                assert writes <= mounts, container["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_has_requests_and_limits(name):
    for workload in render(name):
        for pod in pod_specs(workload):
            for container in containers(pod):
                resources = container["resources"]
                for part in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(resources[part]), container["name"]


def test_gpu_pods_get_one_gpu_and_cpu_pods_none():
    for name in ("overlays/gpu", "overlays/gpu-hpa"):
        resources = serving_container(render(name))["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == 1
    cpu = render("overlays/cpu")
    assert "nvidia.com/gpu" not in serving_container(cpu)["resources"]["limits"]
    assert container_env(serving_container(cpu), cpu)["CLIPSEG_DEVICE"] == "cpu"
    assert serving_container(cpu)["image"].endswith(":cpu")


@pytest.mark.parametrize("name", SERVING)
def test_weights_cache_is_filled_once_and_read_offline(name):
    objects = render(name)
    (pod,) = pod_specs(server(objects))
    (init,) = pod["initContainers"]
    hf_home = load_dockerfile()[1][-1].env()["HF_HOME"]

    def cache_mount(container):
        return next(m for m in container["volumeMounts"] if m["mountPath"] == hf_home)

    assert not cache_mount(init).get("readOnly")
    assert container_env(init, objects)["HF_HUB_OFFLINE"] == "0"
    main = serving_container(objects)
    assert cache_mount(main)["readOnly"] is True
    assert container_env(main, objects)["HF_HUB_OFFLINE"] == "1"
    volume = next(v for v in pod["volumes"] if v["name"] == cache_mount(main)["name"])
    claim = find(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert "ReadWriteMany" in claim["spec"]["accessModes"]


@pytest.mark.parametrize("name", SERVING)
def test_api_keys_come_from_a_secret(name):
    objects = render(name)
    env = container_env(serving_container(objects), objects)
    assert env["CLIPSEG_API_KEYS"].startswith("<secret:")
    config = find(objects, "ConfigMap")
    assert "CLIPSEG_API_KEYS" not in config["data"]


@pytest.mark.parametrize("name", SERVING)
def test_selectors_match_the_pods(name):
    objects = render(name)
    pod_labels = server(objects)["spec"]["template"]["metadata"]["labels"]
    deployment = server(objects)
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        find(objects, "Service", "clipseg")["spec"]["selector"],
        find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        *(c["labelSelector"]["matchLabels"]
          for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]),
    ]  # fmt: skip
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), selector
    keys = {
        c["topologyKey"]
        for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert "kubernetes.io/hostname" in keys
    assert find(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_service_monitor_scrapes_the_service_metrics_port(routes):
    objects = render("overlays/gpu-hpa")
    monitor, service = find(objects, "ServiceMonitor"), find(objects, "Service", "clipseg")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and "/metrics" in routes


# --- autoscaling --------------------------------------------------------------------------


def promql_metrics(query: str) -> set[str]:
    return set(re.findall(r"\b(clipseg_\w+)", query))


@pytest.mark.parametrize("name", list(AUTOSCALED))
def test_autoscaler_owns_the_replica_count_and_never_scales_to_zero(name):
    objects = render(name)
    assert "replicas" not in server(objects)["spec"], "re-applying would reset the count"
    scaler = find(objects, AUTOSCALED[name])
    assert scaler["spec"]["scaleTargetRef"]["name"] == server(objects)["metadata"]["name"]
    if scaler["kind"] == "ScaledObject":
        assert scaler["spec"]["minReplicaCount"] >= 1  # KEDA's default is 0
        assert "idleReplicaCount" not in scaler["spec"]
    else:
        assert scaler["spec"]["minReplicas"] >= 1


def test_keda_queries_name_exported_metrics(metric_families):
    scaled = find(render("overlays/gpu"), "ScaledObject")
    names = set()
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "prometheus"
        names |= promql_metrics(trigger["metadata"]["query"])
        float(trigger["metadata"]["threshold"])
    assert "clipseg_queue_backlog_seconds" in names
    assert names <= metric_families, names - metric_families
    queries = " ".join(t["metadata"]["query"] for t in scaled["spec"]["triggers"])
    for stage in re.findall(r'stage="(\w+)"', queries):  # a label value the code sets
        assert f'stage="{stage}"' in (K8S.parents[1] / "service" / "batcher.py").read_text()


def test_hpa_metric_is_what_prometheus_adapter_serves(metric_families):
    hpa = find(render("overlays/gpu-hpa"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    values = load_yaml(K8S / "components" / "hpa" / "prometheus-adapter-values.yaml")
    served = {rule["name"]["as"]: rule for rule in values["rules"]["external"]}
    rule = served[metric["external"]["metric"]["name"]]
    assert promql_metrics(rule["seriesQuery"]) <= metric_families


def test_keda_and_hpa_scale_on_the_same_signal_and_target():
    keda = find(render("overlays/gpu"), "ScaledObject")["spec"]
    hpa = find(render("overlays/gpu-hpa"), "HorizontalPodAutoscaler")["spec"]
    backlog = next(t for t in keda["triggers"] if "backlog" in t["metadata"]["query"])
    target = hpa["metrics"][0]["external"]["target"]["averageValue"]
    assert backlog["metricType"] == "AverageValue" and target == "500m"
    assert float(backlog["metadata"]["threshold"]) == 0.5
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (
        hpa["minReplicas"], hpa["maxReplicas"])  # fmt: skip
    # below the load-shedding point, or replicas refuse before the scaler reacts
    assert Settings.model_fields["max_queue_wait_s"].default > 0.5


# --- training -------------------------------------------------------------------------------


def test_training_writes_where_the_service_reads():
    serving = render("overlays/gpu")
    (pod,) = pod_specs(server(serving))
    served = {m["mountPath"]: m for m in serving_container(serving)["volumeMounts"]}
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
    }
    serving_claim = claims[served["/data/checkpoints"]["name"]]
    assert served["/data/checkpoints"]["readOnly"] is True
    for name in ("training/pytorchjob", "training/torchrun-job"):
        for workload in render(name):
            for train_pod in pod_specs(workload):
                volumes = {v["name"]: v for v in train_pod["volumes"]}
                (container,) = train_pod["containers"]
                mount = next(
                    m for m in container["volumeMounts"] if m["mountPath"] == "/data/checkpoints"
                )
                assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == serving_claim
                output = container["command"][container["command"].index("--output") + 1]
                assert output.startswith("/data/checkpoints/")
                assert "clipseg_serve.training.train" in container["command"]


def test_pytorchjob_is_multi_node():
    job = find(render("training/pytorchjob"), "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    for replica in replicas.values():
        (container,) = replica["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the operator's required name
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert str(gpus) == job["spec"]["nprocPerNode"]
        assert container["command"][0] == "torchrun"


def test_indexed_job_rendezvous_reaches_pod_zero():
    objects = render("training/torchrun-job")
    job, service = find(objects, "Job"), find(objects, "Service")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    command = pod["containers"][0]["command"]
    flags = dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    assert int(flags["nnodes"]) == spec["completions"] == spec["parallelism"] > 1
    assert flags["rdzv_backend"] == "c10d"
    host, port = flags["rdzv_endpoint"].split(":")
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    gpus = pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
    assert int(flags["nproc_per_node"]) == gpus
    assert shlex.join(command)  # exec form, no shell


# --- the weights cache, for real ------------------------------------------------------------


def hub_cache(root, repo_id: str, checkpoint) -> None:
    """Lay ``checkpoint`` (a transformers directory) out as the HF hub cache holds
    ``repo_id`` after a download: refs/main -> snapshots/<commit>/<files>."""
    import shutil

    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    for file in checkpoint.iterdir():
        shutil.copy(file, repo / "snapshots" / commit / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_the_init_containers_load_reads_the_cache_offline_and_writes_nothing(tmp_path):
    """The serving pods' view: the HF cache filled, HF_HUB_OFFLINE=1 and (read-only) no
    writes. The init container's own command loads the configured hub id from it."""
    import os
    import subprocess
    import sys

    from tests.hf_reference import build_hf_clipseg, save_hf_checkpoint

    objects = render("overlays/gpu")
    (pod,) = pod_specs(server(objects))
    (init,) = pod["initContainers"]
    weights = container_env(init, objects)["CLIPSEG_WEIGHTS"]
    hf_home = tmp_path / "huggingface"
    model = build_hf_clipseg(small=True, refined=True, reduce_dim=64)
    hub_cache(hf_home, weights, save_hf_checkpoint(model, tmp_path / "checkpoint"))

    def listing() -> list[tuple[str, int, int]]:
        return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in hf_home.rglob("*"))

    before = listing()
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "CLIPSEG_WEIGHTS": weights, "PYTHONPATH": str(K8S.parents[1])}  # fmt: skip
    assert init["command"][:2] == ["python", "-c"]
    run = subprocess.run([sys.executable, "-c", init["command"][2]], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"weights ready: {weights}" in run.stdout
    assert listing() == before, "loading wrote into the cache the pods mount read-only"


# --- labelling ------------------------------------------------------------------------------


def rayjob_parts() -> tuple[dict, dict, list[dict]]:
    """The labelling RayJob, its head pod spec and its worker groups."""
    job = find(render("label/rayjob"), "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    return job, cluster["headGroupSpec"]["template"]["spec"], cluster["workerGroupSpecs"]


def mounted_claims(pod: dict) -> dict[str, tuple[str, bool]]:
    """mount path -> (claim name, read-only) for a pod's first container's PVC mounts."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    return {
        m["mountPath"]: (claims[m["name"]], bool(m.get("readOnly")))
        for m in pod["containers"][0]["volumeMounts"]
        if m["name"] in claims
    }


def under(path: str, mounts: dict[str, tuple[str, bool]]) -> tuple[str, bool] | None:
    return next((v for m, v in mounts.items() if path.startswith(m.rstrip("/") + "/")), None)


def test_rayjob_entrypoint_is_a_valid_ray_labelling_command():
    from clipseg_serve.label.cli import _argument_error, build_parser

    job, _, groups = rayjob_parts()
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    assert shlex.split(job["spec"]["entrypoint"])[0] == "clipseg-label"
    assert _argument_error(args) is None and args.engine == "ray"
    assert args.ray_address is None  # the job's own cluster, found by ray.init()
    gpus = [g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
            for g in groups]  # fmt: skip
    # one model per GPU, and as many models as the worker groups have GPUs
    assert all(g == args.gpus_per_worker for g in gpus)
    assert args.workers == sum(g["replicas"] for g in groups) * args.gpus_per_worker
    for group in groups:
        assert group["minReplicas"] == group["replicas"] == group["maxReplicas"]
        cpus = group["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        assert args.cpus_per_worker * args.gpus_per_worker <= float(cpus)
    # the head runs the driver only: no model is scheduled there
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_rayjob_reads_the_datasets_everywhere_and_writes_on_the_head():
    from clipseg_serve.label.cli import build_parser

    job, head, groups = rayjob_parts()
    objects = render("label/rayjob")
    args = build_parser().parse_args(shlex.split(job["spec"]["entrypoint"])[1:])
    head_mounts = mounted_claims(head)
    claim, read_only = under(args.output, head_mounts)  # the driver writes the output
    assert not read_only
    assert "ReadWriteOnce" in find(objects, "PersistentVolumeClaim", claim)["spec"]["accessModes"]
    datasets = find(render("training/pytorchjob"), "PersistentVolumeClaim", "clipseg-datasets")
    assert find(objects, "PersistentVolumeClaim", "clipseg-datasets")["spec"] == datasets["spec"]
    for pod in (head, *(g["template"]["spec"] for g in groups)):
        for source in args.source:  # the driver lists, the workers read
            assert under(source, mounted_claims(pod)) == ("clipseg-datasets", True)


def test_rayjob_loads_the_weights_the_serving_stack_cached():
    serving = render("overlays/gpu")
    (pod,) = pod_specs(server(serving))
    served = mounted_claims(pod)
    hf_home = load_dockerfile()[1][-1].env()["HF_HOME"]
    _, head, groups = rayjob_parts()
    objects = render("label/rayjob")
    for spec in (head, *(g["template"]["spec"] for g in groups)):
        (container,) = spec["containers"]
        assert mounted_claims(spec)[hf_home] == (served[hf_home][0], True)
        assert container_env(container, objects)["HF_HUB_OFFLINE"] == "1"


def test_rayjob_ray_version_is_one_the_ray_extra_installs():
    from packaging.specifiers import SpecifierSet

    from tests.test_packaging import pyproject

    job, _, _ = rayjob_parts()
    (requirement,) = pyproject()["project"]["optional-dependencies"]["ray"]
    specifier = SpecifierSet(re.sub(r"^ray(\[[^]]*\])?", "", requirement))
    assert job["spec"]["rayClusterSpec"]["rayVersion"] in specifier
