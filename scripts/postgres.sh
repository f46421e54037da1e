#!/usr/bin/env bash
# A real PostgreSQL server for this checkout: Debian's server binaries, a cluster in .local/pg/data on
# 127.0.0.1 (TCP only, trust authentication, superuser and database `bup`), log in .local/pg/log/.
#
# Usage: scripts/postgres.sh install|up|down|status
#   install  the server binaries (apt-get install postgresql when root) and the system user that runs them
#   up       install, create the cluster and the database once, start the server and wait until it answers
#   down     pg_ctl stop -m fast (clean: nothing acknowledged is lost)
#   status   say whether it runs: postmaster alive and port answering; exit 0 only then
# initdb refuses to run as root, so as root the cluster belongs to LOCAL_PG_USER (default: postgres).
# With DATABASE_URL naming another server, nothing is started or stopped (see scripts/lib.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The cluster lives in .local/pg, or, when we are root and a parent folder of the checkout is closed to
# LOCAL_PG_USER (a checkout under /root, say), in a folder under /var/lib that .local/pg links to; the server
# is always given the real path, which it can reach.
set_paths() {
    PG_DIR=$(readlink -f "$LOCAL_PG_DIR" 2>/dev/null || echo "$LOCAL_PG_DIR")
    PGDATA=$PG_DIR/data
    PGLOG=$PG_DIR/log/postgresql.log
}
set_paths
LOCK=$LOCAL_PG_DIR.lock

# The directory holding `postgres`, `initdb` and `pg_ctl`: Debian keeps the server outside PATH, in
# /usr/lib/postgresql/<major>/bin (`pg_config --bindir` may name the client's). An existing cluster needs
# its own major version; otherwise the newest one wins.
find_bindir() {
    local wanted="" dir
    [ -f "$PGDATA/PG_VERSION" ] && wanted=$(cat "$PGDATA/PG_VERSION")
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -rV) \
        "$(pg_config --bindir 2>/dev/null || true)" /usr/local/pgsql/bin \
        "$(dirname "$(readlink -f "$(command -v postgres || echo /nonexistent)")")"; do
        if [ ! -x "$dir/postgres" ] || [ ! -x "$dir/initdb" ] || [ ! -x "$dir/pg_ctl" ]; then
            continue
        fi
        # An existing cluster can only be run by the server of its own major version.
        if [ -n "$wanted" ] && [[ $("$dir/postgres" --version) != *" $wanted."* ]]; then
            continue
        fi
        echo "$dir"
        return 0
    done
    return 1
}

ensure_binaries() {
    BIN=$(find_bindir) && return 0
    if [ -f "$PGDATA/PG_VERSION" ]; then
        die "the cluster in .local/pg/data is PostgreSQL $(cat "$PGDATA/PG_VERSION") and its server binaries are missing; install them or remove .local/pg"
    fi
    apt_install postgresql
    BIN=$(find_bindir) || die "PostgreSQL's server binaries (postgres, initdb, pg_ctl) are not found"
}

ensure_user() {
    is_root || return 0
    id -u "$LOCAL_PG_USER" >/dev/null 2>&1 && return 0
    say "creating the system user $LOCAL_PG_USER to run PostgreSQL (initdb refuses root)"
    useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$LOCAL_PG_USER"
}

cmd_install() {
    ensure_binaries
    ensure_user
}

# Runs a server command as the cluster's owner: ourselves, or LOCAL_PG_USER when we are root.
as_owner() {
    if is_root; then
        # From /, as the working folder (the checkout's) may be closed to that user; every path is absolute.
        (cd / && runuser -u "$LOCAL_PG_USER" -- "$@")
    else
        "$@"
    fi
}

# The postmaster's pid when it runs from our data directory, or nothing. A postmaster.pid whose process is
# gone (kill -9, reboot) or whose pid now belongs to another program is removed, so it cannot block a start.
running_pid() {
    local pid
    pid=$(head -n 1 "$PGDATA/postmaster.pid" 2>/dev/null) || return 0
    if process_is "$pid" "postgres -D $PGDATA"; then
        echo "$pid"
    elif [ -f "$PGDATA/postmaster.pid" ]; then
        say "removing the stale .local/pg/data/postmaster.pid (pid $pid is not our server)"
        rm -f "$PGDATA/postmaster.pid"
    fi
}

# The port a running postmaster listens on (4th line of postmaster.pid), else the configured one.
running_port() { sed -n 4p "$PGDATA/postmaster.pid" 2>/dev/null || true; }

answers() {
    local port=${1:-$LOCAL_PG_PORT}
    if [ -x "${BIN:-}/pg_isready" ]; then
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -U bup -d postgres -t "${2:-2}"
    else
        port_answers "$port"
    fi
}

