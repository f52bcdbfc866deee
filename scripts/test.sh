#!/usr/bin/env bash
# The README's test command (make test): every test the project has.
#
#   1. unit tests
#   2. generated files (CRD copies, deploy/operator.yaml) match their sources
#   3. a local control plane of its own, unless TEAMACCESS_TEST_KUBECONFIG names one,
#      and the GitOps tools (tests/gitops), unless TEAMACCESS_GITOPS_BIN names them
#   4. the integration tests against that control plane
#   5. the demo (make demo), which checks what it prints
#   6. the node tests (tests/node.rs): the images as the Dockerfile makes them (amd64,
#      and arm64 cross-compiled and run under qemu-user), a real node added to that
#      control plane (root), the chart's pods on it, one test at a time; then the node
#      is removed and the machine must be as it was before
#   7. the benchmark at N=10 as a smoke test (release build, a control plane of its own)
#   8. cargo fmt --check, cargo clippy -D warnings, actionlint on .github/workflows
#
# A cluster it started is stopped on exit, also when a test fails. The tests run
# under cargo-nextest (pinned below, built once into the cache): each test in a
# process of its own, every test run even when others fail, and a JUnit report
# per step that the summary counts. The tests each step should run are listed
# first (cargo nextest list): a listed test with no result in the reports (its
# run was killed, or never started) is counted as failed and named "not run".
# The last line is the sum: "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."

reports="$(mktemp -d)"
listed=0
cluster_started=""
node_started=""
failed_steps=()

