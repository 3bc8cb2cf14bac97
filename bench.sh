#!/usr/bin/env bash
# Runs one benchmark: ./bench.sh NAME. Figures are recorded in BENCHMARKS.md.
set -euo pipefail

cd "$(dirname "$0")"

BENCHMARKS="replication"

usage() {
    cat >&2 <<USAGE
usage: ./bench.sh NAME

Benchmarks:
  replication   our replication stream vs pg_recvlogical on the same WAL
                (200,000 rows in 2,000 transactions); ends with a RESULT line
USAGE
}

if [ "$#" -ne 1 ]; then
    usage
    exit 2
fi

case "$1" in
    replication)
        . scripts/ensure-postgres.sh
        # Release profile; cargo's own chatter is kept quiet, the bench prints to stdout.
        exec cargo bench --quiet --bench replication
        ;;
    -h|--help|help)
        usage
        exit 0
        ;;
    *)
        echo "unknown benchmark: $1 (available: $BENCHMARKS)" >&2
        usage
        exit 2
        ;;
esac
