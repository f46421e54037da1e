#!/usr/bin/env bash
# A real Apache Kafka for this checkout: the official jars from Maven Central, LOCAL_KAFKA_NODES KRaft nodes
# (1 by default; each is broker and controller) on 127.0.0.1, all state under .local/kafka/.
#
# Usage: scripts/kafka.sh install|up|down|status
#   install  Java 17+ (apt-get when root) and the jars (cached in .local/kafka/libs; fetched again only when
#            tools/kafka/pom.xml changes)
#   up       install, format the nodes' storage once, start every node that is not running and wait until
#            the cluster answers with all its brokers
#   down     SIGTERM to every node (a controlled shutdown) and wait for them to exit
#   status   say whether the nodes run: pids alive and ports answering; exit 0 only then
# Node i keeps its data, log and pid file in $LOCAL_KAFKA_DIR/node-i/ (`kill -9 $(cat .../kafka.pid)` then
# `up` is how the tests take one node of a cluster away and bring it back).
# With KAFKA_BOOTSTRAP_SERVERS naming another Kafka, nothing is started or stopped (see scripts/lib.sh).
#
# LOCAL_KAFKA_SECURITY=managed: one node secured the way managed services run it (tools/kafka/managed.properties):
# certificates made with openssl in $LOCAL_KAFKA_DIR/certs (once), a TLS listener that requires a client
# certificate (Heroku) and a SASL_SSL/SCRAM-SHA-512 one, ACLs for the tenant LOCAL_KAFKA_PREFIX without the
# right to create topics, and the tenant's topics made as an operator would (scripts/kafka_tenant.py); `up`
# then writes the app's variables to $LOCAL_KAFKA_DIR/heroku.env and sasl.env.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The jars are shared by every LOCAL_KAFKA_DIR of this checkout.
LIBS=$LOCAL_DIR/kafka/libs
KAFKA_DIR=$LOCAL_KAFKA_DIR
# The cluster's id and size, written when the nodes are formatted.
CLUSTER_FILE=$KAFKA_DIR/cluster
POM=$ROOT/tools/kafka/pom.xml
NODES=$LOCAL_KAFKA_NODES
# Seconds a controlled shutdown may take before the broker is killed.
STOP_TIMEOUT=${LOCAL_KAFKA_STOP_TIMEOUT:-60}
# One replica per node, up to three; with three, acks=all means two copies at least.
REPLICATION_FACTOR=$((NODES < 3 ? NODES : 3))
MIN_ISR=$((REPLICATION_FACTOR >= 3 ? 2 : 1))
CERT_DIR=$KAFKA_DIR/certs

node_dir() { echo "$KAFKA_DIR/node-$1"; }
node_conf() { echo "$(node_dir "$1")/server.properties"; }
node_pidfile() { echo "$(node_dir "$1")/kafka.pid"; }
node_address() { echo "127.0.0.1:$(kafka_node_port "$1")"; }

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
    mkdir -p "$(dirname "$LIBS")"
    mvn -B -q -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS.tmp" \
        >"$LIBS.mvn.log" 2>&1 || { cat "$LIBS.mvn.log" >&2; die "Maven could not fetch the Kafka jars"; }
    # Replace the whole folder: jars of an older version left beside the new ones would share the classpath.
    rm -rf "$LIBS"
    mv "$LIBS.tmp" "$LIBS"
    echo "$wanted" >"$LIBS/.pom.sha256"
}

voters() {
    local node list=""
    for ((node = 1; node <= NODES; node++)); do
        list+="${list:+,}$node@127.0.0.1:$(($(kafka_node_port "$node") + 1))"
    done
    echo "$list"
}

