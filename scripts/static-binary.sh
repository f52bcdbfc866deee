#!/bin/sh
# Builds the static (musl) release binary of teamaccess-operator for one
# architecture and prints its path:
#
#   static-binary.sh amd64|arm64
#
# Both architectures are cross-compiled the same way, with zig as the C compiler
# and linker (cargo-zigbuild): rustls' crypto (aws-lc-sys) is C, and zig carries
# a C toolchain and musl for every target, so no emulation and no per-target
# cross gcc is needed. The Dockerfile's build stage runs this on the build
# platform for each --platform; scripts/image.sh runs it here. Zig (from PyPI) and
# cargo-zigbuild (from crates.io) are installed on first use, pinned, under
# ${TEAMACCESS_CACHE_DIR:-~/.cache/teamaccess-operator}.
# (POSIX sh: the Dockerfile's rust image and this machine both run it.)
set -eu
zig_version=0.14.1          # 0.16's `zig ar` cannot create archives (aws-lc-rs#993)
zigbuild_version=0.24.1

case "${1:-}" in
  amd64) target=x86_64-unknown-linux-musl ;;
  arm64) target=aarch64-unknown-linux-musl ;;
  *) echo "usage: $0 amd64|arm64" >&2; exit 2 ;;
esac
cache="${TEAMACCESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/teamaccess-operator}"
tools="$cache/cross-$zig_version-$zigbuild_version"

if [ ! -x "$tools/bin/zig" ] || [ ! -x "$tools/bin/cargo-zigbuild" ]; then
  echo "installing zig $zig_version and cargo-zigbuild $zigbuild_version into $tools (first run only)" >&2
  rm -rf "$tools.tmp"
  python3 -m venv "$tools.tmp/venv" >&2
  "$tools.tmp/venv/bin/pip" install --quiet "ziglang==$zig_version" >&2
  mkdir -p "$tools.tmp/bin"
  # A relocatable zig: the venv's python runs the ziglang package's binary.
  printf '#!/bin/sh\nexec "$(dirname "$0")/../venv/bin/python3" -m ziglang "$@"\n' > "$tools.tmp/bin/zig"
  chmod +x "$tools.tmp/bin/zig"
  cargo install --quiet --locked --root "$tools.tmp" --version "$zigbuild_version" cargo-zigbuild >&2
  rm -rf "$tools"
  mv "$tools.tmp" "$tools"
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
PATH="$tools/bin:$PATH" cargo zigbuild --locked --release --target "$target" -p teamaccess-operator >&2
echo "${CARGO_TARGET_DIR:-target}/$target/release/teamaccess-operator"
