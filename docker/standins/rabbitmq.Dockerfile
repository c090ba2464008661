# A stand-in for the official rabbitmq:<version>-management image, where
# Docker Hub cannot be reached: Debian's rabbitmq-server (3.10, with the
# management and random exchange plugins), run in the foreground as the
# rabbitmq user, configured from /etc/rabbitmq as the official image is.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/*
ENV HOME=/var/lib/rabbitmq \
    RABBITMQ_LOGS=-
WORKDIR /var/lib/rabbitmq
# The package's postinst picks the rabbitmq user's uid; named, not numbered.
# hadolint ignore=DL3066
USER rabbitmq
EXPOSE 5672 15672
CMD ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
