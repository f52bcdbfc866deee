#!/bin/sh
# The image's whole root filesystem: the static binary, the CA certificates its
# TLS clients trust, and a passwd and group entry for uid/gid 65532, the user the
# image and the chart run as. Nothing else: no shell, no package manager.
#
#   image-rootfs.sh BINARY DIR
#
# The Dockerfile's build stage runs this script, and scripts/image.sh runs it to
# make the same image without a Docker engine: one definition of what ships.
# (POSIX sh: the build stage's rust image and this machine both run it.)
set -eu
binary="$1"
root="$2"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[ -f "$binary" ] || { echo "image-rootfs.sh: no binary at $binary" >&2; exit 1; }
[ -f "$ca_bundle" ] || { echo "image-rootfs.sh: no CA bundle at $ca_bundle (install ca-certificates)" >&2; exit 1; }
rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"
cp "$binary" "$root/usr/local/bin/teamaccess-operator"
chmod 0755 "$root/usr/local/bin/teamaccess-operator"
cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' > "$root/etc/passwd"
echo 'nonroot:x:65532:' > "$root/etc/group"
chmod 0644 "$root/etc/ssl/certs/ca-certificates.crt" "$root/etc/passwd" "$root/etc/group"
