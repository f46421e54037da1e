#!/usr/bin/env bash
# Runs the broker benchmark: starts Redis and RabbitMQ (bench/setup.sh), makes sure Kafka is there, then
#
#   bench/run.sh [python -m bench.brokers arguments...]     e.g. bench/run.sh --messages 5000 --repeat 3
#
# Kafka: KAFKA_BOOTSTRAP_SERVERS when it is set; else this checkout's own, which `./run.local.sh services up`
# starts (it starts only what is not running) and describes in .local/env.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bench/setup.sh
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    ./run.local.sh services up
    # shellcheck disable=SC1091
    . .local/env
fi
export KAFKA_BOOTSTRAP_SERVERS
exec .venv/bin/python -m bench.brokers "$@"
