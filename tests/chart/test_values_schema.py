"""values.schema.json turns wrong values into a clear error that names the key, before
anything is rendered or applied."""

import helm_python
import pytest

import chartlib

BAD_VALUES = [
    # (values, the key the message must name, what it must say)
    ({"replicaCount": "two"}, "/replicaCount", "want integer"),
    ({"replicaCount": -1}, "/replicaCount", "minimum"),
    ({"replicaCunt": 2}, "", "'replicaCunt' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy", "Always"),
    ({"image": {"digest": "sha256:abc"}}, "/image/digest", "does not match"),
    ({"image": {"repository": ""}}, "/image/repository", "minLength"),
    ({"imagePullSecrets": ["regcred"]}, "/imagePullSecrets/0", "want object"),
    ({"imagePullSecrets": [{"name": "Reg_Cred"}]}, "/imagePullSecrets/0/name", "does not match"),
    ({"operator": {"logFormat": "xml"}}, "/operator/logFormat", "'json', 'text'"),
    ({"operator": {"watchNamespaces": "voice"}}, "/operator/watchNamespaces", "want array"),
    ({"operator": {"watchNamespaces": ["Voice"]}}, "/operator/watchNamespaces/0", "does not match"),
    ({"operator": {"watchNamespaces": ["voice", "voice"]}}, "/operator/watchNamespaces", "are equal"),
    ({"operator": {"httpPort": 70000}}, "/operator/httpPort", "maximum"),
    ({"operator": {"leaderElection": {"enabled": "yes"}}}, "/operator/leaderElection/enabled",
     "want boolean"),
    ({"workloadImages": {"agent": ""}}, "/workloadImages/agent", "minLength"),
    ({"workloadImages": {"vllm": "vllm/vllm openai"}}, "/workloadImages/vllm", "does not match"),
    ({"workloadImages": {"tts": "x:1"}}, "/workloadImages", "'tts' not allowed"),
    ({"prometheus": {"url": "prometheus:9090"}}, "/prometheus/url", "does not match"),
    ({"prometheus": {"timeout": "5 seconds"}}, "/prometheus/timeout", "does not match"),
    ({"prometheus": {"bearerToken": {"secretName": "Bad Name"}}},
     "/prometheus/bearerToken/secretName", "does not match"),
    ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot",
     "must be true"),
    ({"securityContext": {"privileged": True}}, "/securityContext/privileged", "must be false"),
    ({"securityContext": {"allowPrivilegeEscalation": True}},
     "/securityContext/allowPrivilegeEscalation", "must be false"),
    ({"nodeSelector": {"gpu": True}}, "/nodeSelector/gpu", "want string"),
    ({"tolerations": {"key": "x"}}, "/tolerations", "want array"),
    ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "/topologySpreadConstraints/0", "missing"),
    ({"serviceMonitor": {"interval": "often"}}, "/serviceMonitor/interval", "does not match"),
    ({"serviceMonitor": {"labels": {"release": 1}}}, "/serviceMonitor/labels/release",
     "want string"),
    ({"networkPolicy": {"enabled": True}}, "/networkPolicy/namespaces", "minItems"),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget/maxUnavailable",
     ""),
]


@pytest.mark.parametrize("values,where,what", BAD_VALUES,
                         ids=[repr(v)[:60] for v, _, _ in BAD_VALUES])
def test_bad_value_is_rejected_with_a_message_naming_the_key(values, where, what):
    with chartlib.load_chart() as chart:
        with pytest.raises(helm_python.HelmValuesError) as raised:
            chart.validate_schema(values)
        # An install renders nothing with such values: the same check runs first.
        with pytest.raises(helm_python.HelmValuesError):
            chart.render(values, name=chartlib.RELEASE, namespace=chartlib.NAMESPACE)
    message = str(raised.value)
    assert f"at '{where}'" in message, message
    assert what in message, message


@pytest.mark.parametrize("case", chartlib.golden_cases())
def test_the_documented_values_files_are_accepted(case):
    with chartlib.load_chart() as chart:
        chart.validate_schema(chartlib.load_values(case))


def test_every_default_value_is_described_by_the_schema():
    # additionalProperties is false everywhere the chart reads keys, so a value added to
    # values.yaml without a schema entry would make the defaults themselves fail.
    with chartlib.load_chart() as chart:
        chart.validate_schema(chart.values)
        schema = chart.schema
    assert schema is not None and schema.get("additionalProperties") is False
    assert set(chart_values_keys()) <= set(schema["properties"])


def chart_values_keys():
    with chartlib.load_chart() as chart:
        return list(chart.values)
