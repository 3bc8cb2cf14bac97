#!/usr/bin/env bash
# Runs the server with its own private PostgreSQL (no configuration needed).
# Data lives in ./.triptrip (TRIPTRIP_DATA_DIR to change); DATABASE_URL uses another PostgreSQL.
# Extra arguments go to `triptrip-realtime serve`, e.g. ./run.sh --listen 0.0.0.0:8080
set -euo pipefail
cd "$(dirname "$0")"
. scripts/ensure-postgres.sh
cargo build --release --quiet --bin triptrip-realtime
exec ./target/release/triptrip-realtime serve "$@"
