#!/usr/bin/env bash
# A real Apache Kafka broker for this checkout: the official jars from Maven Central, one KRaft node
# (broker + controller) on 127.0.0.1, all state under .local/kafka/.
#
# Usage: scripts/kafka.sh install|up|down|status
#   install  Java 17+ (apt-get when root) and the jars (cached in .local/kafka/libs; fetched again only when
#            tools/kafka/pom.xml changes)
#   up       install, format the storage once, start the broker and wait until it answers
#   down     SIGTERM (a controlled shutdown) and wait for the process to exit
#   status   say whether it runs: pid alive and port answering; exit 0 only then
# With KAFKA_BOOTSTRAP_SERVERS naming another Kafka, nothing is started or stopped (see scripts/lib.sh).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_DIR=$LOCAL_DIR/kafka
LIBS=$KAFKA_DIR/libs
DATA=$KAFKA_DIR/data
LOGS=$KAFKA_DIR/logs
CONF=$KAFKA_DIR/server.properties
PIDFILE=$KAFKA_DIR/kafka.pid
POM=$ROOT/tools/kafka/pom.xml
# Seconds a controlled shutdown may take before the broker is killed.
STOP_TIMEOUT=${LOCAL_KAFKA_STOP_TIMEOUT:-60}

java_major() { "$1" -version 2>&1 | awk -F'"' '/version/ { split($2, v, "."); print (v[1] == 1 ? v[2] : v[1]) + 0; exit }'; }

find_java() {
    local java
    for java in ${JAVA_HOME:+"$JAVA_HOME/bin/java"} "$(command -v java || true)"; do
        if [ -n "$java" ] && [ -x "$java" ] && [ "$(java_major "$java")" -ge 17 ] 2>/dev/null; then
            echo "$java"
            return 0
        fi
    done
    return 1
}

ensure_java() {
    JAVA=$(find_java) && return 0
    apt_install openjdk-17-jre-headless || apt_install default-jre-headless
    JAVA=$(find_java) || die "Java 17 or newer is needed (set JAVA_HOME)"
}

# The jars are copied from Maven's local repository (~/.m2, which downloads only what it lacks) into libs/;
# the checksum of the pom they came from marks them current, so a second run does not even start Maven.
ensure_jars() {
    local wanted
    wanted=$(sha256sum "$POM" | cut -d' ' -f1)
    [ "$(cat "$LIBS/.pom.sha256" 2>/dev/null)" = "$wanted" ] && return 0
    command -v mvn >/dev/null || apt_install maven
    say "fetching the Apache Kafka jars with Maven (tools/kafka/pom.xml)"
    rm -rf "$LIBS.tmp"
    mkdir -p "$KAFKA_DIR"
    mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" \
        >"$KAFKA_DIR/mvn.log" 2>&1 || { cat "$KAFKA_DIR/mvn.log" >&2; die "Maven could not fetch the Kafka jars"; }
    # Replace the whole folder: jars of an older version left beside the new ones would share the classpath.
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    echo "$wanted" >"$LIBS/.pom.sha256"
}

