#!/usr/bin/env bash
# Checks .github/workflows with actionlint, built from its Go module
# (tests/tools/go.mod pins it) like the control plane, and cached under a key of
# that module's go.mod and go.sum. actionlint runs shellcheck on every `run:`
# script when shellcheck is installed; this script installs it (Debian) as root.
set -euo pipefail
cd "$(dirname "$0")/.."
cache_root="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}"
key="$(cat tests/tools/go.mod tests/tools/go.sum | sha256sum | cut -c1-16)"
bin="$cache_root/tools-bin/$key"
if [[ ! -x "$bin/actionlint" ]]; then
  mkdir -p "$bin"
  (cd tests/tools && go build -trimpath -o "$bin/actionlint" github.com/rhysd/actionlint/cmd/actionlint)
fi
if ! command -v shellcheck >/dev/null && [[ $EUID -eq 0 ]]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck) >&2 \
    || echo "shellcheck could not be installed; actionlint checks the workflows without it" >&2
fi
"$bin/actionlint" -version | head -n 1
"$bin/actionlint" -no-color
echo "workflows are clean: $(ls .github/workflows | tr '\n' ' ')"
