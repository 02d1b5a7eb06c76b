"""The install and operations docs stay true: every shell block either runs here (and is run
by this test) or says what it needs; YAML examples parse and validate against the chart's
values schema and the project's CRDs; the tables name every condition reason and every
setting the chart passes to the operator."""

import re
import subprocess

import pytest
import yaml

import chartlib
import k8sschema

DOCS = ["quickstart.md", "install-gitops.md", "operations.md", "troubleshooting.md",
        "security.md", "capacity-planning.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
NEEDS = re.compile(r"^# needs: \S", re.M)


def blocks(language_set):
    found = []
    for doc in DOCS:
        text = (chartlib.REPO / "docs" / doc).read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            if match.group(1) in language_set:
                line = text[:match.start()].count("\n") + 1
                found.append(pytest.param(match.group(2), id=f"{doc}:{line}"))
    return found


SHELL = blocks({"bash", "sh", "shell", "console"})
YAML = blocks({"yaml", "yml"})


def test_every_doc_exists_and_has_commands_or_examples():
    for doc in DOCS:
        assert (chartlib.REPO / "docs" / doc).is_file(), doc
    assert SHELL and YAML


@pytest.mark.parametrize("block", SHELL)
def test_shell_block_runs_here_or_says_what_it_needs(block):
    if NEEDS.search(block):
        # Only a leading marker counts, so a block cannot hide untested lines after it.
        assert NEEDS.match(block), "put '# needs: ...' on the block's first line"
        return
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=chartlib.REPO,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, f"documented command failed:\n{block}\n{result.stderr}"


def crds():
    found = []
    for path in sorted((chartlib.CHART / "crds").glob("*.yaml")):
        found += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return found


def chart_values_in(doc):
    """Chart values a YAML example carries: a values file, an Argo CD Application's
    valuesObject or a Flux HelmRelease's values."""
    kind = doc.get("kind")
    if kind == "Application":
        return doc["spec"]["source"].get("helm", {}).get("valuesObject")
    if kind == "HelmRelease":
        return doc["spec"].get("values")
    return None


@pytest.mark.parametrize("block", YAML)
def test_yaml_example_is_valid(block):
    docs = [d for d in yaml.safe_load_all(block) if d is not None]
    assert docs
    if block.startswith("# values.yaml"):
        with chartlib.load_chart() as chart:
            chart.validate_schema(docs[0])
        return
    for doc in docs:
        values = chart_values_in(doc)
        if values is not None:
            with chartlib.load_chart() as chart:
                chart.validate_schema(values)
        if str(doc.get("apiVersion", "")).startswith("grokcast.io/"):
            if not crds():
                pytest.skip("no CRDs in charts/grokcast/crds yet to validate against")
            k8sschema.validate(doc, crds())


def condition_reasons():
    source = (chartlib.REPO / "crds" / "src" / "common.rs").read_text(encoding="utf-8")
    body = source.split("pub mod reason", 1)[1]
    return re.findall(r'pub const \w+: &str = "(\w+)";', body)


def test_troubleshooting_explains_every_condition_reason():
    reasons = condition_reasons()
    assert len(reasons) >= 10
    text = (chartlib.REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    missing = [r for r in reasons if f"**`{r}`**" not in text]
    assert not missing, f"docs/troubleshooting.md lacks a section for reasons {missing}"


def test_operations_lists_every_setting_the_chart_passes_to_the_operator():
    values = {"prometheus": {"bearerToken": {"secretName": "s"}, "ca": {"configMapName": "c"}}}
    deployment = next(o for o in chartlib.objects(chartlib.render(values))
                      if o["kind"] == "Deployment")
    names = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    names -= {"GROKCAST_POD_NAME"}  # the Lease holder identity, not a setting
    text = (chartlib.REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`(GROKCAST_[A-Z_]+)`", text))
    assert names - documented == set(), "undocumented operator settings"


def test_relative_links_point_at_existing_files():
    for doc in DOCS:
        text = (chartlib.REPO / "docs" / doc).read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
            assert (chartlib.REPO / "docs" / target).exists(), f"{doc} links to missing {target}"


def test_quickstart_agent_uses_the_quickstart_pools_with_matching_roles():
    text = (chartlib.REPO / "docs" / "quickstart.md").read_text(encoding="utf-8")
    objs = [d for m in FENCE.finditer(text) if m.group(1) == "yaml"
            for d in yaml.safe_load_all(m.group(2)) if d]
    pools = {o["metadata"]["name"]: o["spec"] for o in objs if o["kind"] == "ModelPool"}
    agent = next(o for o in objs if o["kind"] == "VoiceAgent")
    for stage in ("stt", "llm", "tts"):
        ref = agent["spec"][stage]["modelPoolRef"]
        assert ref in pools, f"{stage}.modelPoolRef {ref} is not created in the quickstart"
        assert pools[ref]["role"] == stage
        assert pools[ref]["gpu"]["count"] == 0, "kind has no GPUs"
        assert pools[ref]["engine"] == "grokcast"
    namespaces = {o["metadata"]["namespace"] for o in objs}
    assert namespaces == {"voice"}
    # grokcast-serve answers only the model ids it knows (engines/src/server).
    server = "\n".join(p.read_text(encoding="utf-8")
                       for p in (chartlib.REPO / "engines" / "src" / "server").glob("*.rs"))
    for name, spec in pools.items():
        assert f'"{spec["model"]}"' in server, f"grokcast-serve does not serve {spec['model']}"


def test_images_named_in_docs_are_the_chart_defaults():
    with chartlib.load_chart() as chart:
        values = chart.values
        app = chart.metadata["appVersion"]
    known = set(values["workloadImages"].values()) | {f"{values['image']['repository']}:{app}"}
    for doc in DOCS:
        text = (chartlib.REPO / "docs" / doc).read_text(encoding="utf-8")
        for image in re.findall(r"\b((?:ghcr\.io/grokcast|vllm)/[\w.-]+:[\w.-]+)", text):
            assert image in known, f"{doc} names {image}, which is not a chart default"


def test_operations_documents_every_vllm_flag_the_operator_sets():
    source = (chartlib.REPO / "operator" / "src" / "model_pool.rs").read_text(encoding="utf-8")
    vllm = source.split("Engine::Vllm => {", 1)[1].split("Engine::Whisper =>", 1)[0]
    flags = set(re.findall(r'"(--[a-z0-9-]+)"', vllm))
    assert "--served-model-name" in flags
    text = (chartlib.REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = sorted(f for f in flags if f"`{f}" not in text and f" {f} " not in text)
    assert not missing, f"docs/operations.md does not explain vLLM flags {missing}"
    variants = re.findall(r'"([\w.-]+/[\w.-]+)",\s*\)', source)
    for repo in variants:
        assert repo in text, f"docs/operations.md does not name the quantized checkpoint {repo}"
