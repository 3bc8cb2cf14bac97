#!/usr/bin/env bash
# Runs the whole test suite: unit, property and integration tests on private PostgreSQL
# clusters (started per test from the system binaries; installed if missing).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/ensure-postgres.sh
cargo test --workspace --locked "$@"
