#!/usr/bin/env bash
# Builds (once, cached) and runs the local control plane.
#
#   cluster.sh bin    build the upstream binaries if needed; print their directory
#   cluster.sh up     start a cluster; the last line printed is KUBECONFIG=<path>
#   cluster.sh down   stop the cluster KUBECONFIG names, else the last one started
#
# The upstream binaries (etcd, kube-apiserver, kube-controller-manager, kubectl, helm) are
# cached outside the work tree under a key made of go.mod and go.sum, so only a
# change of pinned versions rebuilds them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}"
# The version the Kubernetes release build stamps in (kubectl version, /version).
k8s_version="$(awk '{ for (i = 1; i < NF; i++) if ($i == "k8s.io/kubernetes" && $(i + 1) ~ /^v1\./) { print $(i + 1); exit } }' "$here/go.mod")"
[[ -n "$k8s_version" ]] || { echo "cannot find the k8s.io/kubernetes version in $here/go.mod" >&2; exit 1; }
k8s_minor="$(cut -d. -f2 <<<"$k8s_version")"
version_pkg=k8s.io/component-base/version
ldflags="-s -w -X $version_pkg.gitVersion=$k8s_version -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$k8s_minor -X $version_pkg.gitTreeState=clean"
key="$( (cat "$here/go.mod" "$here/go.sum"; echo "$ldflags") | sha256sum | cut -c1-16)"
bin="$cache_root/cluster-bin/$key"

build_upstream() {
  if [[ -f "$bin/.complete" ]]; then
    return
  fi
  echo "building the control plane from the Kubernetes Go modules into $bin (first run only; takes several minutes)" >&2
  local started=$SECONDS tmp
  tmp="$(mktemp -d "$cache_root/cluster-bin/.build-XXXXXX")"
  (cd "$here" && go build -trimpath -ldflags="$ldflags" -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl \
      helm.sh/helm/v3/cmd/helm \
    && go build -trimpath -ldflags='-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3) >&2
  touch "$tmp/.complete"
  rm -rf "$bin"
  mv "$tmp" "$bin"
  echo "control plane built in $((SECONDS - started))s" >&2
}

# The launcher is our own small program; Go's build cache makes this quick.
build_launcher() {
  mkdir -p "$bin"
  (cd "$here" && go build -o "$bin/localcluster" ./cmd/localcluster) >&2
}

mkdir -p "$cache_root/cluster-bin"
case "${1:-}" in
  bin)  build_upstream; build_launcher; echo "$bin" ;;
  up)   build_upstream; build_launcher; exec "$bin/localcluster" up -bin "$bin" ;;
  down) build_launcher; exec "$bin/localcluster" down ;;
  *)    echo "usage: $0 bin|up|down" >&2; exit 2 ;;
esac
