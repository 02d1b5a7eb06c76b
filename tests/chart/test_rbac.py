"""The chart grants the operator exactly what its code uses: the rules `grokcast-operator
rbac` prints (derived from the API calls in operator/src) and the union of the chart's
roles must be the same set of (API group, resource, verb)."""

import json
import subprocess

import pytest
import yaml

import chartlib

READ = {"get", "list", "watch"}


def triples(rules):
    found = set()
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    names = tuple(sorted(rule.get("resourceNames", [])))
                    found.add((group, resource, verb, names))
    return found


def chart_rules(values=None):
    objs = chartlib.objects(chartlib.render(values))
    roles = [o for o in objs if o["kind"] in ("ClusterRole", "Role")]
    return roles, triples(r for role in roles for r in role["rules"])


def operator_has_binary():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=chartlib.REPO, capture_output=True, text=True, check=True).stdout)
    return any(p["name"] == "grokcast-operator" and any("bin" in t["kind"] for t in p["targets"])
               for p in meta["packages"])


@pytest.fixture(scope="module")
def operator_rules():
    if not operator_has_binary():
        pytest.skip("grokcast-operator has no binary yet; this compares with `grokcast-operator "
                    "rbac` once it has")
    result = subprocess.run(["cargo", "run", "-q", "-p", "grokcast-operator", "--bin", "grokcast-operator", "--", "rbac"],
                            cwd=chartlib.REPO, capture_output=True, text=True, timeout=1800,
                            check=False)
    assert result.returncode == 0, f"grokcast-operator rbac failed:\n{result.stderr}"
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert docs and all(d["kind"] in ("ClusterRole", "Role") for d in docs), result.stdout[:500]
    return triples(r for d in docs for r in d["rules"])


def test_chart_grants_exactly_what_the_operator_uses(operator_rules):
    _, granted = chart_rules()
    missing = sorted(operator_rules - granted)
    extra = sorted(granted - operator_rules)
    assert not missing, f"the operator needs rules the chart does not grant: {missing}"
    assert not extra, f"the chart grants rules the operator does not use: {extra}"


def test_no_wildcards_and_no_secret_writes():
    roles, granted = chart_rules()
    for group, resource, verb, _ in granted:
        assert "*" not in (group, resource, verb)
        if resource == "secrets":
            assert verb in READ, "the operator only checks that Secrets exist"
    # Nothing that lets the operator escalate: no RBAC objects, no pods/exec, no CRDs.
    touched = {resource for _, resource, _, _ in granted}
    assert not touched & {"roles", "rolebindings", "clusterroles", "clusterrolebindings",
                          "pods/exec", "customresourcedefinitions", "serviceaccounts/token"}


def test_cluster_scoped_role_is_read_only():
    roles, _ = chart_rules()
    cluster = next(r for r in roles if r["metadata"]["name"] == "grokcast-cluster")
    assert {v for rule in cluster["rules"] for v in rule["verbs"]} <= READ


def test_watch_namespaces_keep_the_same_rules():
    # Limiting namespaces changes the bindings, never what the operator may do inside them.
    _, everywhere = chart_rules()
    _, limited = chart_rules({"operator": {"watchNamespaces": ["voice"]}})
    assert everywhere == limited


def rules_in_operator_source():
    """RBAC_RULES as written in operator/src/rbac.rs: the same table `grokcast-operator rbac`
    prints, read without compiling, so this check runs even before the binary is built."""
    import re
    source = (chartlib.REPO / "operator" / "src" / "rbac.rs").read_text(encoding="utf-8")
    table = source.split("pub const RBAC_RULES", 1)[1].split("];\n", 1)[0]
    rules = []
    for entry in re.finditer(r"Rule \{(.*?)\n    \}", table, re.S):
        body = entry.group(1)
        group = re.search(r'api_group: "([^"]*)"', body).group(1)
        resources = re.findall(r'"([^"]+)"', re.search(r"resources: &\[(.*?)\]", body).group(1))
        verbs = re.findall(r'"([^"]+)"', re.search(r"verbs: &\[(.*?)\]", body).group(1))
        rules.append({"apiGroups": [group], "resources": resources, "verbs": verbs})
    return rules


def test_chart_grants_exactly_the_rules_in_the_operator_source():
    if not (chartlib.REPO / "operator" / "src" / "rbac.rs").exists():
        pytest.skip("operator/src/rbac.rs does not exist yet")
    rules = rules_in_operator_source()
    assert len(rules) >= 5, "could not read RBAC_RULES from operator/src/rbac.rs"
    wanted = triples(rules)
    _, granted = chart_rules()
    assert sorted(wanted - granted) == [], "the operator needs rules the chart does not grant"
    assert sorted(granted - wanted) == [], "the chart grants rules the operator does not use"