finish() {
  local rc=$?
  if [[ -n "$node_started" ]]; then
    echo "==> removing the node"
    KUBECONFIG="$node_started" tests/cluster/cluster.sh node-down || true
  fi
  if [[ -n "$cluster_started" ]]; then
    echo "==> stopping the local control plane"
    KUBECONFIG="$cluster_started" tests/cluster/cluster.sh down || true
  fi
  local passed failed ignored not_run
  read -r passed failed ignored < <(count_reports) || true
  passed=${passed:-0} failed=${failed:-0} ignored=${ignored:-0}
  rm -rf "$reports"
  not_run=$((listed - passed - failed - ignored))
  if ((not_run > 0)); then
    echo "${not_run} listed tests reported no result (not run)"
    failed=$((failed + not_run))
    rc=1
  fi
  if ((${#failed_steps[@]})); then
    echo "failed steps: ${failed_steps[*]}"
    rc=1
  fi
  if ((ignored > 0)); then
    echo "${passed} passed, ${failed} failed, ${ignored} skipped"
  else
    echo "${passed} passed, ${failed} failed"
  fi
  exit "$rc"
}
trap finish EXIT

# "passed failed skipped" over every JUnit report the steps left.
count_reports() {
  python3 - "$reports" <<'PY'
import pathlib, sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
for report in pathlib.Path(sys.argv[1]).glob("*.xml"):
    for case in ET.parse(report).iter("testcase"):
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            failed += 1
        elif "skipped" in kinds:
            skipped += 1
        else:
            passed += 1
print(passed, failed, skipped)
PY
}

# cargo-nextest, built from crates.io once per version into the cache.
NEXTEST_VERSION=0.9.151
nextest_root="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}/tools/cargo-nextest-$NEXTEST_VERSION"
if [[ ! -x "$nextest_root/bin/cargo-nextest" ]]; then
  echo "==> building cargo-nextest $NEXTEST_VERSION into $nextest_root (first run only)"
  cargo install --locked --quiet --version "$NEXTEST_VERSION" --root "$nextest_root" cargo-nextest \
    || { echo "cannot build cargo-nextest" >&2; exit 1; }
fi
export PATH="$nextest_root/bin:$PATH"
target_dir="${CARGO_TARGET_DIR:-target}"

# Adds the number of tests `cargo nextest run ARGS` would run to the expected total.
list_tests() {
  local n
  n=$(cargo nextest list --locked "$@" --message-format oneline 2>/dev/null | grep -c .) || true
  listed=$((listed + n))
}

# Runs the tests of ARGS as step NAME and keeps its JUnit report.
test_step() {
  local name="$1" rc=0
  shift
  rm -f "$target_dir/nextest/ci/junit.xml"
  step "$name" cargo nextest run --locked --profile ci "$@" || rc=1
  if [[ -f "$target_dir/nextest/ci/junit.xml" ]]; then
    cp "$target_dir/nextest/ci/junit.xml" "$reports/${name// /-}.xml"
  fi
  return "$rc"
}

# Runs a step, remembering its failure.
step() {
  local name="$1" started=$SECONDS
  shift
  echo "==> $name"
  if ! "$@" 2>&1; then
    failed_steps+=("$name")
    echo "==> $name failed after $((SECONDS - started))s"
    return 1
  fi
  echo "==> $name took $((SECONDS - started))s"
}

list_tests --workspace --lib --bins
test_step "unit tests" --workspace --lib --bins || exit 1
step "generated files are current" scripts/generate.sh --check || exit 1

if [[ -z "${TEAMACCESS_TEST_KUBECONFIG:-}" ]]; then
  echo "==> starting a local control plane (TEAMACCESS_TEST_KUBECONFIG is not set)"
  line="$(tests/cluster/cluster.sh up | tail -n 1)" || { failed_steps+=("cluster-up"); exit 1; }
  cluster_started="${line#KUBECONFIG=}"
  export TEAMACCESS_TEST_KUBECONFIG="$cluster_started"
fi

# The GitOps tools (Argo CD's health assessment, Flux's controllers), built once
# into the cache, so that no test's time includes their build.
if [[ -z "${TEAMACCESS_GITOPS_BIN:-}" ]]; then
  gitops_bin="$(tests/gitops/gitops.sh bin | tail -n 1)" || { failed_steps+=("gitops tools"); exit 1; }
  export TEAMACCESS_GITOPS_BIN="$gitops_bin"
fi

# Every integration test binary but node.rs, which needs the node and runs alone.
integration=()
for file in tests/*.rs; do
  name="$(basename "$file" .rs)"
  [[ "$name" == node ]] || integration+=(--test "$name")
done
list_tests "${integration[@]}"
test_step "integration tests" "${integration[@]}" --test-threads="${TEAMACCESS_TEST_THREADS:-4}"

# The README's demo, end to end on a control plane of its own: what it prints
# is also checked there (tests/seed_demo.rs owns the same checks as a test).
step "demo (make demo)" scripts/demo.sh

# The node tests. Without root there is no node, and they fail saying so.
if [[ $EUID -eq 0 ]]; then
  # The packages first: the comparison is of what the node changes, and installing
  # iptables, say, brings its default chains into view.
  tests/cluster/cluster.sh node-packages || failed_steps+=("node packages")
  machine_before="$(mktemp)"
  tests/cluster/machine-state.sh > "$machine_before"
  step "arm64 image (ARCH=arm64 scripts/image.sh)" env ARCH=arm64 scripts/image.sh
  if ! command -v qemu-aarch64-static >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static) \
      || echo "could not install qemu-user-static; the arm64 test will say so" >&2
  fi
  if step "amd64 image (scripts/image.sh)" scripts/image.sh \
    && step "node-up" env KUBECONFIG="$TEAMACCESS_TEST_KUBECONFIG" tests/cluster/cluster.sh node-up; then
    node_started="$TEAMACCESS_TEST_KUBECONFIG"
    step "image into the node" tests/cluster/cluster.sh node-load target/image/teamaccess-operator-amd64.oci.tar
  fi
fi
list_tests --test node
test_step "node tests" --test node --test-threads=1
if [[ -n "$node_started" ]]; then
  step "node-down" env KUBECONFIG="$node_started" tests/cluster/cluster.sh node-down && node_started=""
  machine_after="$(mktemp)"
  tests/cluster/machine-state.sh > "$machine_after"
  step "node-down left the machine as it was" diff -u "$machine_before" "$machine_after"
fi
# The benchmark at a small N, as a smoke test (make bench gives the real figures).
# Two samples of T and T0, three single objects timed apply → Ready per directory,
# a 2 s resync inside a 5 s idle window (two resyncs, checked), and any write
# during that window fails it.
step "benchmark smoke test" env BENCH_N=10 BENCH_FLOOD_N=50 BENCH_MEMBERSHIP_GROUPS=10 BENCH_MEMBERSHIP_LARGE=200 \
  BENCH_MEMBERSHIP_REMOVALS=3 BENCH_MEMBERSHIP_POLL=2s BENCH_SAMPLES=2 BENCH_LATENCY_SAMPLES=3 BENCH_RESYNC=2s BENCH_IDLE_SECS=5 \
  BENCH_REQUIRE_IDLE_ZERO=1 BENCH_OUT="$(mktemp -d)/benchmarks.md" scripts/bench.sh
step "cargo fmt --check" cargo fmt --all -- --check
step "cargo clippy" cargo clippy --locked --workspace --all-targets -- -D warnings
step "actionlint" scripts/lint-workflows.sh
