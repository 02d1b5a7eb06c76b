#!/usr/bin/env bash
# Builds the real cluster parts the e2e tests run (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, helm, and the OpenTelemetry Collector the trace tests
# send to) from the Go modules pinned in versions.env and
# the go.mod/go.sum beside this script, into a cache outside the clone keyed by version:
#   ${XDG_CACHE_HOME:-~/.cache}/grokcast/k8s/<tool>-<version>/bin
# A tool whose directory is complete is not built again, so every run after the first is
# a no-op. Each build goes to a temporary directory that is renamed into place when done,
# so an interrupted build never leaves a half-written binary behind.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
. "$here/versions.env"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/grokcast/k8s"
mkdir -p "$cache"
export GOFLAGS="-buildvcs=false -mod=mod"
# The machine's own Go builds these; never fetch another toolchain.
export GOTOOLCHAIN=local
# A release-like build: no debug symbols (smaller, faster links), paths of this machine kept out.
common=(-trimpath)

build() { # build <name> <version> <module dir> <ldflags> <package>...
  local name=$1 version=$2 dir=$3 ldflags=$4
  shift 4
  local dest="$cache/$name-$version"
  if [ -f "$dest/.complete" ]; then
    return 0
  fi
  echo "==> building $name $version (cached in $dest)"
  local start=$SECONDS tmp
  tmp="$(mktemp -d "$cache/.$name-XXXXXX")"
  mkdir -p "$tmp/bin"
  (cd "$here/$dir" && go build "${common[@]}" -ldflags "-s -w $ldflags" -o "$tmp/bin/" "$@")
  # go names a command after its package path's last element before a /vN suffix: etcd's
  # server module builds "server".
  if [ "$name" = etcd ] && [ -f "$tmp/bin/server" ]; then
    mv "$tmp/bin/server" "$tmp/bin/etcd"
  fi
  touch "$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  echo "==> $name $version built in $((SECONDS - start)) s"
}

k8s_minor="${KUBERNETES_VERSION#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags=""
# The version the server reports (/version, kubectl version): the operator checks it at start.
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1"
  k8s_ldflags+=" -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done

build kubernetes "$KUBERNETES_VERSION" kubernetes "$k8s_ldflags" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
build etcd "$ETCD_VERSION" etcd "" go.etcd.io/etcd/server/v3
build kwok "$KWOK_VERSION" kwok "-X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
  sigs.k8s.io/kwok/cmd/kwok
build helm "$HELM_VERSION" helm "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
  helm.sh/helm/v3/cmd/helm
build otelcol "$OTELCOL_VERSION" otelcol "-X main.version=$OTELCOL_VERSION" .
