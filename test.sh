#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests on private PostgreSQL
# clusters (started per test from the system binaries; installed if missing), and the Yjs
# interop tests with stock npm clients run by Node.js (installed if missing).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/ensure-postgres.sh

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js not found; installing the Debian packages nodejs and npm" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
    else
        sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
    fi || {
        echo "error: installing Node.js with apt-get failed; install nodejs and npm by hand" >&2
        exit 1
    }
fi
(cd tests/yjs && npm ci --no-audit --no-fund) || {
    echo "error: npm ci in tests/yjs failed" >&2
    exit 1
}

cargo test --workspace --locked "$@"
