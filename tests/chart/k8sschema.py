"""Validation of rendered objects against the schemas of the API servers that will get them:
Kubernetes' own (kubernetes-validate, strict: unknown fields are errors), the Prometheus
Operator's CRDs (the pydantic models generated from them) and the project's own CRDs."""

from __future__ import annotations

import copy
from typing import Any

import celpy
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
            root = structural_to_json_schema(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
            # The API server always accepts these at the root, whether or not the schema says so.
            for implicit in ("apiVersion", "kind", "metadata"):
                root.setdefault("properties", {}).setdefault(implicit, {})
            return root
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
            structural = served_schema(crd, version)
            defaulted = apply_defaults(structural, copy.deepcopy(body))
            failures = cel_failures(structural, defaulted, "")
            if failures:
                raise SchemaError(f"{name}: " + "; ".join(failures))
            return
    raise SchemaError(f"{name}: no CRD for {obj['apiVersion']} {obj['kind']}")


def served_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return served["schema"]["openAPIV3Schema"]
    raise SchemaError(f"CRD {crd['metadata']['name']} has no version {version}")


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill in schema defaults the way the API server does before it evaluates CEL rules."""
    if isinstance(value, dict):
        for prop, sub in schema.get("properties", {}).items():
            if prop not in value and "default" in sub:
                value[prop] = copy.deepcopy(sub["default"])
            if prop in value:
                value[prop] = apply_defaults(sub, value[prop])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for k in value:
                if k not in schema.get("properties", {}):
                    value[k] = apply_defaults(extra, value[k])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


_CEL = celpy.Environment()


def cel_failures(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Evaluate every `x-kubernetes-validations` rule (CEL) on the value it applies to.
    Transition rules (oldSelf) need a previous object and are left to the API server."""
    failures = []
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue
        program = _CEL.program(_CEL.compile(rule["rule"]))
        try:
            ok = program.evaluate({"self": celpy.json_to_cel(value)})
        except celpy.CELEvalError as error:
            failures.append(f"at {path or '/'}: rule {rule['rule']!r} failed to evaluate: {error}")
            continue
        if isinstance(ok, celpy.CELEvalError) or not bool(ok):
            message = rule.get("message") or f"failed rule: {rule['rule']}"
            failures.append(f"at {path or '/'}: {message}")
    if isinstance(value, dict):
        for prop, sub in schema.get("properties", {}).items():
            if prop in value:
                failures += cel_failures(sub, value[prop], f"{path}/{prop}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            failures += cel_failures(schema["items"], item, f"{path}/{i}")
    return failures
