"""Every object the chart renders is one the API server accepts: strict Kubernetes schemas
for built-in kinds, the Prometheus Operator's for its kinds."""

import pytest
import yaml

import chartlib
import k8sschema

# Values that switch on every optional object, so each one is validated at least once.
EVERYTHING = {
    "replicaCount": 3,
    "podDisruptionBudget": {"enabled": True},
    "serviceMonitor": {"enabled": True},
    "networkPolicy": {"enabled": True, "namespaces": ["voice"],
                      "agentIngressFrom": [{"podSelector": {}}]},
    "prometheus": {"bearerToken": {"useServiceAccountToken": True}},
}


def monitoring_files_present():
    return bool(list((chartlib.CHART / "files" / "prometheus").glob("*.yaml"))) and bool(
        list((chartlib.CHART / "files" / "grafana").glob("*.json")))


@pytest.mark.parametrize("case", chartlib.golden_cases() + ["everything"])
def test_every_rendered_object_validates(case):
    values = EVERYTHING if case == "everything" else chartlib.load_values(case)
    if case == "everything" and monitoring_files_present():
        values = {**values, "prometheusRule": {"enabled": True},
                  "grafanaDashboards": {"enabled": True}}
    rendered = chartlib.objects(chartlib.render(values))
    assert rendered
    for obj in rendered:
        k8sschema.validate(obj)


def test_chart_crds_are_valid_custom_resource_definitions():
    files = sorted((chartlib.CHART / "crds").glob("*.yaml"))
    if not files:
        pytest.skip("charts/grokcast/crds/ is empty until crds/yaml/ is generated "
                    "(then: python3 tests/chart/regenerate.py)")
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            if obj:
                assert obj["kind"] == "CustomResourceDefinition"
                k8sschema.validate(obj)


@pytest.mark.parametrize("mutate,expect", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicy=3),
     "imagePullPolicy"),
    (lambda d: d["spec"]["template"]["spec"].update(serviceAcountName="x"),
     "serviceAcountName"),
    (lambda d: d["spec"].update(replicas="two"), "replicas"),
])
def test_validation_catches_what_the_api_server_would_reject(mutate, expect):
    # Guards the validation itself: a typo or a wrong type in a Deployment must fail.
    deployment = next(o for o in chartlib.objects(chartlib.render()) if o["kind"] == "Deployment")
    mutate(deployment)
    with pytest.raises(k8sschema.SchemaError, match=expect):
        k8sschema.validate(deployment)


def test_prometheus_operator_validation_catches_unknown_and_bad_fields():
    monitor = next(o for o in chartlib.objects(chartlib.render({"serviceMonitor": {"enabled": True}}))
                   if o["kind"] == "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(k8sschema.SchemaError, match="intervall"):
        k8sschema.validate(monitor)
    del monitor["spec"]["endpoints"][0]["intervall"]
    monitor["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(k8sschema.SchemaError, match="interval"):
        k8sschema.validate(monitor)
