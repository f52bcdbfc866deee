#!/usr/bin/env bash
# Fails when crds/ differs from what the Rust types generate.
set -euo pipefail
cd "$(dirname "$0")/.."
generated="$(mktemp)"
trap 'rm -f "$generated"' EXIT
cargo run --quiet --locked -- crd > "$generated"
if ! diff -u crds/teamaccess.yaml "$generated"; then
  echo "crds/teamaccess.yaml is not what 'teamaccess-operator crd' prints: run 'make crds' and commit the result" >&2
  exit 1
fi
echo "crds/teamaccess.yaml matches the Rust types"
