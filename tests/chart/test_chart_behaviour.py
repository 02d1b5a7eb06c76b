"""What a platform team relies on when it sets a value: each setting reaches the operator
and the objects that enforce it."""

import shutil

import helm_python
import pytest

import chartlib


def render_objects(values=None, **kw):
    return chartlib.objects(chartlib.render(values, **kw))


def only(objs, kind, name=None):
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def env_of(deployment):
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("values,expected", [
    ({}, "false"),
    ({"replicaCount": 2}, "true"),
    ({"replicaCount": 1, "operator": {"leaderElection": {"enabled": True}}}, "true"),
])
def test_leader_election_is_on_whenever_two_pods_could_write(values, expected):
    deployment = only(render_objects(values), "Deployment")
    env = env_of(deployment)
    assert env["GROKCAST_LEADER_ELECT"] == expected
    # The Lease lives in the operator's own namespace, which the pod reads from the API.
    assert env["GROKCAST_LEASE_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize("values,strategy", [
    ({}, "Recreate"),
    ({"replicaCount": 2}, "RollingUpdate"),
    ({"operator": {"leaderElection": {"enabled": True}}}, "RollingUpdate"),
])
def test_two_operators_never_write_at_once_during_an_upgrade(values, strategy):
    # Without a Lease, a surge pod would reconcile beside the old one.
    spec = only(render_objects(values), "Deployment")["spec"]
    assert spec["strategy"]["type"] == strategy
    if strategy == "RollingUpdate":
        assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_leader_election_role_is_limited_to_leases_in_the_release_namespace():
    objs = render_objects({"replicaCount": 2})
    role = only(objs, "Role", "grokcast-leader-election")
    assert role["metadata"]["namespace"] == chartlib.NAMESPACE
    assert {r for rule in role["rules"] for r in rule["resources"]} == {"leases"}


def test_all_namespaces_by_default_with_one_cluster_role_binding():
    objs = render_objects()
    assert env_of(only(objs, "Deployment"))["GROKCAST_WATCH_NAMESPACES"] == ""
    binding = only(objs, "ClusterRoleBinding", "grokcast")
    assert binding["roleRef"]["name"] == "grokcast"
    assert not [o for o in objs if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "grokcast"]


