"""The chart configures the operator only through settings the operator reads, with the same
defaults: env names from its clap flags (`#[arg(env = "GROKCAST_...")]` in operator/src) and
workload images from `BuildSettings::default()`."""

import re

import pytest

import chartlib

OPERATOR_SRC = chartlib.REPO / "operator" / "src"

# Settings the chart may pass before the operator has a flag for them. Empty: every env name
# the chart sets is read by the operator (the Prometheus timeout, token file and CA file
# included). Add a name here only while its flag is being written.
AWAITING_FLAGS = set()


def operator_env_names():
    names = set()
    for path in OPERATOR_SRC.rglob("*.rs"):
        names |= set(re.findall(r'env\s*=\s*"(GROKCAST_[A-Z0-9_]+)"', path.read_text(encoding="utf-8")))
    return names


def chart_env_names(values=None):
    deployment = next(o for o in chartlib.objects(chartlib.render(values)) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"] for e in container["env"]}, container


def test_every_setting_the_chart_passes_is_a_flag_of_the_operator():
    known = operator_env_names()
    if not known:
        pytest.skip("operator/src has no clap flags yet")
    values = {"prometheus": {"bearerToken": {"secretName": "s"}, "ca": {"configMapName": "c"}}}
    names, container = chart_env_names(values)
    unknown = names - known
    assert unknown <= AWAITING_FLAGS, f"the operator reads no flag named {sorted(unknown - AWAITING_FLAGS)}"
    # The subcommand the chart runs exists (the command line lives in cli.rs).
    cli = (OPERATOR_SRC / "cli.rs").read_text(encoding="utf-8")
    assert container["args"] == ["run"] and re.search(r"\bRun\(", cli)


def test_chart_default_images_are_the_operators_defaults():
    settings = OPERATOR_SRC / "settings.rs"
    if not settings.exists():
        pytest.skip("operator/src/settings.rs does not exist yet")
    text = settings.read_text(encoding="utf-8")
    body = text.split("fn default() -> Self", 1)[1]
    defaults = dict(re.findall(r'(\w+)_image: "([^"]+)"\.into\(\)', body))
    with chartlib.load_chart() as chart:
        images = chart.values["workloadImages"]
    mapping = {"vllm": "vllm", "whisper": "whisper", "csm": "csm", "grokcast_serve": "serve",
               "preload": "preload", "agent": "agent"}
    assert set(defaults) == set(mapping), f"operator images changed: {sorted(defaults)}"
    for operator_name, chart_name in mapping.items():
        assert images[chart_name] == defaults[operator_name], chart_name


def test_leader_election_values_parse_as_the_operators_boolean_flag():
    # clap's bool flag (ArgAction::Set) accepts exactly "true" and "false".
    for replicas in (1, 2):
        deployment = next(o for o in chartlib.objects(chartlib.render({"replicaCount": replicas}))
                          if o["kind"] == "Deployment")
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["GROKCAST_LEADER_ELECT"] in ("true", "false")
        assert env["GROKCAST_LOG_FORMAT"] in ("json", "text")


@pytest.fixture(scope="module")
def operator_binary():
    import json
    import subprocess
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=chartlib.REPO, capture_output=True, text=True, check=True).stdout)
    if not any(p["name"] == "grokcast-operator" and any("bin" in t["kind"] for t in p["targets"])
               for p in meta["packages"]):
        pytest.skip("grokcast-operator has no binary yet")
    built = subprocess.run(["cargo", "build", "-q", "-p", "grokcast-operator", "--bin",
                            "grokcast-operator"], cwd=chartlib.REPO, capture_output=True,
                           text=True, timeout=1800, check=False)
    assert built.returncode == 0, built.stderr
    return f"{meta['target_directory']}/debug/grokcast-operator"


@pytest.mark.parametrize("case", chartlib.golden_cases())
def test_operator_accepts_the_environment_the_chart_gives_it(operator_binary, case, tmp_path):
    import os
    import subprocess
    _, container = chart_env_names(chartlib.load_values(case))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GROKCAST_", "KUBERNETES_"))}
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    env["HOME"] = str(tmp_path)
    for entry in container["env"]:
        # Downward-API values (pod name, namespace) as the kubelet would fill them in.
        env[entry["name"]] = entry.get("value", "grokcast-system")
    result = subprocess.run([operator_binary, *container["args"]], env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    # Every flag parsed: the run got as far as looking for a Kubernetes API to talk to.
    assert result.returncode == 1, result.stderr
    assert "connecting to the Kubernetes API" in result.stderr, result.stderr
