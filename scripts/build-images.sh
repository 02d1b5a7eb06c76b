#!/usr/bin/env bash
# Builds the container images the Helm chart defaults to, from docker/*.Dockerfile:
#   ghcr.io/grokcast/grokcast-operator:VERSION   (docker/operator.Dockerfile)
#   ghcr.io/grokcast/grokcast-agent:VERSION      (docker/agent.Dockerfile)
#   ghcr.io/grokcast/grokcast-serve:VERSION      (docker/serve.Dockerfile)
#   ghcr.io/grokcast/grokcast-csm:VERSION        (docker/csm.Dockerfile: CSM-1B on CUDA)
# VERSION is the chart's appVersion (charts/grokcast/Chart.yaml), so `helm install` with default
# values runs exactly these images.
#
# Usage: scripts/build-images.sh [--registry REG] [--tag TAG] [--only NAME]... [--push]
#                                [--kind-load CLUSTER] [--dry-run]
#   --registry REG       image prefix instead of ghcr.io/grokcast
#   --tag TAG            tag instead of the chart's appVersion
#   --only NAME          operator, agent, serve or csm (repeatable); default: all four
#   --push               push after building
#   --kind-load CLUSTER  load the images into a kind cluster (for docs/quickstart.md)
#   --dry-run            print the docker commands without running them
#
# Needs a running Docker engine with BuildKit. Where none runs, it says so and exits 3 without
# building anything. The agent and serve images bake model files from models/, so it runs
# scripts/install.sh first when models/ is incomplete.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo_root"

registry="ghcr.io/grokcast"
tag="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$/\1/p' charts/grokcast/Chart.yaml)"
only=()
push=0
kind_cluster=""
dry_run=0

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry="${2:?--registry needs a value}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a value}"; shift 2 ;;
    --only)
      case "${2:-}" in
        operator | agent | serve | csm) only+=("$2") ;;
        *) echo "build-images.sh: --only takes operator, agent, serve or csm, not '${2:-}'" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --push) push=1; shift ;;
    --kind-load) kind_cluster="${2:?--kind-load needs a cluster name}"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "build-images.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$tag" ]; then
  echo "build-images.sh: no appVersion in charts/grokcast/Chart.yaml and no --tag" >&2
  exit 2
fi
[ ${#only[@]} -gt 0 ] || only=(operator agent serve csm)

run() {
  echo "+ $*"
  if [ "$dry_run" -eq 0 ]; then "$@"; fi
}

if [ "$dry_run" -eq 0 ]; then
  if ! command -v docker >/dev/null 2>&1; then
    echo "build-images.sh: no docker command on this machine: no image was built." >&2
    echo "Install Docker (or run with --dry-run to see the commands)." >&2
    exit 3
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "build-images.sh: no Docker engine is running here (docker info failed): no image was built." >&2
    echo "Start the Docker daemon, or run with --dry-run to see the commands." >&2
    exit 3
  fi
fi

needs_models=0
for name in "${only[@]}"; do
  # The operator and CSM images bake no model files.
  if [ "$name" = agent ] || [ "$name" = serve ]; then needs_models=1; fi
done
if [ "$needs_models" -eq 1 ]; then
  for f in models/vad/silero_vad.onnx models/onnxruntime models/whisper models/piper models/llm; do
    if [ ! -e "$f" ]; then
      echo "build-images.sh: $f is missing; installing models with scripts/install.sh"
      run ./scripts/install.sh --skip-cluster --skip-nextest --skip-browser
      break
    fi
  done
fi

for name in "${only[@]}"; do
  image="$registry/grokcast-$name:$tag"
  run env DOCKER_BUILDKIT=1 docker build -f "docker/$name.Dockerfile" -t "$image" .
  if [ "$push" -eq 1 ]; then run docker push "$image"; fi
  if [ -n "$kind_cluster" ]; then run kind load docker-image "$image" --name "$kind_cluster"; fi
done
echo "build-images.sh: done (${only[*]} at $registry, tag $tag)"