render_config() {
    local node=$1 text port
    port=$(kafka_node_port "$node")
    text=$(<"$ROOT/tools/kafka/server.properties")
    text=${text//@NODE_ID@/$node}
    text=${text//@VOTERS@/$(voters)}
    text=${text//@KAFKA_PORT@/$port}
    text=${text//@CONTROLLER_PORT@/$((port + 1))}
    text=${text//@DATA_DIR@/$(node_dir "$node")/data}
    text=${text//@REPLICATION_FACTOR@/$REPLICATION_FACTOR}
    text=${text//@MIN_ISR@/$MIN_ISR}
    if [ "$LOCAL_KAFKA_SECURITY" = managed ]; then
        local managed
        managed=$(<"$ROOT/tools/kafka/managed.properties")
        managed=${managed//@KAFKA_PORT@/$port}
        managed=${managed//@CONTROLLER_PORT@/$((port + 1))}
        managed=${managed//@SSL_PORT@/$LOCAL_KAFKA_SSL_PORT}
        managed=${managed//@SASL_PORT@/$LOCAL_KAFKA_SASL_PORT}
        managed=${managed//@CERT_DIR@/$CERT_DIR}
        text+=$'\n\n'$managed
    fi
    printf '%s\n' "$text" >"$(node_conf "$node")"
}

# LOCAL_KAFKA_SECURITY=managed: a CA, the servers' certificates (the SSL listener's names no host, as
# Heroku's; the SASL_SSL listener's names 127.0.0.1, as public services' name theirs) and the app's client
# certificate (subject CN=app, its principal User:CN=app), made once. Kafka reads PEM: each key store is an
# unencrypted PKCS#8 key followed by its certificate.
ensure_certs() {
    [ -f "$CERT_DIR/client.key" ] && return 0
    command -v openssl >/dev/null || apt_install openssl
    say "making the managed Kafka's certificates with openssl in $CERT_DIR"
    rm -rf "$CERT_DIR.tmp"
    mkdir -p "$CERT_DIR.tmp"
    (
        cd "$CERT_DIR.tmp"
        local name subject
        openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=bup-local-kafka-ca" \
            -keyout ca.key -out ca.pem 2>/dev/null
        for name in heroku sasl client; do
            case $name in
                heroku) subject=/CN=kafka-broker ;;
                sasl) subject=/CN=127.0.0.1 ;;
                client) subject=/CN=app ;;
            esac
            openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$name.key" -out "$name.csr" 2>/dev/null
            if [ "$name" = sasl ]; then
                printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$name.ext"
            else
                : >"$name.ext"
            fi
            openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
                -extfile "$name.ext" -out "$name.crt" 2>/dev/null
        done
        for name in heroku sasl; do
            { openssl pkcs8 -topk8 -nocrypt -in "$name.key"; cat "$name.crt"; } >"server-$name.pem"
        done
        chmod 600 ./*.key ./*.pem
    ) || die "openssl could not make the certificates"
    rm -rf "$CERT_DIR"
    mv "$CERT_DIR.tmp" "$CERT_DIR"
}

# LOCAL_KAFKA_SECURITY=managed: the tenant's users, ACLs and topics, and the app's variables (idempotent).
setup_tenant() {
    say "setting up tenant '$LOCAL_KAFKA_PREFIX' (ACLs without topic creation, SCRAM user, topics); app variables in $LOCAL_KAFKA_HEROKU_ENV and $LOCAL_KAFKA_SASL_ENV"
    "$PY" "$ROOT/scripts/kafka_tenant.py" "$LOCAL_KAFKA_BOOTSTRAP_SERVERS" "$CERT_DIR" "$KAFKA_DIR" \
        --prefix "$LOCAL_KAFKA_PREFIX" --ssl-port "$LOCAL_KAFKA_SSL_PORT" --sasl-port "$LOCAL_KAFKA_SASL_PORT" ||
        die "could not set up the tenant on the managed Kafka"
}

# The pid of node $1's running broker, or nothing (a stale pid file, left by kill -9 or a reboot, is removed).
running_pid() {
    local pid pidfile
    pidfile=$(node_pidfile "$1")
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    if process_is "$pid" "kafka.Kafka $(node_conf "$1")"; then
        echo "$pid"
    else
        rm -f "$pidfile"
    fi
}

# True when the Kafka at $1 answers a metadata request naming $3 brokers (default 1) within $2 seconds (a
# bare TCP check of the first address without .venv).
answers() {
    if [ -x "$PY" ]; then
        "$PY" "$ROOT/scripts/wait_for.py" kafka "$1" --timeout "${2:-2}" --brokers "${3:-1}"
    else
        local first=${1%%,*}
        port_answers "${first##*:}"
    fi
}

# True when every node answers on its own address, and the cluster names all of them as brokers (a node
# just restarted after a kill -9 is still named until its old session expires, so asking the cluster alone
# is not enough).
all_answer() {
    local node
    for ((node = 1; node <= NODES; node++)); do
        answers "$(node_address "$node")" 2 || return 1
    done
    [ "$NODES" = 1 ] || answers "$LOCAL_KAFKA_BOOTSTRAP_SERVERS" 2 "$NODES"
}

# Stops here, before any node starts, when LOCAL_KAFKA_DIR was formatted for another number of nodes (the
# voters are part of what a node remembers, so another LOCAL_KAFKA_NODES needs a fresh directory).
check_size() {
    local id nodes
    [ -f "$CLUSTER_FILE" ] || return 0
    read -r id nodes <"$CLUSTER_FILE"
    [ "$nodes" = "$NODES" ] || die "$KAFKA_DIR holds a Kafka of $nodes node(s), not LOCAL_KAFKA_NODES=$NODES: \
run 'scripts/kafka.sh down' with LOCAL_KAFKA_NODES=$nodes and remove $KAFKA_DIR/node-* (its topics go), or set \
LOCAL_KAFKA_DIR to another folder"
}

# The cluster id the nodes are formatted with: made once per LOCAL_KAFKA_DIR.
cluster_id() {
    local id nodes
    if [ -f "$CLUSTER_FILE" ]; then
        read -r id nodes <"$CLUSTER_FILE"
        echo "$id"
        return 0
    fi
    id=$("$JAVA" -cp "$LIBS/*" kafka.tools.StorageTool random-uuid)
    mkdir -p "$KAFKA_DIR"
    echo "$id $NODES" >"$CLUSTER_FILE"
    echo "$id"
}

# Formats node $1 (once) and starts it in the background; its pid goes to its pid file.
start_node() {
    local node=$1 dir port cluster
    dir=$(node_dir "$node")
    port=$(kafka_node_port "$node")
    port_answers "$port" &&
        die "port $port (node $node) is taken by a process that is not this checkout's Kafka; set LOCAL_KAFKA_PORT"
    port_answers "$((port + 1))" &&
        die "port $((port + 1)) (node $node's controller) is taken; set LOCAL_KAFKA_PORT"
    mkdir -p "$dir/data" "$dir/logs"
    render_config "$node"
    if [ ! -f "$dir/data/meta.properties" ]; then
        cluster=$(cluster_id)
        say "formatting node $node's KRaft storage in $dir/data (cluster $cluster)"
        "$JAVA" -cp "$LIBS/*" -Dlog4j2.configurationFile="$ROOT/tools/kafka/log4j2.properties" \
            -Dkafka.logs.dir="$dir/logs" kafka.tools.StorageTool format -t "$cluster" -c "$(node_conf "$node")" \
            --ignore-formatted >"$dir/logs/format.log" 2>&1 || { cat "$dir/logs/format.log" >&2; die "format failed"; }
    fi
    say "starting Kafka node $node on 127.0.0.1:$port (log: $dir/logs/server.log)"
    # setsid: its own session, so a Ctrl-C meant for `./run.local.sh` (honcho) does not reach the broker;
    # the subshell exits at once, so the broker is nobody's child and never lingers as a zombie.
    (
        cd "$dir"
        setsid "$JAVA" -Xmx"$LOCAL_KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
            -Dlog4j2.configurationFile="$ROOT/tools/kafka/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
            -cp "$LIBS/*" kafka.Kafka "$(node_conf "$node")" </dev/null >>"$dir/logs/stdout.log" 2>&1 9>&- &
        echo $! >"$(node_pidfile "$node")"
    )
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
    local node pid pids=()
    check_size
    for ((node = 1; node <= NODES; node++)); do
        pid=$(running_pid "$node")
        if [ -n "$pid" ] && ! grep -q "^listeners=PLAINTEXT://$(node_address "$node")," "$(node_conf "$node")"; then
            die "our Kafka node $node runs with other ports than LOCAL_KAFKA_PORT=$LOCAL_KAFKA_PORT gives; run 'scripts/kafka.sh down' first"
        fi
        if [ -n "$pid" ] && [ "$(grep -c '^listeners=.*SASL_SSL://' "$(node_conf "$node")")" != "$([ "$LOCAL_KAFKA_SECURITY" = managed ] && echo 1 || echo 0)" ]; then
            die "our Kafka node $node runs in another mode than LOCAL_KAFKA_SECURITY=$LOCAL_KAFKA_SECURITY; run 'scripts/kafka.sh down' first"
        fi
        if [ -z "$pid" ]; then
            cmd_install
            [ "$LOCAL_KAFKA_SECURITY" != managed ] || ensure_certs
            start_node "$node"
            pid=$(cat "$(node_pidfile "$node")")
        fi
        pids+=("$pid")
    done
    local deadline=$((SECONDS + LOCAL_START_TIMEOUT))
    until all_answer; do
        for ((node = 1; node <= NODES; node++)); do
            if ! process_is "${pids[node - 1]}" kafka.Kafka; then
                tail -n 30 "$(node_dir "$node")/logs/server.log" "$(node_dir "$node")/logs/stdout.log" >&2 2>/dev/null || true
                rm -f "$(node_pidfile "$node")"
                die "Kafka node $node exited while starting (logs above, in $(node_dir "$node")/logs/)"
            fi
        done
        [ "$SECONDS" -lt "$deadline" ] ||
            die "Kafka (pids ${pids[*]}) did not answer with $NODES broker(s) within ${LOCAL_START_TIMEOUT}s; see $KAFKA_DIR/node-*/logs/"
    done
    say "Kafka answers on $LOCAL_KAFKA_BOOTSTRAP_SERVERS (pids ${pids[*]})"
    if [ "$LOCAL_KAFKA_SECURITY" = managed ]; then
        setup_tenant
        say "managed listeners: SSL with client certificates on 127.0.0.1:$LOCAL_KAFKA_SSL_PORT, SASL_SSL (SCRAM-SHA-512) on 127.0.0.1:$LOCAL_KAFKA_SASL_PORT"
    fi
}

cmd_down() {
    if kafka_is_external; then
        say "Kafka at $KAFKA_BOOTSTRAP_SERVERS is not ours (KAFKA_BOOTSTRAP_SERVERS is set); leaving it alone"
        return 0
    fi
    local node dir pid stopping=()
    # Every node this directory holds, whatever LOCAL_KAFKA_NODES says now; all at once: one by one, the
    # last ones would wait for a controller quorum that has gone.
    for dir in "$KAFKA_DIR"/node-*/; do
        node=${dir%/}
        node=${node##*/node-}
        [[ $node =~ ^[0-9]+$ ]] || continue
        pid=$(running_pid "$node")
        [ -n "$pid" ] || continue
        say "stopping Kafka node $node (pid $pid)"
        kill -TERM "$pid"
        stopping+=("$pid")
    done
    # (a Kafka started before the nodes had folders of their own kept its pid file in $KAFKA_DIR)
    pid=$(cat "$KAFKA_DIR/kafka.pid" 2>/dev/null || true)
    if process_is "$pid" "kafka.Kafka $KAFKA_DIR/server.properties"; then
        say "stopping Kafka (pid $pid, started by an older scripts/kafka.sh; its data in $KAFKA_DIR/data is left)"
        kill -TERM "$pid"
        stopping+=("$pid")
    fi
    rm -f "$KAFKA_DIR/kafka.pid"
    if [ "${#stopping[@]}" = 0 ]; then
        say "Kafka is not running"
        return 0
    fi
    local deadline=$((SECONDS + STOP_TIMEOUT))
    for pid in "${stopping[@]}"; do
        while process_is "$pid" kafka.Kafka; do
            if [ "$SECONDS" -ge "$deadline" ]; then
                say "Kafka (pid $pid) did not stop within ${STOP_TIMEOUT}s; killing it (it recovers its logs on next start)"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    done
    rm -f "$KAFKA_DIR"/node-*/kafka.pid
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
    local node pid failed=0 label=kafka
    for ((node = 1; node <= NODES; node++)); do
        [ "$NODES" = 1 ] || label="kafka node $node"
        pid=$(running_pid "$node")
        if [ -n "$pid" ]; then
            if answers "$(node_address "$node")" 2; then
                echo "$label: running, pid $pid, answering at $(node_address "$node")"
                continue
            fi
            echo "$label: process $pid alive but NOT answering at $(node_address "$node") (starting, or stuck)"
        elif port_answers "$(kafka_node_port "$node")"; then
            echo "$label: stopped (port $(kafka_node_port "$node") is used by some other process)"
        else
            echo "$label: stopped"
        fi
        failed=1
    done
    return "$failed"
}

# One start, stop or install at a time per Kafka directory (two `./run.local.sh test` may race to start it).
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
