# shellcheck shell=bash disable=SC2034  # (the variables are used by the scripts that source this file)
# Shared by run.local.sh and scripts/*.sh (sourced, never run): paths, ports and a few small helpers.
#
# Script variables (environment, all optional):
#   LOCAL_KAFKA_NODES            Kafka nodes to run, each a broker and a KRaft controller (default 1); 3 make a
#                                cluster that keeps working when one node is lost
#   LOCAL_KAFKA_PORT             the first node's client port on 127.0.0.1 (default 19092); node i listens on
#                                LOCAL_KAFKA_PORT + 2(i-1), and its controller on the port after that
#   LOCAL_KAFKA_DIR              where the nodes keep their data, logs and pid files (default .local/kafka)
#   LOCAL_KAFKA_HEAP             each Kafka node's JVM heap, as -Xmx takes it (default 512m)
#   LOCAL_KAFKA_STOP_TIMEOUT     seconds `down` waits for Kafka's controlled shutdown before a SIGKILL (60)
#   LOCAL_KAFKA_SECURITY         plaintext (default) or managed: one node secured as managed services run it,
#                                a TLS listener with client certificates (Heroku) on LOCAL_KAFKA_PORT + 2 and
#                                SASL_SSL/SCRAM-SHA-512 on LOCAL_KAFKA_PORT + 3, ACLs for a tenant without the
#                                right to create topics; LOCAL_KAFKA_PORT stays the operator's plaintext listener
#   LOCAL_KAFKA_PREFIX           the managed tenant's prefix of topics and groups (default tenant-1234.)
#   LOCAL_PG_PORT                PostgreSQL's port on 127.0.0.1 (default 55432)
#   LOCAL_PG_DIR                 where its cluster lives (default .local/pg): a second cluster needs its own
#   LOCAL_PG_USER                system user that runs PostgreSQL when we are root (default postgres)
#   LOCAL_START_TIMEOUT          seconds to wait for a service to accept connections (default 120)
#   PYTHON                       interpreter that creates .venv (default: the first python3.X >= 3.11 found)
#   JAVA_HOME                    the Java 17+ to run Kafka with (default: `java` on PATH)
#   KAFKA_BOOTSTRAP_SERVERS      use this Kafka and start none (unless it is the local address above)
#   DATABASE_URL                 use this PostgreSQL and start none (unless it is the local address above)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCAL_DIR=$ROOT/.local
VENV=$ROOT/.venv
PY=$VENV/bin/python

LOCAL_KAFKA_NODES=${LOCAL_KAFKA_NODES:-1}
LOCAL_KAFKA_PORT=${LOCAL_KAFKA_PORT:-19092}
LOCAL_KAFKA_DIR=${LOCAL_KAFKA_DIR:-$LOCAL_DIR/kafka}
LOCAL_KAFKA_HEAP=${LOCAL_KAFKA_HEAP:-512m}
LOCAL_KAFKA_SECURITY=${LOCAL_KAFKA_SECURITY:-plaintext}
LOCAL_KAFKA_PREFIX=${LOCAL_KAFKA_PREFIX:-tenant-1234.}
LOCAL_PG_PORT=${LOCAL_PG_PORT:-55432}
LOCAL_PG_DIR=${LOCAL_PG_DIR:-$LOCAL_DIR/pg}
LOCAL_PG_USER=${LOCAL_PG_USER:-postgres}
LOCAL_START_TIMEOUT=${LOCAL_START_TIMEOUT:-120}

say() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }
die() { say "error: $*"; exit 1; }

case $LOCAL_KAFKA_NODES in
    [1-9]) ;;
    *) die "LOCAL_KAFKA_NODES must be a number from 1 to 9, not '$LOCAL_KAFKA_NODES'" ;;
