# syntax=docker/dockerfile:1
# A static, non-root image of teamaccess-operator.
#
# The build stage makes the same release binary `cargo build --release` makes for
# the tests, statically linked against musl so the final stage needs no libc.
# The final stage is scripts/image-rootfs.sh's root filesystem and nothing else;
# scripts/image.sh packs the same root filesystem, with the USER, ENTRYPOINT, CMD
# and EXPOSE below, into an OCI archive without a Docker engine (the tests run it).

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY tests/azure-emulator/Cargo.toml tests/azure-emulator/Cargo.toml
RUN mkdir -p src tests/azure-emulator/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tests/azure-emulator/src/main.rs && touch tests/azure-emulator/src/lib.rs \
    && cargo build --locked --release --target x86_64-unknown-linux-musl -p teamaccess-operator || true
COPY src src
COPY scripts/image-rootfs.sh scripts/image-rootfs.sh
RUN touch src/main.rs src/lib.rs \
    && cargo build --locked --release --target x86_64-unknown-linux-musl -p teamaccess-operator \
    && scripts/image-rootfs.sh target/x86_64-unknown-linux-musl/release/teamaccess-operator /rootfs

FROM scratch
COPY --from=build /rootfs /
# 65532 owns nothing in the image; the chart runs the pod as the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/teamaccess-operator"]
CMD ["run"]
