#!/usr/bin/env bash
# The headless browser the operator page's test drives: Debian's Chromium (Playwright cannot download its own
# here). Only `./run.local.sh test` needs it; running the service does not.
#
# Usage: scripts/browser.sh install
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

case "${1:-install}" in
    install)
        if [ -x /usr/bin/chromium ]; then
            exit 0
        fi
        apt_install chromium
        ;;
    *)
        echo "usage: scripts/browser.sh install" >&2
        exit 2
        ;;
esac
