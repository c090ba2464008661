#!/bin/sh
# The container's entrypoint (POSIX sh).
#
#   swpt-server | swpt-client | swpt-drainer | configure-queue  run that binary
#   test CMD...   wait for RabbitMQ (exponential back-off), then run CMD
#   anything else is run as given
#
# For development, every variable named in SUBSTITUTE_LOCALHOST_IN_VARS has
# "localhost" (as a URL's host) replaced by the Docker host's address, so
# a container can reach services on the host. DOCKER_HOST_IP overrides the
# address found from the default route.
set -eu

host_ip="${DOCKER_HOST_IP:-}"
if [ -z "$host_ip" ] && command -v ip >/dev/null 2>&1; then
    host_ip=$(ip route show 2>/dev/null | awk '/default/ {print $3; exit}')
fi
if [ -n "$host_ip" ]; then
    for name in ${SUBSTITUTE_LOCALHOST_IN_VARS:-}; do
        case "$name" in
            *[!A-Za-z0-9_]*|[0-9]*|'') echo "entrypoint.sh: invalid variable name '$name'" >&2; exit 2 ;;
        esac
        eval "value=\${$name:-}"
        if [ -n "$value" ]; then
            value=$(printf '%s' "$value" | sed -E "s#(.*@|.*//)localhost([:/]|\$)#\\1${host_ip}\\2#")
            export "$name=$value"
        fi
    done
fi

wait_for_rabbitmq() {
    retry_after=1
    while [ "$retry_after" -le 32 ]; do
        if swpt-broker-check "$1" 2>/dev/null; then
            echo 'RabbitMQ is up.'
            return 0
        fi
        echo "Waiting for RabbitMQ: retrying in ${retry_after}s ..."
        sleep "$retry_after"
        retry_after=$((retry_after * 2))
    done
    swpt-broker-check "$1"
}

case "${1:-swpt-server}" in
    test)
        shift
        wait_for_rabbitmq "${PROTOCOL_BROKER_URL:-amqp://guest:guest@localhost:5672}"
        exec "$@"
        ;;
    swpt-server|swpt-client|swpt-drainer|configure-queue)
        exec "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
