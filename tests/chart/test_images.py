"""The Dockerfiles build what the chart runs: non-root, multi-stage, the right binary, and
the tags the chart's default values name; scripts/build-images.sh says clearly when no
Docker engine is there instead of pretending to build."""

import json
import os
import re
import subprocess

import pytest

import chartlib

DOCKER = chartlib.REPO / "docker"
SCRIPT = chartlib.REPO / "scripts" / "build-images.sh"
# image name -> (Dockerfile, cargo package, binary)
IMAGES = {
    "grokcast-operator": ("operator.Dockerfile", "grokcast-operator", "grokcast-operator"),
    "grokcast-agent": ("agent.Dockerfile", "grokcast-agent", "grokcast-agent"),
    "grokcast-serve": ("serve.Dockerfile", "grokcast-engines", "grokcast-serve"),
    # grokcast-serve again, built with CSM on CUDA (the `cuda` feature).
    "grokcast-csm": ("csm.Dockerfile", "grokcast-engines", "grokcast-serve"),
}


def stages(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    result, current = [], None
    for line in lines:
        if line.upper().startswith("FROM "):
            current = {"from": line.split()[1], "lines": []}
            result.append(current)
        elif current is not None:
            current["lines"].append(line)
    return result


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_dockerfile_is_multi_stage_and_runs_non_root(image):
    dockerfile, package, binary = IMAGES[image]
    built = stages(dockerfile)
    assert len(built) >= 2, "build tools must stay out of the runtime image"
    final = built[-1]
    assert "rust" not in final["from"], "the runtime stage must not be the Rust toolchain image"
    assert f"-p {package}" in (DOCKER / dockerfile).read_text()
    assert f"--bin {binary}" in (DOCKER / dockerfile).read_text()
    users = [line for line in final["lines"] if line.upper().startswith("USER ")]
    assert users and users[-1].split()[1] in ("65532", "65532:65532")
    entrypoint = next(line for line in final["lines"] if line.upper().startswith("ENTRYPOINT"))
    assert json.loads(entrypoint.split(None, 1)[1]) == [f"/usr/local/bin/{binary}"]
    for stage in built:
        base = stage["from"]
        assert ":" in base.split("/")[-1] or "@" in base, f"{base} is not pinned"
        assert not base.endswith(":latest"), f"{base} floats"


def test_binaries_named_by_the_dockerfiles_exist_in_the_workspace():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=chartlib.REPO, capture_output=True, text=True, check=True).stdout)
    bins = {(p["name"], t["name"]) for p in meta["packages"] for t in p["targets"]
            if "bin" in t["kind"]}
    packages = {p["name"] for p in meta["packages"]}
    for dockerfile, package, binary in IMAGES.values():
        assert package in packages, f"{dockerfile} builds unknown package {package}"
        if (package, binary) not in bins:
            pytest.skip(f"{package} has no binary {binary} yet ({dockerfile} builds it once it has)")


def test_model_files_baked_into_images_are_the_ones_install_sh_installs():
    install = (chartlib.REPO / "scripts" / "install.sh").read_text()
    for dockerfile in ("agent.Dockerfile", "serve.Dockerfile"):
        text = (DOCKER / dockerfile).read_text()
        for subdir in set(re.findall(r"models/([a-z]+)/", text)) | set(
                re.findall(r"for d in ([a-z ]+); do", text)[0].split() if "for d in" in text else []):
            assert f"{subdir}/" in install, f"{dockerfile} expects models/{subdir}/"


def dry_run(*args):
    result = subprocess.run([str(SCRIPT), "--dry-run", *args], cwd=chartlib.REPO,
                            capture_output=True, text=True, check=False)
    return result


def test_build_script_tags_are_the_chart_defaults():
    with chartlib.load_chart() as chart:
        values = chart.values
        app = chart.metadata["appVersion"]
    result = dry_run("--only", "operator")
    assert result.returncode == 0, result.stderr
    operator = f"{values['image']['repository']}:{app}"
    assert f"-t {operator} " in result.stdout
    # The agent, serve and CSM images the operator deploys by default are the ones built here.
    # (Dry run of agent and serve would install models first, so those are checked by name.)
    for name in ("agent", "serve", "csm"):
        assert values["workloadImages"][name] == f"ghcr.io/grokcast/grokcast-{name}:{app}"
    # The CSM image bakes no models: its dry run needs none and builds the CUDA Dockerfile.
    result = dry_run("--only", "csm")
    assert result.returncode == 0, result.stderr
    assert "install.sh" not in result.stdout
    assert f"-f docker/csm.Dockerfile -t ghcr.io/grokcast/grokcast-csm:{app} ." in result.stdout


def test_build_script_without_a_docker_engine_says_so_and_builds_nothing(tmp_path):
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-such-docker.sock")
    result = subprocess.run([str(SCRIPT), "--only", "operator"], cwd=chartlib.REPO, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 3
    assert "no image was built" in result.stderr
    assert "+ " not in result.stdout


@pytest.mark.parametrize("args,message", [
    (["--only", "gateway"], "--only takes operator, agent, serve or csm"),
    (["--frobnicate"], "unknown option --frobnicate"),
])
def test_build_script_rejects_bad_arguments(args, message):
    result = dry_run(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_csm_image_builds_the_cuda_feature_and_serves_csm_by_default():
    text = (DOCKER / "csm.Dockerfile").read_text()
    assert "--no-default-features --features cuda" in text
    assert "GROKCAST_SERVE_TTS_ENGINE=csm" in text
    final = stages("csm.Dockerfile")[-1]
    assert "runtime" in final["from"], "the runtime stage needs only the CUDA runtime"
