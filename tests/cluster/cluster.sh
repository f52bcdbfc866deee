#!/usr/bin/env bash
# Builds (once, cached) and runs the local control plane.
#
#   cluster.sh bin    build the upstream binaries if needed; print their directory
#   cluster.sh up     start a cluster; the last line printed is KUBECONFIG=<path>
#   cluster.sh down   stop the cluster KUBECONFIG names, else the last one started
#   cluster.sh node-up    add a node to that cluster (root; one per machine; see cmd/localcluster/node.go)
#   cluster.sh node-down  remove the node and everything it changed on the machine
#   cluster.sh node-load ARCHIVE   import an image archive into the node's containerd
#   cluster.sh node-packages       only install the node's Debian packages (node-up does it too)
#
# The upstream binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kubectl, helm) are
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
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kubectl \
      helm.sh/helm/v3/cmd/helm \
    && go build -trimpath -ldflags='-s -w' -o "$tmp/etcd" go.etcd.io/etcd/server/v3) >&2
  touch "$tmp/.complete"
  rm -rf "$bin"
  mv "$tmp" "$bin"
  echo "control plane built in $((SECONDS - started))s" >&2
}

# Our own small programs (the launcher, the node's pause program and the OCI
# archive writer); Go's build cache makes this quick. pause runs in a container
# with no libc, so it is built static.
build_launcher() {
  mkdir -p "$bin"
  (cd "$here" && go build -o "$bin/" ./cmd/localcluster ./cmd/ociarchive \
    && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$bin/pause" ./cmd/pause) >&2
}

# The node's Debian packages: containerd (1.6) with runc, the CNI plugins
# (bridge, host-local, loopback), iptables for the Service DNAT. What is there
# already counts, whichever package brought it (Docker's containerd.io, say).
install_node_packages() {
  local missing=()
  command -v containerd >/dev/null && command -v ctr >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null && command -v ip6tables >/dev/null || missing+=(iptables)
  ((${#missing[@]})) || return 0
  [[ $EUID -eq 0 ]] || { echo "a node needs root (and the packages ${missing[*]})" >&2; exit 1; }
  echo "installing the node's packages: ${missing[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}") >&2
}

mkdir -p "$cache_root/cluster-bin"
case "${1:-}" in
  bin)  build_upstream; build_launcher; echo "$bin" ;;
  up)   build_upstream; build_launcher; exec "$bin/localcluster" up -bin "$bin" ;;
  down) build_launcher; exec "$bin/localcluster" down ;;
  node-packages) install_node_packages ;;
  node-up)   build_upstream; build_launcher; install_node_packages; exec "$bin/localcluster" node-up -bin "$bin" ;;
  node-down) build_launcher; exec "$bin/localcluster" node-down ;;
  node-load) build_launcher; exec "$bin/localcluster" node-load "$2" ;;
  *)    echo "usage: $0 bin|up|down|node-up|node-down|node-load ARCHIVE|node-packages" >&2; exit 2 ;;
esac
