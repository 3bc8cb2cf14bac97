//! `./bench.sh presence`: what presence costs PostgreSQL, and how fast a state change reaches
//! the peers, with 10,000 connected users.
//!
//! Processes besides PostgreSQL (a private cluster): this orchestrator, which reads the
//! database's statistics; the server (`triptrip-realtime serve`, the release binary, default
//! presence settings); and the load generator (this binary re-executed with `--loadgen`).
//!
//! 1. 10,000 users in 1,000 rooms of 10 (`realtime.room_members`), so each user sees 9 others.
//!    The load generator connects one WebSocket per user and sends `presence:subscribe`.
//! 2. **Idle window** (20 s): everyone connected, no changes (server pings and pongs only).
//!    What PostgreSQL does then is the baseline: node heartbeats, and the server's other
//!    background work (dispatchers, outbox relay), which is not presence.
//! 3. **Load window** (60 s): users toggle between `dnd` and `online` at 100 changes/s (each
//!    user every 100 s), 2 clients/s drop their connection and reconnect at once (within the
//!    grace: invisible), and every client sends `presence:activity` every 30 s (333 frames/s).
//! 4. PostgreSQL's side, read around each window: write transactions (transaction ids
//!    assigned, cluster-wide), all committed transactions of the database
//!    (`pg_stat_database.xact_commit`), rows written to the presence tables
//!    (`pg_stat_user_tables`) and WAL bytes; the server's side: its presence statements
//!    (`/metrics`). Presence's writes per second = the load window's write transactions per
//!    second minus the idle window's.
//! 5. Latency: from just before a client sends `presence:set` to each of its 9 peers'
//!    `presence:update` (flush interval, throttle, commit, WAL, fan-out), one clock.
//!
//! The last line is machine-readable:
//! `RESULT presence writes_per_s=… p99_ms=… p50_ms=… rows_per_s=… xacts_per_s=… changes_per_s=… received=… expected=…`.

#[path = "../common/mod.rs"]
mod common;
mod loadgen;

use std::time::{Duration, Instant};

use common::sql::connect;
use common::{
    format_cpu, http_get, knob, loadavg, metric, num, postmaster_pid, print_machine, rss_kb,
    BoxError, CpuWatch, LoadgenProc, ServerProc,
};
use pgcluster::Cluster;
use tokio_postgres::Client;

const USERS: usize = 10_000;
const ROOMS: usize = 1_000;
const IDLE_SECS: f64 = 20.0;
const LOAD_SECS: f64 = 60.0;
const CHANGES_PER_S: f64 = 100.0;
const RECONNECTS_PER_S: f64 = 2.0;
const ACTIVITY_PERIOD_S: f64 = 30.0;
/// Idle time after connecting, so the connections' first writes are done.
const SETTLE: Duration = Duration::from_secs(5);

const GOAL_WRITES_PER_S: f64 = 50.0;

fn main() {
    common::bench_main_with("presence", run, loadgen::main);
}

/// Counters read at one moment.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    /// Transaction ids handed out so far (write transactions, cluster-wide).
    xids: f64,
    /// Committed transactions of the server's database.
    xacts: f64,
    /// Rows inserted, updated or deleted in the presence tables.
    rows: f64,
    wal_bytes: f64,
    /// The server's presence statements (flushes and heartbeats) and their rows.
    statements: f64,
    server_rows: f64,
}