render_config() {
    local text
    text=$(<"$ROOT/tools/kafka/server.properties")
    text=${text//@KAFKA_PORT@/$LOCAL_KAFKA_PORT}
    text=${text//@CONTROLLER_PORT@/$LOCAL_KAFKA_CONTROLLER_PORT}
    text=${text//@DATA_DIR@/$DATA}
    printf '%s\n' "$text" >"$CONF"
}

# The pid of our running broker, or nothing (a stale pid file, left by kill -9 or a reboot, is removed).
running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 0
    if process_is "$pid" "kafka.Kafka $CONF"; then
        echo "$pid"
    else
        rm -f "$PIDFILE"
    fi
}

# True when the Kafka at $1 answers a metadata request within $2 seconds (a bare TCP check without .venv).
answers() {
    if [ -x "$PY" ]; then
        "$PY" "$ROOT/scripts/wait_for.py" kafka "$1" --timeout "${2:-2}"
    else
        port_answers "${1##*:}"
    fi
}

cmd_install() {
    ensure_java
    ensure_jars
}

cmd_up() {
    if kafka_is_external; then
        say "using the Kafka at $KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS is set); starting none"
        answers "$KAFKA_BOOTSTRAP_SERVERS" "$LOCAL_START_TIMEOUT" || die "no Kafka answers at $KAFKA_BOOTSTRAP_SERVERS"
        return 0
    fi
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ] && ! grep -q "^listeners=PLAINTEXT://127.0.0.1:$LOCAL_KAFKA_PORT," "$CONF"; then
        die "our Kafka runs with other ports than LOCAL_KAFKA_PORT=$LOCAL_KAFKA_PORT; run 'scripts/kafka.sh down' first"
    fi
    if [ -z "$pid" ]; then
        port_answers "$LOCAL_KAFKA_PORT" &&
            die "port $LOCAL_KAFKA_PORT is taken by a process that is not this checkout's Kafka; set LOCAL_KAFKA_PORT"
        port_answers "$LOCAL_KAFKA_CONTROLLER_PORT" &&
            die "port $LOCAL_KAFKA_CONTROLLER_PORT is taken; set LOCAL_KAFKA_CONTROLLER_PORT (or LOCAL_KAFKA_PORT)"
        cmd_install
        mkdir -p "$DATA" "$LOGS"
        render_config
        if [ ! -f "$DATA/meta.properties" ]; then
            local cluster_id
            cluster_id=$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)
            say "formatting the KRaft storage in .local/kafka/data (cluster $cluster_id)"
            "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$ROOT/tools/kafka/log4j2.properties" \
                -Dkafka.logs.dir="$LOGS" kafka.tools.StorageTool format -t "$cluster_id" -c "$CONF" \
                --ignore-formatted >"$LOGS/format.log" 2>&1 || { cat "$LOGS/format.log" >&2; die "format failed"; }
        fi
        say "starting Kafka on $LOCAL_KAFKA_BOOTSTRAP_SERVERS (log: .local/kafka/logs/server.log)"
        # setsid: its own session, so a Ctrl-C meant for `./run.local.sh` (honcho) does not reach the broker;
        # the subshell exits at once, so the broker is nobody's child and never lingers as a zombie.
        (
            cd "$KAFKA_DIR"
            setsid "$JAVA" -Xmx"$LOCAL_KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
                -Dlog4j2.configurationFile="$ROOT/tools/kafka/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
                -cp "$LIBS/*" kafka.Kafka "$CONF" </dev/null >>"$LOGS/stdout.log" 2>&1 9>&- &
            echo $! >"$PIDFILE"
        )
        pid=$(cat "$PIDFILE")
    fi
    local deadline=$((SECONDS + LOCAL_START_TIMEOUT))
    until answers "$LOCAL_KAFKA_BOOTSTRAP_SERVERS" 2; do
        if ! process_is "$pid" kafka.Kafka; then
            tail -n 30 "$LOGS/server.log" "$LOGS/stdout.log" >&2 2>/dev/null || true
            rm -f "$PIDFILE"
            die "Kafka exited while starting (logs above, in .local/kafka/logs/)"
        fi
        [ "$SECONDS" -lt "$deadline" ] || die "Kafka (pid $pid) did not answer within ${LOCAL_START_TIMEOUT}s; see .local/kafka/logs/"
    done
    say "Kafka answers on $LOCAL_KAFKA_BOOTSTRAP_SERVERS (pid $pid)"
}

cmd_down() {
    if kafka_is_external; then
        say "Kafka at $KAFKA_BOOTSTRAP_SERVERS is not ours (KAFKA_BOOTSTRAP_SERVERS is set); leaving it alone"
        return 0
    fi
    local pid
    pid=$(running_pid)
    if [ -z "$pid" ]; then
        say "Kafka is not running"
        return 0
    fi
    say "stopping Kafka (pid $pid)"
    kill -TERM "$pid"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while process_is "$pid" kafka.Kafka; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "Kafka did not stop within ${STOP_TIMEOUT}s; killing it (it will recover its logs on next start)"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.2
    done
    rm -f "$PIDFILE"
    say "Kafka stopped"
}

cmd_status() {
    if kafka_is_external; then
        if answers "$KAFKA_BOOTSTRAP_SERVERS" 5; then
            echo "kafka: external, answering at $KAFKA_BOOTSTRAP_SERVERS"
            return 0
        fi
        echo "kafka: external, NOT answering at $KAFKA_BOOTSTRAP_SERVERS"
        return 1
    fi
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        if answers "$LOCAL_KAFKA_BOOTSTRAP_SERVERS" 2; then
            echo "kafka: running, pid $pid, answering at $LOCAL_KAFKA_BOOTSTRAP_SERVERS"
            return 0
        fi
        echo "kafka: process $pid alive but NOT answering at $LOCAL_KAFKA_BOOTSTRAP_SERVERS (starting, or stuck)"
        return 1
    fi
    if port_answers "$LOCAL_KAFKA_PORT"; then
        echo "kafka: stopped (port $LOCAL_KAFKA_PORT is used by some other process)"
    else
        echo "kafka: stopped"
    fi
    return 1
}

# One start, stop or install at a time per checkout (two `./run.local.sh test` may race to start the service).
case "${1:-}" in
    install | up | down) take_lock "$KAFKA_DIR/.lock" ;;
esac
case "${1:-}" in
    install) cmd_install ;;
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
