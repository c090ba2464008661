# A stand-in for the official rust:<version>-slim-bookworm image, where
# Docker Hub cannot be reached: Debian's C compiler (for ring's C code and
# the linker) and the machine's own rustup toolchain, copied into the
# context by scripts/image.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY toolchain/ /usr/local/rust/
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