/// `stats` is a connection to another database, so that reading adds nothing to the server
/// database's counters; `db` reads that database's table statistics (one transaction).
async fn sample(stats: &Client, db: &Client, port: u16) -> Result<Sample, BoxError> {
    let row = stats
        .query_one(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::float8, \
                    (SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = 'postgres'), \
                    pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8",
            &[],
        )
        .await?;
    let rows: f64 = db
        .query_one(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::float8 \
             FROM pg_stat_user_tables \
             WHERE schemaname = 'realtime' AND relname LIKE 'presence%'",
            &[],
        )
        .await?
        .get(0);
    let text = http_get(port, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default();
    let count = |name: &str| metric(&text, name).unwrap_or(0.0);
    Ok(Sample {
        at: Instant::now(),
        xids: row.get(0),
        xacts: row.get(1),
        rows,
        wal_bytes: row.get(2),
        statements: count("triptrip_presence_flushes_total")
            + count("triptrip_presence_heartbeats_total"),
        server_rows: count("triptrip_presence_rows_written_total"),
    })
}

/// Per-second rates between two samples.
struct Rates {
    xids: f64,
    xacts: f64,
    rows: f64,
    wal_kb: f64,
    statements: f64,
    server_rows: f64,
}

fn rates(a: &Sample, b: &Sample) -> Rates {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    Rates {
        xids: (b.xids - a.xids) / secs,
        // The table statistics read in between is one transaction.
        xacts: (b.xacts - a.xacts - 1.0).max(0.0) / secs,
        rows: (b.rows - a.rows) / secs,
        wal_kb: (b.wal_bytes - a.wal_bytes) / 1024.0 / secs,
        statements: (b.statements - a.statements) / secs,
        server_rows: (b.server_rows - a.server_rows) / secs,
    }
}

fn describe(r: &Rates) -> String {
    format!(
        "{:.1} write transactions/s, {:.1} committed transactions/s, {:.0} presence rows/s, \
         {:.0} KiB WAL/s; the server's presence statements {:.1}/s ({:.0} rows/s)",
        r.xids, r.xacts, r.rows, r.wal_kb, r.statements, r.server_rows
    )
}

/// Lets PostgreSQL's backends report their statistics (they do at most once a second while
/// busy, within 10 s when idle) before a window's counters are read.
async fn let_stats_settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

async fn run() -> Result<(), BoxError> {
    let changes_per_s = knob("PRESENCE_CHANGES_PER_S", CHANGES_PER_S)?;
    let load_secs = knob("PRESENCE_LOAD_SECS", LOAD_SECS)?;
    println!(
        "presence bench: {USERS} users in {ROOMS} rooms of {} (each sees {} others), one WebSocket each; \
         idle {IDLE_SECS:.0} s, then {load_secs:.0} s of {changes_per_s:.0} dnd/online changes/s, \
         {RECONNECTS_PER_S:.0} reconnects/s within the grace, presence:activity every {ACTIVITY_PERIOD_S:.0} s per client",
        USERS / ROOMS,
        USERS / ROOMS - 1
    );
    print_machine();
    let cluster = tokio::task::spawn_blocking(Cluster::temporary).await??;
    let url = cluster.url("postgres");
    let server = ServerProc::start(&url).await?;
    let postmaster = postmaster_pid(cluster.pgdata()).ok_or("no postmaster.pid")?;
    let db = connect(&url).await?;
    db.batch_execute("CREATE DATABASE bench_stats").await?;
    let stats = connect(&cluster.url("bench_stats")).await?;
    db.execute(
        "INSERT INTO realtime.room_members (room, user_id) \
         SELECT 'bench-' || (i % $2), 'bench-user-' || i FROM generate_series(0, $1 - 1) i",
        &[&(USERS as i32), &(ROOMS as i32)],
    )
    .await?;
    server.print(cluster.port());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kb(server.pid());

    let mut lg = LoadgenProc::spawn_args(&loadgen::args(server.port, USERS, ROOMS))?;
    let ready = lg.expect("READY", Duration::from_secs(600)).await?;
    let watching = num(&ready, "watched") / (num(&ready, "subscribed") as usize).max(1) as f64;
    let watching = format!(", watching {watching:.1} users each");
    lg.check_ready(&ready, "subscribed", "clients subscribed", USERS, &watching)?;
    tokio::time::sleep(SETTLE).await;
    let sessions: i64 = db
        .query_one("SELECT count(*) FROM realtime.presence_sessions", &[])
        .await?
        .get(0);
    let rss_idle = rss_kb(server.pid());
    println!(
        "server RSS: {rss_before} KiB without clients, {rss_idle} KiB with {USERS} subscribed clients \
         ({:.1} KiB per client); {sessions} sessions stored",
        rss_idle.saturating_sub(rss_before) as f64 / USERS as f64
    );

    let watch = CpuWatch {
        procs: vec![
            ("server", server.pid(), false),
            ("load generator", lg.pid(), false),
            ("PostgreSQL", postmaster, true),
        ],
    };
    println!("load average before the idle window: {}", loadavg());
    let_stats_settle().await;
    let idle_start = sample(&stats, &db, server.port).await?;
    tokio::time::sleep(Duration::from_secs_f64(IDLE_SECS)).await;
    let_stats_settle().await;
    let idle_end = sample(&stats, &db, server.port).await?;
    let idle = rates(&idle_start, &idle_end);
    println!("idle window: {}", describe(&idle));

    println!("load average before the load window: {}", loadavg());
    let cpu_start = watch.snapshot();
    let load_start = sample(&stats, &db, server.port).await?;
    lg.send(&format!(
        "RUN {changes_per_s} {RECONNECTS_PER_S} {ACTIVITY_PERIOD_S} {load_secs}"
    ))
    .await?;
    tokio::time::sleep(Duration::from_secs_f64(load_secs)).await;
    let cpu_end = watch.snapshot();
    let_stats_settle().await;
    let load_end = sample(&stats, &db, server.port).await?;
    let rss_loaded = rss_kb(server.pid());
    let load = rates(&load_start, &load_end);
    let cpu = watch.percent(&cpu_start, &cpu_end);
    println!("load average after the load window: {}", loadavg());
    let done = lg.expect("DONE", Duration::from_secs(120)).await?;
    lg.quit().await;

    let changes = num(&done, "changes");
    let (received, expected) = (num(&done, "received"), num(&done, "expected"));
    let ms = |key: &str| num(&done, key) / 1000.0;
    let (p50, p99) = (ms("p50_us"), ms("p99_us"));
    let writes = (load.xids - idle.xids).max(0.0);
    let xacts = (load.xacts - idle.xacts).max(0.0);
    let rows = (load.rows - idle.rows).max(0.0);
    println!("load window: {}", describe(&load));
    println!(
        "caused by presence (load minus idle): {writes:.1} write transactions/s, {xacts:.1} transactions/s, \
         {rows:.0} rows/s, {:.0} KiB WAL/s",
        (load.wal_kb - idle.wal_kb).max(0.0)
    );
    println!(
        "changes: {changes:.0} sent ({:.0}/s), {:.0} reconnects; updates received by peers: {received:.0} of {expected:.0} \
         expected; {:.0} unexpected; {:.0} clients lost their connection, {:.0} error frames",
        changes / load_secs,
        num(&done, "reconnects"),
        num(&done, "unexpected"),
        num(&done, "closed"),
        num(&done, "errors"),
    );
    println!(
        "state change to peer: p50 {p50:.1} ms, p90 {:.1} ms, p99 {p99:.1} ms, p99.9 {:.1} ms, max {:.1} ms",
        ms("p90_us"),
        ms("p999_us"),
        ms("max_us")
    );
    println!(
        "CPU in the load window (% of one core): {}; server RSS under load {rss_loaded} KiB",
        format_cpu(&cpu)
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "goal: fewer than {GOAL_WRITES_PER_S:.0} PostgreSQL writes/s per node at {USERS} users: {}",
        verdict(writes < GOAL_WRITES_PER_S)
    );
    println!(
        "RESULT presence writes_per_s={writes:.1} p99_ms={p99:.1} p50_ms={p50:.1} rows_per_s={rows:.0} \
         xacts_per_s={xacts:.1} changes_per_s={:.0} received={received:.0} expected={expected:.0}",
        changes / load_secs
    );
    drop(stats);
    drop(db);
    drop(server);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
