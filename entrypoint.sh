#!/bin/sh
# The container's entrypoint (POSIX sh).
#
#   swpt-server | swpt-client | swpt-drainer | configure-queue  run that binary
#   test CMD...   wait for RabbitMQ (exponential back-off), then run CMD
#                 (CMD is required)
#   anything else is run as given
#
# For development, every variable named in SUBSTITUTE_LOCALHOST_IN_VARS has
# "localhost" (as the host of each URL of a comma-separated list) replaced
# by the Docker host's address, so a container can reach services on the
# host. DOCKER_HOST_IP overrides the address found from the default route.
set -eu

# The default route's gateway, from /proc/net/route (no iproute2 needed):
# its third column, in hex, least significant byte first.
default_gateway() {
    hex=$(awk '$2 == "00000000" && $3 != "00000000" { print $3; exit }' /proc/net/route 2>/dev/null || true)
    [ ${#hex} -eq 8 ] || return 0
    printf '%d.%d.%d.%d' "0x$(echo "$hex" | cut -c7-8)" "0x$(echo "$hex" | cut -c5-6)" \
        "0x$(echo "$hex" | cut -c3-4)" "0x$(echo "$hex" | cut -c1-2)"
}

host_ip="${DOCKER_HOST_IP:-}"
if [ -z "$host_ip" ] && [ -n "${SUBSTITUTE_LOCALHOST_IN_VARS:-}" ]; then
    host_ip=$(default_gateway)
fi
if [ -n "$host_ip" ]; then
    for name in ${SUBSTITUTE_LOCALHOST_IN_VARS:-}; do
        case "$name" in
            *[!A-Za-z0-9_]*|[0-9]*|'') echo "entrypoint.sh: invalid variable name '$name'" >&2; exit 2 ;;
        esac
        eval "value=\${$name:-}"
        if [ -n "$value" ]; then
            # Every URL of a comma-separated list: "//localhost" or
            # "@localhost", followed by a port, a path, a comma or the end.
            value=$(printf '%s' "$value" | sed -E "s#([@/])localhost([:/,]|\$)#\\1${host_ip}\\2#g")
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
        if [ $# -eq 0 ]; then
            echo "entrypoint.sh: 'test' needs a command to run after RabbitMQ is up (test swpt-server ...)" >&2
            exit 2
        fi
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
