#!/usr/bin/env bash
# Builds (once, cached) the GitOps tools the tests run against the operator:
#
#   gitops.sh bin    build them if needed; print their directory
#
#   argocd-health    the health Argo CD's own code gives live TeamAccess objects
#                    (argocd-health/main.go; Argo CD pinned in its go.mod)
#
# Cached outside the work tree under a key of the tools' sources, go.mod and
# go.sum, like the control plane: only a change of pinned versions or of the
# tools rebuilds them (several minutes: Argo CD's module graph is large).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}"
key="$(cat "$here"/argocd-health/{go.mod,go.sum,main.go} | sha256sum | cut -c1-16)"
bin="$cache_root/gitops-bin/$key"

build() {
  [[ -f "$bin/.complete" ]] && return
  echo "building the GitOps tools into $bin (first run only; takes several minutes)" >&2
  local started=$SECONDS tmp
  mkdir -p "$cache_root/gitops-bin"
  tmp="$(mktemp -d "$cache_root/gitops-bin/.build-XXXXXX")"
  (cd "$here/argocd-health" && go build -trimpath -ldflags='-s -w' -o "$tmp/argocd-health" .) >&2
  touch "$tmp/.complete"
  rm -rf "$bin"
  mv "$tmp" "$bin"
  echo "GitOps tools built in $((SECONDS - started))s" >&2
}

case "${1:-}" in
  bin) build; echo "$bin" ;;
  *) echo "usage: $0 bin" >&2; exit 2 ;;
esac
