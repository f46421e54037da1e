#!/usr/bin/env bash
# promtool, Prometheus' own checker of rule files, for the test of docs/monitoring/alerts.yml: taken out of
# Debian's `prometheus` package (apt-get download) without installing the package, which would also set up
# and start a Prometheus server. Only `./run.local.sh test` needs it; running the service does not.
#
# Usage: scripts/promtool.sh install     (then: .local/promtool/usr/bin/promtool, or promtool on PATH)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PROMTOOL_DIR="$LOCAL_DIR/promtool"

case "${1:-install}" in
    install)
        if command -v promtool >/dev/null || [ -x "$PROMTOOL_DIR/usr/bin/promtool" ]; then
            exit 0
        fi
        is_root || die "missing: promtool; install Debian's 'prometheus' package (or run this script as root)"
        say "fetching promtool (Debian's prometheus package, unpacked into .local/promtool; no server installed)"
        download=$(mktemp -d)
        trap 'rm -rf "$download"' EXIT
        export DEBIAN_FRONTEND=noninteractive
        quietly "$LOCAL_DIR/logs/apt-get-update.log" apt-get update -qq || die "apt-get update failed (above)"
        (cd "$download" && quietly "$LOCAL_DIR/logs/promtool-download.log" apt-get download prometheus) ||
            die "apt-get could not download the prometheus package (above)"
        mkdir -p "$PROMTOOL_DIR"
        dpkg-deb --fsys-tarfile "$download"/prometheus_*.deb | tar -x -C "$PROMTOOL_DIR" ./usr/bin/promtool
        "$PROMTOOL_DIR/usr/bin/promtool" --version >/dev/null || die "the promtool unpacked does not run"
        ;;
    *)
        echo "usage: scripts/promtool.sh install" >&2
        exit 2
        ;;
esac