init_cluster() {
    [ -f "$PGDATA/PG_VERSION" ] && return 0
    say "creating a PostgreSQL cluster in .local/pg/data"
    rm -rf "$LOCAL_PG_DIR" # (a link is removed, not its target)
    mkdir -p "$LOCAL_PG_DIR/log"
    if is_root; then
        chown -R "$LOCAL_PG_USER:" "$LOCAL_PG_DIR"
        if ! as_owner test -w "$LOCAL_PG_DIR/log"; then
            local outside
            outside=/var/lib/batch-user-processing/pg-$(printf '%s' "$LOCAL_PG_DIR" | sha256sum | cut -c1-12)
            say "user $LOCAL_PG_USER cannot reach $LOCAL_DIR (a parent folder is closed to it): the cluster goes to $outside, linked from .local/pg"
            rm -rf "$LOCAL_DIR/pg" "$outside"
            mkdir -p "$outside/log"
            chmod 755 /var/lib/batch-user-processing
            chown -R "$LOCAL_PG_USER:" "$outside"
            ln -s "$outside" "$LOCAL_PG_DIR"
        fi
    fi
    set_paths
    as_owner "$BIN/initdb" -D "$PGDATA" -U bup --auth=trust --encoding=UTF8 --no-locale >"$PG_DIR/log/initdb.log" 2>&1 ||
        { cat "$PG_DIR/log/initdb.log" >&2; die "initdb failed"; }
    # Loopback TCP only: no Unix socket, so no /var/run/postgresql and no socket-path length limit.
    cat >>"$PGDATA/postgresql.conf" <<'EOF'

# --- set by scripts/postgres.sh (the port comes from its command line: LOCAL_PG_PORT) ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
# web and worker processes each keep a pool; tests start several of them.
max_connections = 200
EOF
}

create_database() {
    local exists
    exists=$("$BIN/psql" -h 127.0.0.1 -p "$LOCAL_PG_PORT" -U bup -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'bup'")
    if [ "$exists" != 1 ]; then
        say "creating the database bup"
        "$BIN/createdb" -h 127.0.0.1 -p "$LOCAL_PG_PORT" -U bup bup
    fi
}

cmd_up() {
    if pg_is_external; then
        say "using the PostgreSQL of DATABASE_URL (it is set); starting none"
        if [ -x "$PY" ]; then
            "$PY" "$ROOT/scripts/wait_for.py" postgres "$DATABASE_URL" --timeout "$LOCAL_START_TIMEOUT" ||
                die "the PostgreSQL of DATABASE_URL does not answer"
        fi
        return 0
    fi
    cmd_install
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ] && [ "$(running_port)" != "$LOCAL_PG_PORT" ]; then
        die "our PostgreSQL runs on port $(running_port), not LOCAL_PG_PORT=$LOCAL_PG_PORT; run 'scripts/postgres.sh down' first"
    fi
    if [ -z "$pid" ]; then
        port_answers "$LOCAL_PG_PORT" &&
            die "port $LOCAL_PG_PORT is taken by a process that is not this checkout's PostgreSQL; set LOCAL_PG_PORT"
        init_cluster
        is_root && chown -R "$LOCAL_PG_USER:" "$PG_DIR"
        say "starting PostgreSQL on 127.0.0.1:$LOCAL_PG_PORT (log: .local/pg/log/postgresql.log)"
        # -w waits until the server accepts connections; 9>&- keeps our lock out of the server's hands.
        as_owner "$BIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -o "-p $LOCAL_PG_PORT" -w -t "$LOCAL_START_TIMEOUT" start \
            >/dev/null 9>&- || { tail -n 30 "$PGLOG" >&2; die "PostgreSQL did not start (log above)"; }
    fi
    local deadline=$((SECONDS + LOCAL_START_TIMEOUT))
    until answers "$LOCAL_PG_PORT" 2; do
        [ "$SECONDS" -lt "$deadline" ] || die "PostgreSQL did not answer within ${LOCAL_START_TIMEOUT}s; see $PGLOG"
        sleep 0.5
    done
    create_database
    say "PostgreSQL answers at $LOCAL_DATABASE_URL (pid $(running_pid))"
}

cmd_down() {
    if pg_is_external; then
        say "the PostgreSQL of DATABASE_URL is not ours (DATABASE_URL is set); leaving it alone"
        return 0
    fi
    local pid
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        say "PostgreSQL is not running"
        return 0
    fi
    ensure_binaries
    say "stopping PostgreSQL (pid $pid)"
    as_owner "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    say "PostgreSQL stopped"
}

cmd_status() {
    BIN=$(find_bindir) || BIN=""
    if pg_is_external; then
        if [ -x "$PY" ] && "$PY" "$ROOT/scripts/wait_for.py" postgres "$DATABASE_URL" --timeout 5; then
            echo "postgres: external, answering (DATABASE_URL)"
            return 0
        fi
        echo "postgres: external, NOT answering (DATABASE_URL)"
        return 1
    fi
    local pid port
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        port=$(running_port)
        if answers "$port" 2; then
            echo "postgres: running, pid $pid, answering at postgresql://bup@127.0.0.1:$port/bup"
            return 0
        fi
        echo "postgres: process $pid alive but NOT answering on 127.0.0.1:$port (starting, or stuck)"
        return 1
    fi
    if port_answers "$LOCAL_PG_PORT"; then
        echo "postgres: stopped (port $LOCAL_PG_PORT is used by some other process)"
    else
        echo "postgres: stopped"
    fi
    return 1
}

# One start, stop or install at a time per checkout (two `./run.local.sh test` may race to start the service).
case "${1:-}" in
    install | up | down) take_lock "$LOCK" ;;
esac
case "${1:-}" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
