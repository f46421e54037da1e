#!/usr/bin/env bash
# Installs and starts what bench/brokers.py compares our KafkaBroker with, idempotently:
#
#   * redis-server and rabbitmq-server from Debian's packages, started on loopback only, with their state
#     under .local/bench/ (ports: BENCH_REDIS_PORT, default 16379; BENCH_RABBITMQ_PORT, default 15673);
#   * the `bench` extra (dramatiq[redis,rabbitmq], pyinstrument, py-spy, crc32c) into .venv;
#   * dramatiq-kafka 0.1.9 into a venv of its own, .local/bench-venv-dramatiq-kafka: it pins
#     kafka-python==2.0.2, which cannot live beside our kafka-python 3 (crc32c there too, for fairness).
#
#   bench/setup.sh          install what is missing, start what is not running
#   bench/setup.sh down     stop the Redis and RabbitMQ servers started here
#
# Kafka itself is not started here: `./run.local.sh services up` does it (or give KAFKA_BOOTSTRAP_SERVERS).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROOT=$PWD
STATE=$ROOT/.local/bench
REDIS_PORT=${BENCH_REDIS_PORT:-16379}
RABBITMQ_PORT=${BENCH_RABBITMQ_PORT:-15673}
# RabbitMQ's Erlang distribution port; epmd keeps its usual 4369, bound to loopback.
RABBITMQ_DIST_PORT=${BENCH_RABBITMQ_DIST_PORT:-35673}
RABBITMQ_NODE=bench@localhost
DK_VENV=$ROOT/.local/bench-venv-dramatiq-kafka
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}

say() { printf 'bench/setup.sh: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

install_packages() {
    local missing=()
    command -v redis-server >/dev/null || missing+=(redis-server)
    [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
    [ ${#missing[@]} = 0 ] && return
    say "installing ${missing[*]} from Debian's packages"
    # Wait for dpkg's lock rather than fail when another install is under way.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
}

install_python() {
    if ! "$PYTHON" -c 'import redis, pika, pyinstrument, crc32c' 2>/dev/null || ! [ -x "$(dirname "$PYTHON")/py-spy" ]; then
        say "installing the bench extra into $(dirname "$(dirname "$PYTHON")")"
        "$PYTHON" -m pip install -q 'dramatiq[redis,rabbitmq]==2.2.1' 'pyinstrument>=4.6' 'py-spy>=0.3.14' 'crc32c>=2.4'
    fi
    if ! "$DK_VENV/bin/python" -c 'import dramatiq_kafka, crc32c' 2>/dev/null; then
        say "installing dramatiq-kafka 0.1.9 (kafka-python 2.0.2) into .local/bench-venv-dramatiq-kafka"
        "$(dirname "$(readlink -f "$PYTHON")")/python3" -m venv "$DK_VENV"
        "$DK_VENV/bin/pip" install -q dramatiq==2.2.1 kafka-python==2.0.2 dramatiq-kafka==0.1.9 'crc32c>=2.4'
    fi
}

redis_up() {
    if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$STATE/redis"
    say "starting redis-server on 127.0.0.1:$REDIS_PORT"
    # No snapshots: a save in the middle of a run would only add noise.
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes --daemonize yes \
        --dir "$STATE/redis" --pidfile "$STATE/redis/redis.pid" --logfile "$STATE/redis/redis.log" \
        --save '' --appendonly no
    for _ in $(seq 50); do
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "redis-server did not answer (see $STATE/redis/redis.log)"
}

# rabbitmq-server and its tools read these; run as root, not through Debian's su wrapper, so that the
# node's state stays under .local/bench/rabbitmq.
rabbitmq_env() {
    export HOME=$STATE/rabbitmq  # the Erlang cookie lives in $HOME
    export RABBITMQ_NODENAME=$RABBITMQ_NODE
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT=$RABBITMQ_PORT
    export RABBITMQ_DIST_PORT=$RABBITMQ_DIST_PORT
    export RABBITMQ_MNESIA_BASE=$STATE/rabbitmq/mnesia
    export RABBITMQ_LOG_BASE=$STATE/rabbitmq/log
    export RABBITMQ_PID_FILE=$STATE/rabbitmq/rabbitmq.pid
    # Erlang writes erl_crash.dump into the working directory when the node stops: keep it with the state.
    export ERL_CRASH_DUMP=$STATE/rabbitmq/erl_crash.dump
    export RABBITMQ_ENABLED_PLUGINS_FILE=$STATE/rabbitmq/enabled_plugins
    export RABBITMQ_CONFIG_FILE=$STATE/rabbitmq/rabbitmq
    export RABBITMQ_CONF_ENV_FILE=$STATE/rabbitmq/rabbitmq-env.conf
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

rabbitmq_up() {
    rabbitmq_env
    # Start epmd on loopback before any Erlang tool does (they would start it on every interface).
    pgrep -x epmd >/dev/null || epmd -address 127.0.0.1 -daemon
    if /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBITMQ_NODE" status >/dev/null 2>&1; then
        return
    fi
    mkdir -p "$STATE/rabbitmq/log" "$STATE/rabbitmq/mnesia"
    [ -f "$STATE/rabbitmq/enabled_plugins" ] || echo '[].' >"$STATE/rabbitmq/enabled_plugins"
    [ -f "$STATE/rabbitmq/rabbitmq.conf" ] || printf 'loopback_users.guest = true\n' >"$STATE/rabbitmq/rabbitmq.conf"
    : >"$STATE/rabbitmq/rabbitmq-env.conf"
    if [ ! -f "$HOME/.erlang.cookie" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$HOME/.erlang.cookie"
        chmod 400 "$HOME/.erlang.cookie"
    fi
    say "starting rabbitmq-server on 127.0.0.1:$RABBITMQ_PORT"
    setsid /usr/lib/rabbitmq/bin/rabbitmq-server >"$STATE/rabbitmq/log/stdout.log" 2>&1 </dev/null &
    # await_startup gives up at once while the node is not reachable yet: ask again for up to 2 minutes.
    for _ in $(seq 60); do
        /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBITMQ_NODE" --timeout 10 await_startup >/dev/null 2>&1 && return
        sleep 2
    done
    die "rabbitmq-server did not start (see $STATE/rabbitmq/log/)"
}

down() {
    if [ -f "$STATE/redis/redis.pid" ]; then
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    fi
    rabbitmq_env
    /usr/lib/rabbitmq/bin/rabbitmqctl -q -n "$RABBITMQ_NODE" stop >/dev/null 2>&1 || true
    say "stopped"
}

case "${1:-up}" in
    up)
        install_packages
        install_python
        redis_up
        rabbitmq_up
        say "ready: redis://127.0.0.1:$REDIS_PORT/0 amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2F"
        ;;
    down) down ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
