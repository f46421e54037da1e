#!/usr/bin/env bash
# Creates .venv and installs the project into it (editable, with the `test` extra); the install is redone
# only when pyproject.toml changed since the last one (its checksum is kept in .venv/.installed).
# Usage: scripts/venv.sh
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The first interpreter that is Python 3.11 or newer.
find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
        command -v "$candidate" >/dev/null || continue
        if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

venv_works() { [ -x "$PY" ] && "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

take_lock "$LOCAL_DIR/venv.lock"

if ! venv_works; then
    python=$(find_python) || { apt_install python3 python3-venv python3-pip; python=$(find_python) ||
        die "Python 3.11 or newer is needed (set PYTHON to its path)"; }
    say "creating .venv with $python"
    rm -rf "$VENV"
    if ! "$python" -m venv "$VENV" 2>/dev/null; then
        # Debian splits ensurepip out of python3 into python3-venv.
        rm -rf "$VENV"
        apt_install python3-venv
        "$python" -m venv "$VENV"
    fi
fi

stamp=$VENV/.installed
wanted=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "installing the project into .venv (pip install -e '.[test]')"
    quietly "$LOCAL_DIR/logs/pip-install.log" "$PY" -m pip install --disable-pip-version-check -e "${ROOT}[test]" ||
        die "pip could not install the project (above)"
    echo "$wanted" >"$stamp"
fi
