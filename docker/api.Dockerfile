# syntax=docker/dockerfile:1
# Image of `broker-auth-api`, the HTTP API (port 8080, /healthz /readyz /metrics).
# Build from the repository root:  docker build -f docker/api.Dockerfile -t ghcr.io/cfdbroker/broker-auth-api .
#
# Stages: cargo-chef computes a recipe from the manifests only, so the dependency build below is a
# cached layer that is rebuilt only when Cargo.toml/Cargo.lock change, not on every source edit.

ARG RUST_VERSION=1.95
# Debian 12 in both the build and the runtime image: the binary links glibc and libssl3
# dynamically (rdkafka's bundled librdkafka with OpenSSL, lettre's native-tls), so the versions must match.
FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION=0.1.78
RUN cargo install cargo-chef --locked --version ${CARGO_CHEF_VERSION}
# librdkafka is compiled from source by rdkafka-sys (C toolchain + make come with the rust image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json --bin broker-auth-api

FROM chef AS builder
# sqlx's compile-time checked queries read .sqlx/ instead of a live database.
ENV SQLX_OFFLINE=true
COPY --from=planner /app/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin broker-auth-api
COPY . .
RUN cargo build --release --locked --bin broker-auth-api \
    && cp target/release/broker-auth-api /usr/local/bin/broker-auth-api

# Debian 12 slim, like the build stage: it has glibc, libgcc_s and zlib (librdkafka links libz.so.1); libssl3
# (librdkafka's and lettre's OpenSSL) and the CA certificates are added. distroless/cc-debian12 ships no zlib, so the
# binary would not start there. The user is distroless's "nonroot" (65532), which the pods' securityContext names.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 nonroot \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin nonroot
LABEL org.opencontainers.image.source="https://github.com/cfdbroker/broker-auth" \
      org.opencontainers.image.title="broker-auth-api" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /usr/local/bin/broker-auth-api /usr/local/bin/broker-auth-api
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/broker-auth-api"]
