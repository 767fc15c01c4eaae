#!/usr/bin/env bash
# Create .venv (Python >= 3.12) and install GRU4Rec with its test tools into it. Safe to run again:
# it reinstalls only when pyproject.toml changed. Set PYTHON=/path/to/python3.12 to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

is_ok() { "$@" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
    local cand v
    for cand in "${PYTHON:-}" python3.14 python3.13 python3.12 python3; do
        [ -n "$cand" ] && command -v "$cand" >/dev/null 2>&1 && is_ok "$cand" && { command -v "$cand"; return; }
    done
    if command -v pyenv >/dev/null 2>&1; then   # pyenv-installed versions that are not the active one
        for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])(\.[0-9]+)?$' | sort -rV); do
            cand=$(PYENV_VERSION=$v pyenv which python 2>/dev/null) && is_ok "$cand" && { echo "$cand"; return; }
        done
    fi
    return 1
}

if [ ! -x .venv/bin/python ] || ! is_ok .venv/bin/python; then
    if ! PY=$(find_python); then
        echo "ERROR. GRU4Rec needs Python >= 3.12 and none was found (tried \$PYTHON, python3.14..python3.12, python3, pyenv)." >&2
        echo "Install one (e.g. 'pyenv install 3.12', 'apt install python3.12' or python.org), or point PYTHON at it." >&2
        exit 1
    fi
    echo "Creating .venv with $PY ($("$PY" --version))"
    rm -rf .venv
    "$PY" -m venv .venv
fi

stamp=.venv/.gru4rec-installed
want=$(cat pyproject.toml | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing GRU4Rec and its dependencies into .venv"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[test]"
    echo "$want" > "$stamp"
fi
