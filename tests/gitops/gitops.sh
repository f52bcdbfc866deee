#!/usr/bin/env bash
# Builds (once, cached) the GitOps tools the tests run against the operator:
#
#   gitops.sh bin    build them if needed; print their directory
#
#   argocd-health          the health Argo CD's own code gives live TeamAccess
#                          objects (argocd-health/; Argo CD pinned in its go.mod)
#   source-controller,     Flux's controllers, run as processes beside the test
#   kustomize-controller   cluster (flux/; one Flux release pinned in its go.mod)
#   git-server             Flux's Git test server on loopback (flux/cmd/git-server)
#   flux-crds/             the CRDs of those two controllers, from their modules
#
# Cached outside the work tree under a key of everything in tests/gitops, like
# the control plane: only a change of pinned versions or of the tools rebuilds
# them (several minutes each: Argo CD's and Flux's module graphs are large).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}"
key="$(cd "$here" && find . -type f | LC_ALL=C sort | xargs cat | sha256sum | cut -c1-16)"
bin="$cache_root/gitops-bin/$key"

build() {
  [[ -f "$bin/.complete" ]] && return
  echo "building the GitOps tools into $bin (first run only; takes several minutes)" >&2
  local started=$SECONDS tmp dir
  mkdir -p "$cache_root/gitops-bin"
  tmp="$(mktemp -d "$cache_root/gitops-bin/.build-XXXXXX")"
  (cd "$here/argocd-health" && go build -trimpath -ldflags='-s -w' -o "$tmp/argocd-health" .) >&2
  (cd "$here/flux" && go build -trimpath -ldflags='-s -w' -o "$tmp/" \
      github.com/fluxcd/source-controller github.com/fluxcd/kustomize-controller ./cmd/git-server) >&2
  mkdir "$tmp/flux-crds"
  for controller in source-controller kustomize-controller; do
    dir="$(cd "$here/flux" && go list -m -f '{{.Dir}}' "github.com/fluxcd/$controller")"
    cp "$dir"/config/crd/bases/*.yaml "$tmp/flux-crds/"
  done
  touch "$tmp/.complete"
  rm -rf "$bin"
  mv "$tmp" "$bin"
  echo "GitOps tools built in $((SECONDS - started))s" >&2
}

case "${1:-}" in
  bin) build; echo "$bin" ;;
  *) echo "usage: $0 bin" >&2; exit 2 ;;
esac
