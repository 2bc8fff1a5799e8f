"""Regenerate the CRD schemas in this folder from the PyPI packages named in README.md.

Not a test, and not run by one: the packages are not dependencies of the project. Run it
with them on the path (they install with ``--no-deps``; cloudcoil needs only pydantic,
httpx and pyyaml, which the dev install has):

    pip install --no-deps --target /tmp/crdpkgs cloudcoil==0.6.0 \
        cloudcoil-models-keda==2.16.1.0 cloudcoil-models-prometheus-operator==0.80.1.0 \
        kubeflow-training==1.9.4
    git -C kuberay show v1.7.0:ray-operator/config/crd/bases/ray.io_rayjobs.yaml \
        > /tmp/ray.io_rayjobs.yaml
    PYTHONPATH=/tmp/crdpkgs python tests/data/crds/export_schemas.py /tmp/ray.io_rayjobs.yaml

The RayJob schema comes from KubeRay's published CRD file itself (no PyPI package ships it;
the argument is that file, from a clone of github.com/ray-project/kuberay at tag v1.7.0).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

#: Kubernetes' own types inside the kubeflow models: validated by kubernetes-validate,
#: so the schema marks them with the definition name it knows them by.
CORE_TYPES = {
    "V1ObjectMeta": "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
    "V1PodTemplateSpec": "io.k8s.api.core.v1.PodTemplateSpec",
}


def closed(schema: Any) -> Any:
    """``additionalProperties: false`` on every object schema that lists its properties
    and says nothing about others: what the API server's strict field validation does
    with a structural CRD schema (unknown fields are an error, not silently pruned).
    Objects marked ``x-kubernetes-preserve-unknown-fields`` stay open, as there."""
    if isinstance(schema, dict):
        schema = {key: closed(value) for key, value in schema.items()}
        keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") is True
        if "properties" in schema and "additionalProperties" not in schema and not keeps_unknown:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    return schema


def from_cloudcoil(module: str, name: str) -> dict:
    model = getattr(importlib.import_module(module), name)
    return closed(model.model_json_schema(by_alias=True, mode="validation"))


def _openapi_maps(cls_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """``openapi_types`` and ``attribute_map`` of a kubeflow-training model, read from its
    source (importing ``kubeflow.training`` would need the kubernetes client)."""
    spec = importlib.util.find_spec("kubeflow")
    assert spec is not None and spec.submodule_search_locations, "kubeflow-training missing"
    folder = Path(next(iter(spec.submodule_search_locations))) / "training" / "models"
    (source,) = [
        text
        for text in (path.read_text() for path in sorted(folder.glob("*.py")))
        if f"class {cls_name}(" in text
    ]
    tree = ast.parse(source)
    maps: dict[str, dict[str, str]] = {}
    for node in ast.walk(tree):
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("openapi_types", "attribute_map"):
            maps[target.id] = ast.literal_eval(node.value)
    return maps["openapi_types"], maps["attribute_map"]


def from_kubeflow(class_name: str) -> dict:
    """JSON Schema of a kubeflow-training OpenAPI model (``openapi_types`` and
    ``attribute_map``), definitions under ``$defs``."""
    defs: dict[str, dict] = {}

    def type_schema(swagger: str) -> dict:
        if swagger in CORE_TYPES:
            return {"type": "object", "x-kubernetes-type": CORE_TYPES[swagger]}
        simple = {"str": "string", "int": "integer", "bool": "boolean", "float": "number"}
        if swagger in simple:
            return {"type": simple[swagger]}
        if swagger in ("object", "Quantity", "datetime"):
            return {}
        if match := re.fullmatch(r"list\[(.+)\]", swagger):
            return {"type": "array", "items": type_schema(match.group(1))}
        if match := re.fullmatch(r"dict\(str, (.+)\)", swagger):
            return {"type": "object", "additionalProperties": type_schema(match.group(1))}
        if swagger.startswith("KubeflowOrgV1"):
            model(swagger)
            return {"$ref": f"#/$defs/{swagger}"}
        return {"type": "object"}  # other Kubernetes types (autoscaling metrics): open

    def model(cls_name: str) -> None:
        if cls_name in defs:
            return
        defs[cls_name] = {}
        types, names = _openapi_maps(cls_name)
        properties = {names[attr]: type_schema(kind) for attr, kind in types.items()}
        defs[cls_name] = {"type": "object", "properties": properties}

    model(class_name)
    root = defs.pop(class_name)
    return closed({**root, "$defs": defs})


def is_pod_template(schema: dict) -> bool:
    """Whether a CRD schema node is an inlined Kubernetes PodTemplateSpec."""
    properties = schema.get("properties", {})
    pod = properties.get("spec", {}).get("properties", {})
    return set(properties) == {"metadata", "spec"} and "containers" in pod


def from_crd(path: Path, version: str) -> dict:
    """The ``openAPIV3Schema`` of a published CRD file's ``version``, every inlined
    PodTemplateSpec replaced by a marker (kubernetes-validate checks those, strictly, with
    the API server's own schema; the CRD's copy is most of the file's size)."""
    import yaml

    crd = yaml.safe_load(path.read_text())
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]

    def strip(schema: Any) -> Any:
        if isinstance(schema, dict):
            if is_pod_template(schema):
                return {"type": "object", "x-kubernetes-type": CORE_TYPES["V1PodTemplateSpec"]}
            return {key: strip(value) for key, value in schema.items()}
        if isinstance(schema, list):
            return [strip(item) for item in schema]
        return schema

    return closed(strip(served["schema"]["openAPIV3Schema"]))


def main(rayjob_crd: Path) -> None:
    outputs = {
        "keda.sh_v1alpha1_ScaledObject.json": from_cloudcoil(
            "cloudcoil.models.keda.v1alpha1", "ScaledObject"
        ),
        "monitoring.coreos.com_v1_ServiceMonitor.json": from_cloudcoil(
            "cloudcoil.models.prometheus_operator.v1", "ServiceMonitor"
        ),
        "kubeflow.org_v1_PyTorchJob.json": from_kubeflow("KubeflowOrgV1PyTorchJob"),
        "ray.io_v1_RayJob.json": from_crd(rayjob_crd, "v1"),
    }
    for name, schema in outputs.items():
        (HERE / name).write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
        print(name, len(json.dumps(schema)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
