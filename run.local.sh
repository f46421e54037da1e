#!/usr/bin/env bash
# Runs batch-user-processing on this machine against a real Apache Kafka and a real PostgreSQL, no Docker.
#
#   ./run.local.sh                           set up, start the services, migrate, then run the Procfile's web
#                                            and worker in the foreground (Ctrl-C stops them; the services
#                                            stay up for the next run: `./run.local.sh services down`)
#   ./run.local.sh test [pytest args...]     the same set-up, then pytest against the services; exits as pytest
#                                            (in TEST_WORKERS processes, default 2, with pytest-xdist,
#                                            grouped by tests/conftest.py; `-n 0` runs one process)
#   ./run.local.sh services up|down|status   Kafka and PostgreSQL only; `up` also writes .local/env
#
# LOCAL_KAFKA_NODES=3 ./run.local.sh ... runs a Kafka cluster of three nodes instead of one (topics then get
# three replicas); the application needs nothing else.
#
# LOCAL_KAFKA_SECURITY=managed ./run.local.sh runs Kafka secured as Heroku Kafka's multi-tenant plans are (TLS
# with client certificates, ACLs, a prefix, no right to create topics; see scripts/kafka.sh), and the web and
# worker get nothing but Heroku's variables (KAFKA_URL, KAFKA_TRUSTED_CERT, KAFKA_CLIENT_CERT,
# KAFKA_CLIENT_CERT_KEY, KAFKA_PREFIX), which .local/env then carries too.
#
# Every step is a small script of its own under scripts/ (venv.sh, kafka.sh, postgres.sh) that can be run
# alone; their variables (ports, ...) are listed at the top of scripts/lib.sh. All state lives in .local/:
# `./run.local.sh services down && rm -rf .local` starts afresh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
. scripts/lib.sh

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }

# Starts whatever of Kafka and PostgreSQL is not already running (or given), waits until both answer, and
# writes their addresses to .local/env.
services_up() {
    # Installs run one after the other (two apt-get at once would fight over dpkg's lock); the starts overlap.
    kafka_is_external || scripts/kafka.sh install
    pg_is_external || scripts/postgres.sh install
    local kafka_job failed=0
    scripts/kafka.sh up &
    kafka_job=$!
    scripts/postgres.sh up || failed=1
    wait "$kafka_job" || failed=1
    [ "$failed" = 0 ] || die "the services did not start (messages above)"
}

# The replication factor for the topics on our own Kafka cluster (one replica per node, up to three), or
# nothing for a single node (the application's default, 1) or an external Kafka.
local_replication_factor() {
    if ! kafka_is_external && [ "$LOCAL_KAFKA_NODES" -gt 1 ]; then
        echo $((LOCAL_KAFKA_NODES < 3 ? LOCAL_KAFKA_NODES : 3))
    fi
}

# True when this checkout runs its own Kafka in LOCAL_KAFKA_SECURITY=managed mode.
kafka_is_managed() { [ "$LOCAL_KAFKA_SECURITY" = managed ] && ! kafka_is_external; }

write_env() {
    mkdir -p "$LOCAL_DIR"
    {
        echo "# Written by ./run.local.sh services up: the addresses of the services this checkout uses."
        if kafka_is_managed; then
            echo "# LOCAL_KAFKA_SECURITY=managed: Heroku Kafka's variables for the local TLS listener (those of the"
            echo "# SASL_SSL listener are in $LOCAL_KAFKA_SASL_ENV; the operator's listener is $LOCAL_KAFKA_BOOTSTRAP_SERVERS)."
            grep -v '^#' "$LOCAL_KAFKA_HEROKU_ENV"
            printf 'export LOCAL_KAFKA_SECURITY=managed LOCAL_KAFKA_PORT=%q LOCAL_KAFKA_DIR=%q\n' \
                "$LOCAL_KAFKA_PORT" "$LOCAL_KAFKA_DIR"
        else
            printf 'export KAFKA_BOOTSTRAP_SERVERS=%q\n' "${KAFKA_BOOTSTRAP_SERVERS:-$LOCAL_KAFKA_BOOTSTRAP_SERVERS}"
        fi
        printf 'export DATABASE_URL=%q\n' "${DATABASE_URL:-$LOCAL_DATABASE_URL}"
        if [ -n "$(local_replication_factor)" ]; then
            # (with these, scripts/kafka.sh and ./run.local.sh know the cluster for theirs)
            printf 'export LOCAL_KAFKA_NODES=%q LOCAL_KAFKA_PORT=%q LOCAL_KAFKA_DIR=%q\n' \
                "$LOCAL_KAFKA_NODES" "$LOCAL_KAFKA_PORT" "$LOCAL_KAFKA_DIR"
            printf 'export KAFKA_REPLICATION_FACTOR=%q\n' "$(local_replication_factor)"
        fi
    } >"$LOCAL_DIR/env.tmp"
    mv "$LOCAL_DIR/env.tmp" "$LOCAL_DIR/env"
    say "wrote .local/env (source it to reach the services)"
}

