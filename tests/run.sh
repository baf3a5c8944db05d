#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine, then test twice:
#   1. the locked versions (requirements/lock.txt, the newest pyproject.toml allows), installed
#      into this python3: ruff, mypy, pytest;
#   2. the declared floors (requirements/floors.txt, every direct dependency at the lowest
#      version pyproject.toml allows), in a fresh venv: pytest again, so the ranges stay honest.
# Arguments go to both pytest runs. RELAY_TEST_FLOORS=0 skips step 2 (CI never sets it).
# The locks are regenerated with requirements/update.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_install() {  # pip_install PYTHON ARGS...: quiet, and only what the lock names, by hash
    local python=$1
    shift
    "$python" -m pip install -q --disable-pip-version-check --root-user-action=ignore "$@"
}

# Installs exactly the lock (every package pinned, by hash), then relay itself without letting
# pip resolve anything: what is tested is what the lock says.
install_locked() {  # install_locked PYTHON LOCKFILE
    pip_install "$1" --require-hashes --no-deps -r "$2"
    pip_install "$1" --no-deps -e .
}

# pytest's exit 5 (no test collected) is a failure here.
run_pytest() {  # run_pytest PYTHON ARGS...
    local python=$1 status=0
    shift
    "$python" -m pytest "$@" || status=$?
    if [ "$status" -eq 5 ]; then
        echo "pytest collected no tests: that is a failure here" >&2
        status=1
    fi
    return "$status"
}

echo "== pip install -r requirements/lock.txt, then relay (--no-deps -e .)"
SECONDS=0
install_locked python3 requirements/lock.txt

if [ -f tests/js/package-lock.json ]; then
    echo "== npm ci (tests/js)"
    (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "(installs took ${SECONDS} s)"

echo "== ruff"
python3 -m ruff check .
python3 -m ruff format --check .
echo "== mypy"
python3 -m mypy
echo "== pytest (locked versions)"
SECONDS=0
locked=0
run_pytest python3 "$@" || locked=$?
echo "(pytest on the locked versions took ${SECONDS} s, exit ${locked})"

floors=0
if [ "${RELAY_TEST_FLOORS:-1}" != 0 ]; then
    echo "== pytest (declared floors: requirements/floors.txt in a fresh venv)"
    SECONDS=0
    venv=$(mktemp -d)
    trap 'rm -rf "$venv"' EXIT
    python3 -m venv "$venv"
    install_locked "$venv/bin/python" requirements/floors.txt
    "$venv/bin/python" -m pip check
    echo "(floors venv installed in ${SECONDS} s)"
    SECONDS=0
    run_pytest "$venv/bin/python" "$@" || floors=$?
    echo "(pytest on the floors took ${SECONDS} s, exit ${floors})"
fi

if [ "$locked" -ne 0 ] || [ "$floors" -ne 0 ]; then
    echo "FAILED: pytest on the locked versions exited ${locked}, on the floors ${floors}" >&2
    exit 1
fi
