#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests on private PostgreSQL
# clusters (started per test from the system binaries; installed if missing), and the Yjs
# interop tests with stock npm clients run by Node.js (installed if missing).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/ensure-postgres.sh
. scripts/ensure-node.sh
(cd tests/yjs && npm ci --no-audit --no-fund) || {
    echo "error: npm ci in tests/yjs failed" >&2
    exit 1
}

cargo test --workspace --locked "$@"
