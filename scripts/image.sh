#!/usr/bin/env bash
# The Dockerfile's image for one architecture, made without a Docker engine
# (make image; ARCH=arm64 for arm64):
#   1. the static release binary, as the Dockerfile's build stage makes it
#      (scripts/static-binary.sh, cross-compiled with zig for either architecture);
#   2. the root filesystem from scripts/image-rootfs.sh, the script the
#      Dockerfile's build stage runs;
#   3. an OCI archive with the final stage's USER, ENTRYPOINT, CMD and EXPOSE,
#      read from the Dockerfile by tests/cluster's ociarchive.
# Prints the archive's path last: target/image/teamaccess-operator-<arch>.oci.tar.
# IMAGE names the image (default localhost/teamaccess-operator:dev);
# cluster.sh node-load imports the archive into the local node.
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${ARCH:-amd64}"
image="${IMAGE:-localhost/teamaccess-operator:dev}"
out_dir="target/image"

started=$SECONDS
binary="$(scripts/static-binary.sh "$arch")"
echo "static $arch binary: $binary ($(stat -c %s "$binary") bytes), built in $((SECONDS - started))s" >&2

bin_dir="$(tests/cluster/cluster.sh bin | tail -n 1)"
mkdir -p "$out_dir"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
scripts/image-rootfs.sh "$binary" "$rootfs/root"
"$bin_dir/ociarchive" -rootfs "$rootfs/root" -name "$image" -dockerfile Dockerfile -arch "$arch" \
  -out "$out_dir/teamaccess-operator-$arch.oci.tar" >&2
echo "$out_dir/teamaccess-operator-$arch.oci.tar"
