#!/usr/bin/env bash
# Builds (once, cached) and runs the local control plane.
#
#   cluster.sh bin    build the upstream binaries if needed; print their directory
#   cluster.sh up     start a cluster; the last line printed is KUBECONFIG=<path>
#   cluster.sh down   stop the cluster KUBECONFIG names, else the last one started
#
# The upstream binaries (etcd, kube-apiserver, kube-controller-manager, helm) are
# cached outside the work tree under a key made of go.mod and go.sum, so only a
# change of pinned versions rebuilds them.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}"
key="$(cat "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
bin="$cache_root/cluster-bin/$key"

build_upstream() {
  if [[ -f "$bin/.complete" ]]; then
    return
  fi
  echo "building the control plane from the Kubernetes Go modules into $bin (first run only; takes several minutes)" >&2
  local started=$SECONDS tmp
  tmp="$(mktemp -d "$cache_root/cluster-bin/.build-XXXXXX")"
  (cd "$here" && go build -trimpath -ldflags='-s -w' -o "$tmp/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
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
