# The gateway's image: one binary holding every program (`swpt-gateway`,
# linked under each program's name), on a slim Debian, as uid:gid
# 1000:1000. `scripts/image build` builds it with podman from crates
# vendored on the host (nothing but Debian's archive is reached); a plain
# `docker build .` with network access fetches the crates instead.

# The toolchain: one version with Cargo.toml's rust-version (a test checks).
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# Symbols stripped: the image's binary is a third smaller.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols
# Build the dependencies alone first, so that this layer stays cached
# while only the sources change.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates/stomp-codec/Cargo.toml crates/stomp-codec/
COPY crates/nodedata/Cargo.toml crates/nodedata/
COPY crates/smp-json/Cargo.toml crates/smp-json/
COPY crates/amqp-bridge/Cargo.toml crates/amqp-bridge/
COPY crates/swpt-bench/Cargo.toml crates/swpt-bench/
COPY crates/testkit/Cargo.toml crates/testkit/
# Crates vendored by `scripts/image` (empty otherwise): built offline.
COPY docker/vendor/ docker/vendor/
RUN if [ -d docker/vendor/crates ]; then \
        mkdir -p .cargo \
        && printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "docker/vendor/crates"\n[net]\noffline = true\n' \
           > .cargo/config.toml; \
    fi \
    && for c in stomp-codec nodedata smp-json amqp-bridge swpt-bench testkit; do \
        mkdir -p "crates/$c/src" "crates/$c/benches" && echo '' > "crates/$c/src/lib.rs"; \
    done \
    && echo 'fn main() {}' > crates/stomp-codec/benches/decode.rs \
    && echo 'fn main() {}' > crates/smp-json/benches/process.rs \
    && echo 'fn main() {}' > crates/swpt-bench/src/main.rs \
    && mkdir -p src/bin crates/testkit/src/bin \
    && echo '' > src/lib.rs \
    && for b in swpt-gateway swpt-server swpt-client swpt-drainer configure-queue swpt-doctor swpt-broker-check swpt-probe; do \
        echo 'fn main() {}' > "src/bin/$b.rs"; \
    done \
    && echo 'fn main() {}' > crates/testkit/src/bin/swpt-nodedata.rs \
    && cargo build --release --locked -p swpt-gateway --bin swpt-gateway \
    && rm -rf src crates/*/src crates/*/benches
COPY . .
# The revision `--version` shows (no .git in the build context).
ARG GIT_REVISION=unknown
RUN find src crates -name '*.rs' -exec touch {} + \
    && SWPT_GIT_REVISION="$GIT_REVISION" cargo build --release --locked -p swpt-gateway --bin swpt-gateway

FROM debian:bookworm-slim
ARG GIT_REVISION=unknown
ARG VERSION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="swpt-gateway" \
      org.opencontainers.image.description="Swaptacular STOMP peer gateway" \
      org.opencontainers.image.revision="$GIT_REVISION" \
      org.opencontainers.image.version="$VERSION" \
      org.opencontainers.image.source="$SOURCE"
RUN groupadd --gid 1000 swpt \
    && useradd --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin swpt
# The programs read only the root bundle: the file, without the
# ca-certificates package's openssl (9 MB).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/swpt-gateway /usr/local/bin/swpt-gateway
RUN for p in swpt-server swpt-client swpt-drainer configure-queue swpt-doctor swpt-broker-check swpt-probe; do \
        ln -s swpt-gateway "/usr/local/bin/$p"; \
    done
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
# Probes and metrics on 8080, and the health check asks them.
ENV APP_HTTP_PORT=8080
USER 1000:1000
# 1234: STOMP (swpt-server); 8080: /healthz, /readyz, /metrics.
EXPOSE 1234 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 CMD ["swpt-probe", "/readyz"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["swpt-server"]
