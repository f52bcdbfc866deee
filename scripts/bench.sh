#!/usr/bin/env bash
# make bench: builds the release operator, starts a control plane of its own, runs
# benches/scale.rs for each N in BENCH_N (default 100,1000,5000), with the
# bindings-into-existing-namespaces measurement (BENCH_BIND, default 1), prints the
# table and writes it to BENCH_OUT (default docs/benchmarks.md), then the operator's
# memory under a flood of forged labelled Roles (benches/cache_flood.rs), then the
# membership rows of spec.bind Members (benches/membership.rs). The test command
# runs it at a small N as a smoke test, writing to a temporary file.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes="${BENCH_N:-100,1000,5000}"
export BENCH_BIND="${BENCH_BIND:-1}"
out="${BENCH_OUT:-docs/benchmarks.md}"
mkdir -p "$(dirname "$out")"
cargo build --locked --release --quiet --bin teamaccess-operator
target_dir="${CARGO_TARGET_DIR:-target}"
export BENCH_OPERATOR="$(cd "$target_dir" && pwd)/release/teamaccess-operator"
line="$(tests/cluster/cluster.sh up | tail -n 1)"
kubeconfig="${line#KUBECONFIG=}"
trap 'KUBECONFIG="$kubeconfig" tests/cluster/cluster.sh down' EXIT
KUBECONFIG="$kubeconfig" "$(tests/cluster/cluster.sh bin | tail -n 1)/kubectl" apply --server-side -f crds/teamaccess.yaml >/dev/null
KUBECONFIG="$kubeconfig" "$(tests/cluster/cluster.sh bin | tail -n 1)/kubectl" wait --for=condition=Established crd/teamaccesses.teamaccess.dev >/dev/null
# As installed for real: every TeamAccess write passes the admission policies.
KUBECONFIG="$kubeconfig" "$(tests/cluster/cluster.sh bin | tail -n 1)/kubectl" apply --server-side -f deploy/admission-policy.yaml >/dev/null
PATH="$(tests/cluster/cluster.sh bin | tail -n 1):$PATH" KUBECONFIG="$kubeconfig" scripts/wait-authorship.sh
cargo bench --locked --bench scale -- "$kubeconfig" "$sizes" "$out"
# Memory under a flood of forged labelled Roles (BENCH_FLOOD_N, default 2000).
cargo bench --locked --bench cache_flood -- "$kubeconfig" "${BENCH_FLOOD_N:-2000}"
# spec.bind Members: 1,000 groups x 20 members, revocation latency, idle cost, RSS
# (BENCH_MEMBERSHIP_GROUPS, _SIZE, _LARGE, _REMOVALS, _POLL); its rows go to the same report.
cargo bench --locked --bench membership -- "$kubeconfig" "$out"
