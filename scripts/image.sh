#!/usr/bin/env bash
# The Dockerfile's image, made without a Docker engine (make image):
#   1. the static release binary, as the Dockerfile's build stage makes it
#      (cargo build --release --target x86_64-unknown-linux-musl);
#   2. the root filesystem from scripts/image-rootfs.sh, the script the
#      Dockerfile's build stage runs;
#   3. an OCI archive with the final stage's USER, ENTRYPOINT, CMD and EXPOSE,
#      read from the Dockerfile by tests/cluster's ociarchive.
# Prints the archive's path last. IMAGE names the image (default
# localhost/teamaccess-operator:dev); cluster.sh node-load imports the archive.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
image="${IMAGE:-localhost/teamaccess-operator:dev}"
out_dir="target/image"

if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  echo "adding the Rust target $target" >&2
  rustup target add "$target" >&2
fi
# aws-lc-sys (rustls' crypto) compiles C for the target: musl-gcc comes from musl-tools.
if ! command -v musl-gcc >/dev/null; then
  [[ $EUID -eq 0 ]] || { echo "install musl-tools (musl-gcc) to build the static binary" >&2; exit 1; }
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends musl-tools) >&2
fi
cargo build --locked --release --target "$target" -p teamaccess-operator >&2

bin_dir="$(tests/cluster/cluster.sh bin | tail -n 1)"
mkdir -p "$out_dir"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
scripts/image-rootfs.sh "target/$target/release/teamaccess-operator" "$rootfs/root"
"$bin_dir/ociarchive" -rootfs "$rootfs/root" -name "$image" -dockerfile Dockerfile -arch amd64 \
  -out "$out_dir/teamaccess-operator.oci.tar" >&2
echo "$out_dir/teamaccess-operator.oci.tar"
