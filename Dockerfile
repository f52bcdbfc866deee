# syntax=docker/dockerfile:1
# A static, non-root image of teamaccess-operator.
#
# The build stage makes the same release binary `cargo build --release` makes for
# the tests, statically linked against musl so the final stage needs no libc.

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools cmake clang \
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
RUN touch src/main.rs src/lib.rs \
    && cargo build --locked --release --target x86_64-unknown-linux-musl -p teamaccess-operator \
    && cp target/x86_64-unknown-linux-musl/release/teamaccess-operator /teamaccess-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /teamaccess-operator /usr/local/bin/teamaccess-operator
# 65532 is distroless' nonroot user; the chart runs the pod as the same uid.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/teamaccess-operator"]
CMD ["run"]
