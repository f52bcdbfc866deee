# Entry points for people and CI. Each target is a thin wrapper over a script,
# so the scripts can be read (and run) on their own.
SHELL := /bin/bash

.PHONY: help build test unit demo bench emulator cluster-up cluster-down cluster-bin node-up node-down image generate crds check-generated fmt lint

help:
	@echo "make demo          the seed's scenario on a local control plane (KEEP=1 leaves it running)"
	@echo "make test          every test: unit, integration on a real control plane, fmt, clippy"
	@echo "make bench         N TeamAccess vs the ideal client; writes docs/benchmarks.md (BENCH_N=100,1000,5000)"
	@echo "make cluster-up    start a local control plane; prints KUBECONFIG=<path> last"
	@echo "make cluster-down  stop it (KUBECONFIG=<path> picks one, else the last started)"
	@echo "make node-up       add a real node (kubelet, containerd) to that cluster; root, one per machine"
	@echo "make node-down     remove the node and everything it changed on the machine"
	@echo "make image         the Dockerfile's image as an OCI archive, without Docker (target/image/; ARCH=arm64)"
	@echo "make emulator      run the Entra ID / Graph emulator on its own; prints its URL and CA path"
	@echo "make generate      regenerate the CRD copies and deploy/operator.yaml (alias: make crds)"

build:
	cargo build --locked --release

test:
	scripts/test.sh

unit:
	cargo test --locked --workspace --lib --bins

demo:
	scripts/demo.sh

# BENCH_N=100,1000,5000 by default; docs/benchmarks.md receives the table.
bench:
	scripts/bench.sh

emulator:
	cargo run --locked --quiet -p azure-emulator -- --state-dir $${EMULATOR_STATE:-/tmp/azure-emulator}

cluster-bin:
	tests/cluster/cluster.sh bin

cluster-up:
	@tests/cluster/cluster.sh up

cluster-down:
	@tests/cluster/cluster.sh down

node-up:
	@tests/cluster/cluster.sh node-up

node-down:
	@tests/cluster/cluster.sh node-down

image:
	scripts/image.sh

# Regenerates the CRD copies and deploy/operator.yaml; `crds` is kept as an alias.
generate crds:
	scripts/generate.sh

check-generated:
	scripts/generate.sh --check

fmt:
	cargo fmt --all

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets -- -D warnings
