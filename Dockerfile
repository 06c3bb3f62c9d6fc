# syntax=docker/dockerfile:1
# keygate key store (`keygate` binary): multi-stage build.
#   docker build -t keygate:local .          (docker compose builds it for you)
# The builder's Rust version must equal rust-toolchain.toml's channel
# (tests/deploy/test_dockerfile.py checks it).

FROM rust:1.95.0-slim-bookworm AS builder
WORKDIR /src
# rust-toolchain.toml is left out on purpose: it would make rustup download the
# wasm target and lint components, which the store does not need.
COPY Cargo.toml Cargo.lock ./
COPY proto ./proto
COPY store ./store
# The filter crate is a workspace member: cargo needs its manifest and sources
# to load the workspace, even though only the store is built.
COPY src ./src
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p keygate-store \
    && install -D -m 0755 target/release/keygate /out/keygate

FROM debian:bookworm-slim
# bash stays in the image: the health check speaks HTTP over bash's /dev/tcp
# (the image has no curl or wget, and the store has no health subcommand).
RUN groupadd --system --gid 10001 keygate \
    && useradd --system --uid 10001 --gid keygate --home-dir /var/lib/keygate --no-create-home --shell /usr/sbin/nologin keygate \
    && mkdir -p /var/lib/keygate \
    && chown keygate:keygate /var/lib/keygate \
    && chmod 0700 /var/lib/keygate
COPY --from=builder /out/keygate /usr/local/bin/keygate
ENV KEYGATE_DATA_DIR=/var/lib/keygate \
    KEYGATE_BIND=0.0.0.0 \
    KEYGATE_API_PORT=8081 \
    KEYGATE_LOOKUP_PORT=8082 \
    RUST_LOG=info
USER 10001:10001
WORKDIR /var/lib/keygate
VOLUME ["/var/lib/keygate"]
EXPOSE 8081 8082
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${KEYGATE_API_PORT} && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