services_down() {
    local failed=0 lane
    scripts/kafka.sh down || failed=1
    scripts/postgres.sh down || failed=1
    # The fault tests' lanes stop their services at the end of a run; a run cut short leaves them up.
    for lane in "$LOCAL_DIR"/lanes/*/; do
        [ -d "$lane" ] || continue
        LOCAL_KAFKA_DIR=${lane}kafka scripts/kafka.sh down >/dev/null 2>&1 || true
        LOCAL_PG_DIR=${lane}pg scripts/postgres.sh down >/dev/null 2>&1 || true
    done
    return "$failed"
}

services_status() {
    local failed=0
    scripts/kafka.sh status || failed=1
    scripts/postgres.sh status || failed=1
    return "$failed"
}

migrate() {
    if [ -f pipeline/__main__.py ]; then
        say "applying migrations (python -m pipeline migrate; output in .local/logs/migrate.log)"
        quietly "$LOCAL_DIR/logs/migrate.log" "$PY" -m pipeline migrate || die "the migrations failed (above)"
    else
        say "no migrations to apply yet: pipeline/__main__.py (python -m pipeline migrate) does not exist"
    fi
}

# Everything `./run.local.sh` and `./run.local.sh test` need before they start their own processes.
prepare() {
    scripts/venv.sh
    services_up
    # .local/env describes this checkout's own services: a run against external ones leaves it alone.
    if ! kafka_is_external && ! pg_is_external; then
        write_env
    fi
    export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-$LOCAL_KAFKA_BOOTSTRAP_SERVERS}"
    export DATABASE_URL="${DATABASE_URL:-$LOCAL_DATABASE_URL}"
    if [ -n "$(local_replication_factor)" ]; then
        export KAFKA_REPLICATION_FACTOR="${KAFKA_REPLICATION_FACTOR:-$(local_replication_factor)}"
    fi
    export PYTHONUNBUFFERED=1
    migrate
}

case "${1:-}" in
    "")
        prepare
        if kafka_is_managed; then
            # The app as a platform runs it: Heroku's variables only, and no plaintext address to fall back on.
            unset KAFKA_BOOTSTRAP_SERVERS
            . "$LOCAL_KAFKA_HEROKU_ENV"
            say "LOCAL_KAFKA_SECURITY=managed: web and worker get Heroku's variables only (KAFKA_URL=$KAFKA_URL, KAFKA_PREFIX=$KAFKA_PREFIX)"
        fi
        export PATH="$VENV/bin:$PATH" PORT="${PORT:-8000}"
        say "starting web (http://127.0.0.1:$PORT) and worker; Ctrl-C stops them"
        exec "$VENV/bin/honcho" start -f Procfile web worker
        ;;
    test)
        shift
        scripts/browser.sh install
        scripts/promtool.sh install
        prepare
        # Much of the suite's time is spent waiting (on Kafka's fencing and restarts, outages, paced loads),
        # so it runs in more processes than cores, the fault tests first; each process breaks services of
        # its own (tests/faults/conftest.py, tests/managed/conftest.py start them).
        exec "$PY" -m pytest -n "${TEST_WORKERS:-2}" --dist loadscope --no-loadscope-reorder "$@"
        ;;
    services)
        case "${2:-}" in
            up) scripts/venv.sh && services_up && write_env ;;
            down) services_down ;;
            status) services_status ;;
            *) usage; exit 2 ;;
        esac
        ;;
    -h | --help | help) usage ;;
    *) usage; exit 2 ;;
esac
