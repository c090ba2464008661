# syntax=docker/dockerfile:1
# The gateway's image: the four binaries (plus the network generator and
# the broker check) on a slim Debian, running as a non-root user.

FROM rust:1.88-slim-bookworm AS build
WORKDIR /src
# Build the dependencies alone first, so that this layer stays cached
# while only the sources change.
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates/stomp-codec/Cargo.toml crates/stomp-codec/
COPY crates/nodedata/Cargo.toml crates/nodedata/
COPY crates/smp-json/Cargo.toml crates/smp-json/
COPY crates/amqp-bridge/Cargo.toml crates/amqp-bridge/
COPY crates/swpt-bench/Cargo.toml crates/swpt-bench/
COPY crates/testkit/Cargo.toml crates/testkit/
RUN for c in stomp-codec nodedata smp-json amqp-bridge swpt-bench testkit; do \
        mkdir -p "crates/$c/src" "crates/$c/benches" && echo '' > "crates/$c/src/lib.rs"; \
    done \
    && echo 'fn main() {}' > crates/stomp-codec/benches/decode.rs \
    && echo 'fn main() {}' > crates/smp-json/benches/process.rs \
    && echo 'fn main() {}' > crates/swpt-bench/src/main.rs \
    && mkdir -p src/bin crates/testkit/src/bin \
    && echo '' > src/lib.rs \
    && for b in swpt-server swpt-client swpt-drainer configure-queue swpt-broker-check swpt-doctor; do echo 'fn main() {}' > "src/bin/$b.rs"; done \
    && echo 'fn main() {}' > crates/testkit/src/bin/swpt-nodedata.rs \
    && cargo build --release --locked --workspace --exclude swpt-bench \
    && rm -rf src crates/*/src crates/*/benches
COPY . .
RUN find src crates -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --workspace --exclude swpt-bench --bins

FROM debian:bookworm-slim AS app-image
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends iproute2 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --home-dir /nonexistent --shell /usr/sbin/nologin swpt
COPY --from=build /src/target/release/swpt-server /src/target/release/swpt-client \
     /src/target/release/swpt-drainer /src/target/release/configure-queue \
     /src/target/release/swpt-nodedata /src/target/release/swpt-broker-check \
     /src/target/release/swpt-doctor /usr/local/bin/
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
USER 1000
# 1234: STOMP; 8080: probes and metrics when APP_HTTP_PORT=8080.
EXPOSE 1234 8080
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["swpt-server"]
