"""Validation of rendered objects against the schemas of the API servers that will get them:
Kubernetes' own (kubernetes-validate, strict: unknown fields are errors), the Prometheus
Operator's CRDs (the pydantic models generated from them) and the project's own CRDs."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
from cloudcoil.models.prometheus_operator import v1 as prometheus_v1

import chartlib


class SchemaError(AssertionError):
    """An object the API server would reject, with the object and the reason."""


def validate(obj: dict[str, Any], crds: list[dict[str, Any]] | None = None) -> None:
    name = "/".join(str(part) for part in chartlib.key(obj)[1:] if part)
    group = obj.get("apiVersion", "").split("/")[0]
    if group == "monitoring.coreos.com":
        validate_prometheus_operator(obj, name)
    elif group == "grokcast.io":
        validate_custom_resource(obj, crds or [], name)
    else:
        try:
            kubernetes_validate.validate(obj, chartlib.KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            raise SchemaError(f"{name}: at {path}: {error.message}") from None
        except kubernetes_validate.SchemaNotFoundError as error:
            raise SchemaError(f"{name}: {error.message}") from None


def validate_prometheus_operator(obj: dict[str, Any], name: str) -> None:
    model = getattr(prometheus_v1, obj["kind"], None)
    if model is None:
        raise SchemaError(f"{name}: no Prometheus Operator schema for kind {obj['kind']}")
    try:
        parsed = model.model_validate(obj)
    except Exception as error:  # pydantic's ValidationError lists every bad field
        raise SchemaError(f"{name}: {error}") from None
    # The models ignore unknown fields; the API server prunes them silently, which would
    # hide a typo such as `intervall`. A field lost in the round trip is such a field.
    kept = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    lost = missing_paths(obj, kept)
    if lost:
        raise SchemaError(f"{name}: unknown fields {lost}")


def missing_paths(given: Any, kept: Any, path: str = "") -> list[str]:
    if isinstance(given, dict):
        if not isinstance(kept, dict):
            return [path or "/"]
        lost = []
        for k, v in given.items():
            if k not in kept:
                lost.append(f"{path}/{k}")
            else:
                lost.extend(missing_paths(v, kept[k], f"{path}/{k}"))
        return lost
    if isinstance(given, list) and isinstance(kept, list):
        lost = []
        for i, (g, k) in enumerate(zip(given, kept)):
            lost.extend(missing_paths(g, k, f"{path}/{i}"))
        return lost
    return []


def crd_json_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    """A CRD version's openAPIV3Schema as plain JSON Schema (draft 2020-12)."""
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return structural_to_json_schema(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
    raise SchemaError(f"CRD {crd['metadata']['name']} has no version {version}")


def structural_to_json_schema(node: Any) -> Any:
    """Translate the Kubernetes extensions JSON Schema does not know: `nullable`,
    `x-kubernetes-int-or-string` and `x-kubernetes-preserve-unknown-fields`; an object
    without preserve-unknown-fields gets additionalProperties false, because the API
    server prunes (and kubectl --validate=strict rejects) unknown fields."""
    if isinstance(node, list):
        return [structural_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: structural_to_json_schema(v) for k, v in node.items()
           if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable"):
        out.pop("nullable")
        if "type" in out:
            out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out
            and not node.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out):
        out["additionalProperties"] = False
    return out


def validate_custom_resource(obj: dict[str, Any], crds: list[dict[str, Any]], name: str) -> None:
    group, version = obj["apiVersion"].split("/")
    for crd in crds:
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"]:
            schema = crd_json_schema(crd, version)
            body = {k: v for k, v in obj.items() if k != "metadata"}
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(body),
                            key=lambda e: list(e.path))
            if errors:
                reasons = "; ".join(f"at /{'/'.join(map(str, e.path))}: {e.message}"
                                    for e in errors)
                raise SchemaError(f"{name}: {reasons}")
            return
    raise SchemaError(f"{name}: no CRD for {obj['apiVersion']} {obj['kind']}")
