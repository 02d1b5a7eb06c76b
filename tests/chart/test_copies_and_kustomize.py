"""The chart and config/ carry copies of files owned elsewhere (the generated CRDs, the
Prometheus rules, the Grafana dashboards), and `kubectl apply -k config/default` installs the
same objects as the chart with its default values."""

import pytest
import yaml

import chartlib

FIX = "run python3 tests/chart/regenerate.py"


@pytest.mark.parametrize("source,pattern,targets", chartlib.COPIES,
                         ids=[str(s.relative_to(chartlib.REPO)) for s, _, _ in chartlib.COPIES])
def test_copies_are_identical_to_their_originals(source, pattern, targets):
    originals = chartlib.source_files(source, pattern)
    for target in targets:
        copies = sorted(p.name for p in target.glob(pattern) if p.name != "kustomization.yaml")
        assert copies == [p.name for p in originals], f"{target} differs from {source}: {FIX}"
        for original in originals:
            assert (target / original.name).read_bytes() == original.read_bytes(), \
                f"{target / original.name} is stale: {FIX}"


def test_generated_crds_exist():
    if not chartlib.source_files(chartlib.REPO / "crds" / "yaml", "*.yaml"):
        pytest.skip("crds/yaml/ has no generated CRDs yet; the chart ships them once it has")
    names = set()
    for path in (chartlib.CHART / "crds").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                names.add(doc["metadata"]["name"])
    assert {"voiceagents.grokcast.io", "modelpools.grokcast.io"} <= names


def test_crd_kustomization_lists_every_crd():
    text = (chartlib.REPO / "config" / "crd" / "kustomization.yaml").read_text(encoding="utf-8")
    assert text == chartlib.crd_kustomization_text(), FIX


# Labels only Helm sets; kustomize's objects say managed-by: kustomize instead.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def comparable(obj):
    obj = yaml.safe_load(yaml.safe_dump(obj))  # deep copy with plain types
    labels = obj.get("metadata", {}).get("labels", {})
    for label in HELM_ONLY_LABELS:
        labels.pop(label, None)
    # A strategic merge patch may reorder env entries; none refers to another ($(VAR)), so
    # their order carries no meaning and they compare as sets by name.
    pod = obj.get("spec", {}).get("template", {}).get("spec", {})
    for container in pod.get("containers", []):
        env = container.get("env", [])
        assert not any("$(" in str(e.get("value", "")) for e in env)
        container["env"] = sorted(env, key=lambda e: e["name"])
    return obj


def chart_install_objects(values=None):
    """Templates plus crds/: everything `helm install` creates with these values."""
    found = chartlib.objects(chartlib.render(values))
    for path in sorted((chartlib.CHART / "crds").glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


MONITORING_KINDS = {"ServiceMonitor", "PrometheusRule", "ConfigMap"}
# config/ directory -> the chart values it equals, and which of the chart's kinds it holds.
KUSTOMIZE_CASES = {
    "default": ({}, None),
    "ha": ({"replicaCount": 2, "podDisruptionBudget": {"enabled": True}}, None),
    "monitoring": (chartlib.MONITORING_VALUES, MONITORING_KINDS),
}


@pytest.mark.parametrize("directory", sorted(KUSTOMIZE_CASES))
def test_kustomize_base_installs_what_the_chart_installs(directory):
    values, kinds = KUSTOMIZE_CASES[directory]
    from_chart = {chartlib.key(o): comparable(o) for o in chart_install_objects(values)
                  if kinds is None or o["kind"] in kinds}
    from_kustomize = {chartlib.key(o): comparable(o)
                      for o in chartlib.kustomize(chartlib.REPO / "config" / directory)}
    # The one object Helm leaves to `--create-namespace`.
    namespace = from_kustomize.pop(("v1", "Namespace", "", chartlib.NAMESPACE), None)
    if kinds is None:
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert sorted(from_kustomize) == sorted(from_chart), "different objects"
    for k in from_chart:
        assert from_kustomize[k] == from_chart[k], f"{k} differs between config/{directory} and the chart: {FIX}"


def test_kustomize_objects_validate_against_kubernetes_schemas():
    import k8sschema
    for obj in chartlib.kustomize(chartlib.REPO / "config" / "default"):
        k8sschema.validate(obj)


def test_comparison_notices_a_drift():
    # Guards the comparison: a changed verb in config/ must not compare equal.
    objs = {chartlib.key(o): comparable(o) for o in chartlib.kustomize(chartlib.REPO / "config" / "default")}
    role = next(v for k, v in objs.items() if k[1] == "ClusterRole" and k[3] == chartlib.RELEASE)
    chart_role = next(comparable(o) for o in chart_install_objects()
                      if o["kind"] == "ClusterRole" and o["metadata"]["name"] == chartlib.RELEASE)
    assert role == chart_role
    role["rules"][0]["verbs"].append("delete")
    assert role != chart_role


def test_prometheus_rule_wraps_exactly_the_rule_files():
    rules_files = chartlib.source_files(chartlib.REPO / "config" / "prometheus", "*.yaml")
    if not rules_files:
        pytest.skip("config/prometheus has no rule files")
    wrapped = [o for o in chartlib.objects(chartlib.render(chartlib.MONITORING_VALUES))
               if o["kind"] == "PrometheusRule"]
    assert len(wrapped) == len(rules_files)
    groups = [g for o in wrapped for g in o["spec"]["groups"]]
    original = [g for p in rules_files for g in yaml.safe_load(p.read_text())["groups"]]
    assert groups == original


def test_dashboards_are_shipped_verbatim():
    import json
    dashboards = chartlib.source_files(chartlib.REPO / "config" / "grafana", "*.json")
    if not dashboards:
        pytest.skip("config/grafana has no dashboards")
    maps = [o for o in chartlib.objects(chartlib.render(chartlib.MONITORING_VALUES))
            if o["kind"] == "ConfigMap"]
    shipped = {k: v for m in maps for k, v in m["data"].items()}
    for path in dashboards:
        assert json.loads(shipped[path.name]) == json.loads(path.read_text())
        assert maps[0]["metadata"]["labels"]["grafana_dashboard"] == "1"