esac
case $LOCAL_KAFKA_SECURITY in
    plaintext) ;;
    managed) [ "$LOCAL_KAFKA_NODES" = 1 ] || die "LOCAL_KAFKA_SECURITY=managed runs one node, not LOCAL_KAFKA_NODES=$LOCAL_KAFKA_NODES" ;;
    *) die "LOCAL_KAFKA_SECURITY must be plaintext or managed, not '$LOCAL_KAFKA_SECURITY'" ;;
esac
# Node $1's client port (its controller listens on the next port).
kafka_node_port() { echo $((LOCAL_KAFKA_PORT + 2 * ($1 - 1))); }

# The addresses of the services this checkout runs itself.
LOCAL_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$LOCAL_KAFKA_PORT
for ((_node = 2; _node <= LOCAL_KAFKA_NODES; _node++)); do
    LOCAL_KAFKA_BOOTSTRAP_SERVERS+=,127.0.0.1:$(kafka_node_port "$_node")
done
unset _node
LOCAL_DATABASE_URL=postgresql://bup@127.0.0.1:$LOCAL_PG_PORT/bup
# LOCAL_KAFKA_SECURITY=managed: the secured listeners, and the app's variables for each (scripts/kafka_tenant.py).
LOCAL_KAFKA_SSL_PORT=$((LOCAL_KAFKA_PORT + 2))
LOCAL_KAFKA_SASL_PORT=$((LOCAL_KAFKA_PORT + 3))
LOCAL_KAFKA_HEROKU_ENV=$LOCAL_KAFKA_DIR/heroku.env
LOCAL_KAFKA_SASL_ENV=$LOCAL_KAFKA_DIR/sasl.env

is_root() { [ "$(id -u)" = 0 ]; }

# Kafka or PostgreSQL is "external" when the environment names one that is not ours; a value equal to our
# own address (for instance after `source .local/env`) still means the local service, which we manage.
kafka_is_external() { [ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && [ "$KAFKA_BOOTSTRAP_SERVERS" != "$LOCAL_KAFKA_BOOTSTRAP_SERVERS" ]; }
pg_is_external() { [ -n "${DATABASE_URL:-}" ] && [ "$DATABASE_URL" != "$LOCAL_DATABASE_URL" ]; }

# Installs Debian packages when we may (root), else says what is missing and stops.
apt_install() {
    is_root || die "missing: $*; install the Debian packages '$*' (or run this script as root, which does it)"
    command -v apt-get >/dev/null || die "missing: $*, and this is not a Debian-like system (no apt-get)"
    say "installing Debian packages: $*"
    export DEBIAN_FRONTEND=noninteractive
    quietly "$LOCAL_DIR/logs/apt-get-update.log" apt-get update -qq || die "apt-get update failed (above)"
    quietly "$LOCAL_DIR/logs/apt-get-install.log" apt-get install -y -qq --no-install-recommends "$@" ||
        die "apt-get could not install $* (above)"
}

# Runs "$@" with its output kept in the file $1 instead of the terminal (one line per set-up step); when
# it fails, shows the last lines of that output and returns its exit code.
quietly() {
    local log=$1 status=0
    shift
    mkdir -p "$(dirname "$log")"
    "$@" >"$log" 2>&1 || status=$?
    if [ "$status" != 0 ]; then
        tail -n 40 "$log" >&2
        say "'$*' failed (exit $status); its whole output is in $log"
    fi
    return "$status"
}

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp, no tool needed).
port_answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True when process $1 is alive (not a zombie) and its command line contains $2.
process_is() {
    local pid=$1 needle=$2 cmdline
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$needle"* ]]
}

# Serialises set-up and start/stop of one service between concurrent invocations (lock file $1, fd 9).
# Daemons started while holding it must be given `9>&-`, or they would hold the lock forever.
take_lock() {
    command -v flock >/dev/null || return 0
    mkdir -p "$(dirname "$1")"
    exec 9>"$1"
    flock -w 600 9 || die "could not take the lock $1 within 10 minutes"
}
