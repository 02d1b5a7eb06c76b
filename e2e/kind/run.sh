#!/usr/bin/env bash
# Runs the operator scenarios against a real cluster: a kind cluster, the operator image
# built from this checkout, the Helm chart in charts/grokcast, then the samples and the
# failure scenarios checked with kubectl.
#
# Skips (exit 0, with the reason) when kind, helm, kubectl or a docker engine is missing.
# Environment:
#   KIND_CLUSTER   cluster name (default grokcast-e2e); an existing cluster is reused
#   KEEP_CLUSTER=1 leave the cluster running afterwards
#   TIMEOUT        seconds to wait for each condition (default 180)
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cluster="${KIND_CLUSTER:-grokcast-e2e}"
timeout="${TIMEOUT:-180}"
image="grokcast/grokcast-operator:kind-e2e"
ns=voice
release_ns=grokcast-system

missing=()
for tool in kind helm kubectl docker; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ] && ! docker info >/dev/null 2>&1; then
  missing+=("a running docker engine")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "SKIPPED: kind scenarios need kind, helm, kubectl and docker; missing: ${missing[*]}"
  exit 0
fi

step() { printf '\n== %s\n' "$*"; }
fail() { echo "FAILED: $*" >&2; exit 1; }

# wait_for DESCRIPTION COMMAND...: retries COMMAND until it succeeds or TIMEOUT passes.
wait_for() {
  local what="$1"; shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 2
  done
  echo "ok: $what"
}

condition() { # KIND NAME TYPE -> prints status of the condition
  kubectl -n "$ns" get "$1" "$2" -o "jsonpath={.status.conditions[?(@.type==\"$3\")].status}"
}
reason() {
  kubectl -n "$ns" get "$1" "$2" -o "jsonpath={.status.conditions[?(@.type==\"$3\")].reason}"
}
is_condition() { [ "$(condition "$1" "$2" "$3")" = "$4" ]; }
has_reason() { [ "$(reason "$1" "$2" "$3")" = "$4" ]; }
exists() { kubectl -n "$ns" get "$1" "$2"; }
absent() { ! kubectl -n "$ns" get "$1" "$2"; }

cleanup() {
  if [ "${KEEP_CLUSTER:-}" != "1" ] && [ "${created_cluster:-0}" = "1" ]; then
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "cluster $cluster"
created_cluster=0
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --wait 120s
  created_cluster=1
fi
kubectl config use-context "kind-$cluster" >/dev/null

step "operator image from this checkout"
docker build -t "$image" -f "$root/e2e/kind/operator.Dockerfile" "$root"
kind load docker-image "$image" --name "$cluster"

step "helm install charts/grokcast"
helm upgrade --install grokcast "$root/charts/grokcast" \
  --namespace "$release_ns" --create-namespace \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  --wait --timeout "${timeout}s"
kubectl get crd voiceagents.grokcast.io modelpools.grokcast.io

step "samples apply and their children appear"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply --server-side -f "$root/config/samples/secrets/" -n "$ns"
kubectl apply --server-side -f "$root/config/samples/"
for pool in gemma-27b whisper-v3 csm-1b; do
  wait_for "Deployment and Service of ModelPool $pool" bash -c "kubectl -n $ns get deployment $pool && kubectl -n $ns get service $pool"
done
wait_for "receptionist agent Deployment" exists deployment receptionist-agent
wait_for "receptionist agent ConfigMap" exists configmap receptionist-agent
# kind has no GPUs: the pools cannot become Ready, and the operator must say so, not crash.
wait_for "ModelPool gemma-27b reports Ready=False" is_condition modelpool gemma-27b Ready False

step "an invalid spec is rejected by the CRD's validation"
bad=$(mktemp)
cat >"$bad" <<YAML
apiVersion: grokcast.io/v1alpha1
kind: ModelPool
metadata: {name: invalid, namespace: $ns}
spec:
  engine: vllm
  model: google/gemma-3-27b-it
  autoscaling: {minReplicas: 5, maxReplicas: 1, targetLatencyMs: 250}
YAML
if out=$(kubectl apply --server-side -f "$bad" 2>&1); then
  fail "an autoscaling range with minReplicas > maxReplicas was accepted: $out"
fi
echo "rejected as expected: $out"
rm -f "$bad"

step "a dangling pool reference gives Ready=False, then recovers"
kubectl -n "$ns" patch voiceagent receptionist --type merge -p '{"spec":{"llm":{"modelPoolRef":"no-such-pool"}}}'
wait_for "Ready=False with reason ModelPoolNotFound" has_reason voiceagent receptionist Ready ModelPoolNotFound
kubectl -n "$ns" patch voiceagent receptionist --type merge -p '{"spec":{"llm":{"modelPoolRef":"gemma-27b"}}}'
wait_for "reason no longer ModelPoolNotFound" bash -c "[ \"\$(kubectl -n $ns get voiceagent receptionist -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}')\" != ModelPoolNotFound ]"

step "a deleted child is recreated"
kubectl -n "$ns" delete service receptionist-agent --wait=true
wait_for "Service receptionist-agent recreated" exists service receptionist-agent

step "deleting a VoiceAgent removes its children"
kubectl -n "$ns" delete voiceagent receptionist --wait=true
wait_for "Deployment receptionist-agent removed" absent deployment receptionist-agent
wait_for "ConfigMap receptionist-agent removed" absent configmap receptionist-agent

step "operator kept running"
restarts=$(kubectl -n "$release_ns" get pods -l app.kubernetes.io/name=grokcast -o jsonpath='{.items[*].status.containerStatuses[*].restartCount}')
for r in $restarts; do [ "$r" = "0" ] || fail "operator restarted ($restarts)"; done

echo
echo "kind scenarios passed"