def test_watched_namespaces_get_role_bindings_and_no_cluster_wide_write_access():
    objs = render_objects({"operator": {"watchNamespaces": ["voice", "voice-staging"]}})
    assert env_of(only(objs, "Deployment"))["GROKCAST_WATCH_NAMESPACES"] == "voice,voice-staging"
    bindings = [o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == "grokcast"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["voice", "voice-staging"]
    cluster_bindings = [o["roleRef"]["name"] for o in objs if o["kind"] == "ClusterRoleBinding"]
    assert cluster_bindings == ["grokcast-cluster"]
    cluster_role = only(objs, "ClusterRole", "grokcast-cluster")
    # What stays cluster-wide is read-only.
    verbs = {v for rule in cluster_role["rules"] for v in rule["verbs"]}
    assert verbs <= {"get", "list", "watch"}


def test_watched_namespaces_read_secrets_only_in_those_namespaces():
    objs = render_objects({"operator": {"watchNamespaces": ["voice", "voice-staging"]}})
    roles = [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "grokcast"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["voice", "voice-staging"]
    for role in roles:
        secret_verbs = {v for rule in role["rules"] if "secrets" in rule["resources"]
                        for v in rule["verbs"]}
        assert secret_verbs == {"get", "list", "watch"}
    bindings = [o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == "grokcast"]
    assert {b["roleRef"]["kind"] for b in bindings} == {"Role"}
    # Nothing cluster-wide grants Secrets or any write: only the read-only node rules remain.
    cluster_roles = [o for o in objs if o["kind"] == "ClusterRole"]
    assert [r["metadata"]["name"] for r in cluster_roles] == ["grokcast-cluster"]
    for role in cluster_roles:
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"]
            assert set(rule["verbs"]) <= {"get", "list", "watch"}


def test_cluster_wide_mode_keeps_one_cluster_role_for_the_namespaced_rules():
    objs = render_objects()
    names = sorted(o["metadata"]["name"] for o in objs if o["kind"] == "ClusterRole")
    assert names == ["grokcast", "grokcast-cluster"]
    assert not [o for o in objs if o["kind"] == "Role" and o["metadata"]["name"] == "grokcast"]


def test_every_binding_names_the_operator_service_account():
    objs = render_objects({"serviceAccount": {"name": "voice-operator"},
                           "operator": {"watchNamespaces": ["voice"]}})
    assert only(objs, "ServiceAccount")["metadata"]["name"] == "voice-operator"
    assert only(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "voice-operator"
    for obj in objs:
        if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            assert obj["subjects"] == [{"kind": "ServiceAccount", "name": "voice-operator",
                                        "namespace": chartlib.NAMESPACE}]


def test_rbac_and_service_account_can_be_left_to_the_platform_team():
    objs = render_objects({"rbac": {"create": False},
                           "serviceAccount": {"create": False, "name": "preexisting"}})
    kinds = {o["kind"] for o in objs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount"}
    assert only(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "preexisting"


def test_prometheus_token_comes_from_a_mounted_secret_never_from_env():
    objs = render_objects({"prometheus": {"url": "https://prom.example:9091",
                                          "bearerToken": {"secretName": "prom-reader", "key": "tok"},
                                          "ca": {"configMapName": "prom-ca", "key": "ca.pem"}}})
    deployment = only(objs, "Deployment")
    env = env_of(deployment)
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token_file = env["GROKCAST_PROMETHEUS_BEARER_TOKEN_FILE"]
    assert token_file.startswith(mounts["prometheus-token"]["mountPath"] + "/")
    assert token_file.endswith("/tok")
    assert volumes["prometheus-token"]["secret"]["secretName"] == "prom-reader"
    assert mounts["prometheus-token"]["readOnly"] is True
    ca_file = env["GROKCAST_PROMETHEUS_CA_FILE"]
    assert ca_file == mounts["prometheus-ca"]["mountPath"] + "/ca.pem"
    assert volumes["prometheus-ca"]["configMap"]["name"] == "prom-ca"
    assert env["GROKCAST_PROMETHEUS_URL"] == "https://prom.example:9091"
    assert not any("valueFrom" in e and "secretKeyRef" in e["valueFrom"]
                   for e in pod["containers"][0]["env"])


def test_service_account_token_can_authenticate_to_prometheus():
    env = env_of(only(render_objects({"prometheus": {"bearerToken": {"useServiceAccountToken": True}}}),
                      "Deployment"))
    assert env["GROKCAST_PROMETHEUS_BEARER_TOKEN_FILE"] == \
        "/var/run/secrets/kubernetes.io/serviceaccount/token"


def test_without_auth_settings_no_token_or_ca_is_configured():
    env = env_of(only(render_objects(), "Deployment"))
    assert "GROKCAST_PROMETHEUS_BEARER_TOKEN_FILE" not in env
    assert "GROKCAST_PROMETHEUS_CA_FILE" not in env


def test_empty_prometheus_url_leaves_the_autoscaler_off():
    # An empty URL means off in the operator too, but unset says so without relying on it, and
    # keeps the auth settings (which only matter with a URL) out of the pod.
    env = env_of(only(render_objects({"prometheus": {"url": "", "bearerToken": {
        "useServiceAccountToken": True}}}), "Deployment"))
    assert not [name for name in env if name.startswith("GROKCAST_PROMETHEUS_")]


def test_operator_runs_non_root_read_only_with_no_capabilities():
    pod = only(render_objects(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = pod["containers"][0]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_probes_hit_healthz_and_readyz_on_the_operator_http_port():
    container = only(render_objects({"operator": {"httpPort": 9090}}), "Deployment")[
        "spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 9090}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert env_of({"spec": {"template": {"spec": {"containers": [container]}}}})[
        "GROKCAST_HTTP_ADDR"] == "0.0.0.0:9090"


def test_topology_spread_selects_the_operator_pods():
    deployment = only(render_objects({"replicaCount": 2}), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        selector = constraint["labelSelector"]["matchLabels"]
        assert selector.items() <= pod_labels.items()


def test_scheduling_values_reach_the_pod():
    values = {"nodeSelector": {"pool": "system"},
              "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
              "affinity": {"podAntiAffinity": {}}, "priorityClassName": "critical",
              "imagePullSecrets": [{"name": "a"}, {"name": "b"}]}
    deployment = only(render_objects(values), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["tolerations"] == values["tolerations"]
    assert pod["affinity"] == {"podAntiAffinity": {}}
    assert pod["priorityClassName"] == "critical"
    assert pod["imagePullSecrets"] == [{"name": "a"}, {"name": "b"}]


@pytest.mark.parametrize("values,image", [
    ({}, "ghcr.io/grokcast/grokcast-operator:{app}"),
    ({"image": {"tag": "0.2.0-rc.1"}}, "ghcr.io/grokcast/grokcast-operator:0.2.0-rc.1"),
    ({"image": {"tag": "x", "digest": "sha256:" + "a" * 64}},
     "ghcr.io/grokcast/grokcast-operator@sha256:" + "a" * 64),
])
def test_operator_image_reference(values, image):
    with chartlib.load_chart() as chart:
        app = chart.metadata["appVersion"]
    container = only(render_objects(values), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == image.format(app=app)


def test_workload_images_reach_the_operator():
    env = env_of(only(render_objects({"workloadImages": {"vllm": "mirror.example/vllm:v1"}}),
                      "Deployment"))
    assert env["GROKCAST_VLLM_IMAGE"] == "mirror.example/vllm:v1"
    with chartlib.load_chart() as chart:
        defaults = chart.values["workloadImages"]
    for engine in ("agent", "serve", "whisper", "csm", "preload"):
        assert env[f"GROKCAST_{engine.upper()}_IMAGE"] == defaults[engine]


def test_metrics_service_and_service_monitor_point_at_the_operator():
    objs = render_objects({"serviceMonitor": {"enabled": True, "labels": {"release": "kps"}}})
    deployment = only(objs, "Deployment")
    service = only(objs, "Service")
    monitor = only(objs, "ServiceMonitor")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["metadata"]["labels"]["release"] == "kps"


def test_optional_objects_are_off_by_default():
    kinds = {o["kind"] for o in render_objects()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget"}
    assert not [o for o in render_objects() if o["kind"] == "ConfigMap"]


def test_network_policy_lets_only_agents_and_prometheus_reach_model_pools():
    objs = render_objects({"networkPolicy": {"enabled": True, "namespaces": ["voice"]}})
    policy = only(objs, "NetworkPolicy", "grokcast-model-pools")
    assert policy["metadata"]["namespace"] == "voice"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    peers = policy["spec"]["ingress"][0]["from"]
    assert peers[0]["podSelector"]["matchExpressions"][0]["key"] == "grokcast.io/voiceagent"
    assert peers[1]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    # Without a list of ingress peers for the agents, Twilio must still reach their Twilio
    # port from anywhere; their admin port (metrics) answers Prometheus only.
    agents = only(objs, "NetworkPolicy", "grokcast-agents")
    twilio, admin = agents["spec"]["ingress"]
    assert twilio["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "from" not in twilio
    assert admin["ports"] == [{"port": "admin", "protocol": "TCP"}]
    assert admin["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    operator_policy = only(objs, "NetworkPolicy", "grokcast-operator")
    assert operator_policy["metadata"]["namespace"] == chartlib.NAMESPACE


def test_listed_ingress_peers_reach_only_the_agents_twilio_port():
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    objs = render_objects({"networkPolicy": {"enabled": True, "namespaces": ["voice"],
                                             "agentIngressFrom": peers}})
    twilio, admin = only(objs, "NetworkPolicy", "grokcast-agents")["spec"]["ingress"]
    assert twilio["from"] == peers
    assert twilio["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert admin["ports"] == [{"port": "admin", "protocol": "TCP"}]


def test_monitoring_objects_need_their_files(tmp_path):
    # A packaged chart missing its rule or dashboard files must fail loudly, not render an
    # empty PrometheusRule.
    with chartlib.load_chart() as chart:
        chart.save_dir(tmp_path)
    copy = tmp_path / "grokcast"
    shutil.rmtree(copy / "files", ignore_errors=True)
    with helm_python.Chart.load(copy) as chart:
        for values, message in [({"prometheusRule": {"enabled": True}}, "files/prometheus"),
                                ({"grafanaDashboards": {"enabled": True}}, "files/grafana")]:
            with pytest.raises(helm_python.HelmRenderError, match=message):
                chart.render(values, name="g", namespace="n")


def test_notes_tell_the_user_what_to_apply_next():
    notes = chartlib.render({"operator": {"watchNamespaces": ["voice"]}, "prometheus": {"url": ""}})[
        "grokcast/templates/NOTES.txt"]
    assert "rollout status deployment/grokcast" in notes
    assert "config/samples/" in notes
    assert "watches only: voice" in notes
    assert "SLO autoscaling is off" in notes
    assert "/twilio/voice" in notes or "webhookUrl" in notes


def test_release_name_drives_object_names():
    objs = render_objects(name="voice-platform", namespace="ops")
    deployment = only(objs, "Deployment")
    assert deployment["metadata"]["name"] == "voice-platform-grokcast"
    assert deployment["metadata"]["namespace"] == "ops"
    assert only(objs, "ClusterRoleBinding", "voice-platform-grokcast")["subjects"][0]["namespace"] == "ops"
