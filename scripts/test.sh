#!/usr/bin/env bash
# The README's test command (make test): every test the project has.
#
#   1. unit tests
#   2. generated files (CRD copies, deploy/operator.yaml) match their sources
#   3. a local control plane of its own, unless TEAMACCESS_TEST_KUBECONFIG names one
#   4. the integration tests against that control plane
#   5. the benchmark at N=10 as a smoke test (release build, a control plane of its own)
#   6. cargo fmt --check and cargo clippy -D warnings
#
# A cluster it started is stopped on exit, also when a test fails. The last line
# is the summed count of all test binaries: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

results="$(mktemp)"
cluster_started=""
failed_steps=()

finish() {
  local rc=$?
  if [[ -n "$cluster_started" ]]; then
    echo "==> stopping the local control plane"
    KUBECONFIG="$cluster_started" tests/cluster/cluster.sh down || true
  fi
  local passed failed
  passed=$(grep -Eo '[0-9]+ passed' "$results" | awk '{s+=$1} END {print s+0}')
  failed=$(grep -Eo '[0-9]+ failed' "$results" | awk '{s+=$1} END {print s+0}')
  rm -f "$results"
  if ((${#failed_steps[@]})); then
    echo "failed steps: ${failed_steps[*]}"
    rc=1
  fi
  echo "${passed} passed, ${failed} failed"
  exit "$rc"
}
trap finish EXIT

# Runs a step, remembering its failure; test output is also kept for the summary.
step() {
  local name="$1"
  shift
  echo "==> $name"
  if ! "$@" 2>&1 | tee -a "$results"; then
    failed_steps+=("$name")
    return 1
  fi
}

step "unit tests" cargo test --locked --workspace --lib --bins || exit 1
step "generated files are current" scripts/generate.sh --check || exit 1

if [[ -z "${TEAMACCESS_TEST_KUBECONFIG:-}" ]]; then
  echo "==> starting a local control plane (TEAMACCESS_TEST_KUBECONFIG is not set)"
  line="$(tests/cluster/cluster.sh up | tail -n 1)" || { failed_steps+=("cluster-up"); exit 1; }
  cluster_started="${line#KUBECONFIG=}"
  export TEAMACCESS_TEST_KUBECONFIG="$cluster_started"
fi

step "integration tests" cargo test --locked --test '*' -- --test-threads="${TEAMACCESS_TEST_THREADS:-4}"
# The benchmark at a small N, as a smoke test (make bench gives the real figures).
step "benchmark smoke test" env BENCH_N=10 BENCH_IDLE_SECS=5 BENCH_OUT="$(mktemp -d)/benchmarks.md" scripts/bench.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --locked --workspace --all-targets -- -D warnings
