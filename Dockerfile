# syntax=docker/dockerfile:1
# A static, non-root image of teamaccess-operator, for linux/amd64 and linux/arm64:
#
#   docker buildx build --platform linux/amd64,linux/arm64 .
#
# The build stage runs on the build platform and cross-compiles for each target
# platform (scripts/static-binary.sh: musl, zig as C compiler and linker), so no
# stage runs under emulation. The final stage is scripts/image-rootfs.sh's root
# filesystem and nothing else; scripts/image.sh packs the same root filesystem,
# with the USER, ENTRYPOINT, CMD and EXPOSE below, into an OCI archive without a
# Docker engine (the tests run it).

FROM --platform=$BUILDPLATFORM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY scripts/static-binary.sh scripts/image-rootfs.sh scripts/
ARG TARGETARCH
# Dependencies first, so a source change does not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY tests/azure-emulator/Cargo.toml tests/azure-emulator/Cargo.toml
RUN mkdir -p src tests/azure-emulator/src \
    && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && echo 'fn main() {}' > tests/azure-emulator/src/main.rs && touch tests/azure-emulator/src/lib.rs \
    && (scripts/static-binary.sh "$TARGETARCH" || true)
COPY src src
RUN touch src/main.rs src/lib.rs \
    && scripts/image-rootfs.sh "$(scripts/static-binary.sh "$TARGETARCH")" /rootfs

FROM scratch
COPY --from=build /rootfs /
# 65532 owns nothing in the image; the chart runs the pod as the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/teamaccess-operator"]
CMD ["run"]
