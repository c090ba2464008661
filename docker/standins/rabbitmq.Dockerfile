# A stand-in for the official rabbitmq:*-management image, where Docker
# Hub cannot be reached: Debian's rabbitmq-server (with the management and
# random-exchange plugins it ships), logging to stdout.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server \
    && rm -rf /var/lib/apt/lists/*
ENV RABBITMQ_LOGS=-
EXPOSE 5672 15672
USER rabbitmq
CMD ["rabbitmq-server"]
