"""config/samples (the operator's complete example) validates against the CRDs the chart
installs: structural schema, defaults and CEL rules, as `kubectl apply` would check them.
The validator itself is shown to reject what the API server rejects."""

import copy

import pytest
import yaml

import chartlib
import k8sschema

SAMPLES = chartlib.REPO / "config" / "samples"


def chart_crds():
    found = []
    for path in sorted((chartlib.CHART / "crds").glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def sample_objects():
    found = []
    for path in sorted(SAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append(doc)
    return found


@pytest.fixture(scope="module")
def crds():
    found = chart_crds()
    if not found:
        pytest.skip("no CRDs in charts/grokcast/crds yet (crds/yaml/ is not generated)")
    return found


def test_samples_validate_against_the_chart_crds(crds):
    objs = sample_objects()
    custom = [o for o in objs if o["apiVersion"].startswith("grokcast.io/")]
    assert {o["kind"] for o in custom} == {"VoiceAgent", "ModelPool"}
    for obj in objs:
        if obj["apiVersion"].startswith("grokcast.io/"):
            k8sschema.validate(obj, crds)
        else:
            k8sschema.validate(obj)


def test_sample_references_resolve_within_the_samples(crds):
    objs = sample_objects()
    pools = {o["metadata"]["name"] for o in objs if o["kind"] == "ModelPool"}
    secrets = {o["metadata"]["name"] for o in objs if o["kind"] == "Secret"}
    for agent in (o for o in objs if o["kind"] == "VoiceAgent"):
        for stage in ("stt", "llm", "tts"):
            ref = agent["spec"][stage].get("modelPoolRef")
            assert ref is None or ref in pools, f"{stage}.modelPoolRef {ref}"
        assert agent["spec"]["telephony"]["twilio"]["authTokenSecretRef"]["name"] in secrets


def mutated(kind, mutate):
    obj = copy.deepcopy(next(o for o in sample_objects() if o["kind"] == kind))
    mutate(obj["spec"])
    return obj


@pytest.mark.parametrize("kind,mutate,message", [
    ("ModelPool", lambda s: s.update(engine="tensorrt"), "engine"),
    ("ModelPool", lambda s: s.update(replicas=-1), "replicas"),
    ("ModelPool", lambda s: s.update(autoscaling={"minReplicas": 5, "maxReplicas": 2}),
     "minReplicas must not exceed"),
    ("ModelPool", lambda s: s.update(gpu={"count": 0}), "at least one GPU"),
    ("ModelPool", lambda s: s.update(colour="blue"), "colour"),
    ("VoiceAgent", lambda s: s["stt"].update(endpoint="http://stt.example:8000/v1"),
     "exactly one of modelPoolRef and endpoint"),
    ("VoiceAgent", lambda s: s["telephony"]["twilio"].update(publicUrl="http://insecure.example"),
     "publicUrl"),
    ("VoiceAgent", lambda s: s.update(scaling={"minReplicas": 1, "maxReplicas": 5,
                                               "targetCallsPerPod": 500}),
     "targetCallsPerPod must not exceed"),
])
def test_validator_rejects_what_the_api_server_rejects(crds, kind, mutate, message):
    with pytest.raises(k8sschema.SchemaError, match=message):
        k8sschema.validate(mutated(kind, mutate), crds)
