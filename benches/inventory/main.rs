//! `./bench.sh inventory`: reservations under contention, and inventory update to subscriber
//! latency, through the whole server.
//!
//! Processes besides PostgreSQL (a private cluster): this orchestrator, which also runs the SQL
//! reservers and writers; the server (`triptrip-realtime serve`, the release binary); and the
//! load generator (this binary re-executed with `--loadgen`), which holds the WebSocket
//! subscribers.
//!
//! 1. **Reservations**: 64 SQL connections race for 4 resources of 3,000 units each (16 per
//!    resource), each calling `realtime.reserve(resource, user, 1, key)` in its own
//!    transaction until it is refused as sold out. Confirmed reservations per second is the
//!    throughput; afterwards every resource must be at 0 with exactly 3,000 confirmed units
//!    (no oversell, no undersell) and every reserver must have ended on a rejection.
//! 2. **Update to subscriber**: 1,000 resources × 10 subscribers = 10,000 WebSocket
//!    connections (`inventory:subscribe`, one resource each). 20 SQL writers commit 1,000
//!    `UPDATE realtime.inventory … WHERE resource_id = $1` per second in total for 20 s, each
//!    its own transaction, round robin over the resources. The trigger sets `updated_at` to
//!    the transaction's start, just after the statement is sent: the load generator records
//!    now − `updated_at` for every `inventory:update` (one clock: the same machine), and checks
//!    per connection that versions follow each other (no change missed, none twice).
//!
//! The last line is machine-readable:
//! `RESULT inventory reservations_per_s=… p99_ms=… p50_ms=… lost=… oversold=… rss_kb_per_conn=…`.

#[path = "../common/mod.rs"]
mod common;
mod loadgen;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::sql::{connect, write_paced, PacedWriter};
use common::{
    format_cpu, latencies_ms, loadavg, num, postmaster_pid, print_machine, rss_kb, BoxError,
    CpuWatch, Histogram, LoadgenProc, ServerProc,
};
use pgcluster::Cluster;
use tokio_postgres::{Client, Statement};

const HOT_RESOURCES: usize = 4;
const UNITS_PER_HOT_RESOURCE: i32 = 3_000;
const RESERVERS: usize = 64;

const RESOURCES: usize = 1_000;
const SUBS: usize = 10;
const WRITERS: usize = 20;
const UPDATES_PER_S: f64 = 1_000.0;
const WRITE_SECS: f64 = 20.0;
/// Idle time before reading RSS, so the server has settled.
const SETTLE: Duration = Duration::from_secs(5);
/// How long deliveries may trail the last commit before the missing ones count as lost.
const TAIL: Duration = Duration::from_secs(10);

const GOAL_P99_MS: f64 = 100.0;

fn main() {
    common::bench_main_with("inventory", run, loadgen::main);
}

/// Writer `w` updates resources `w`, `w + WRITERS`, … in turn.
struct Writer {
    w: usize,
    client: Client,
    statement: Statement,
}

impl PacedWriter for Writer {
    async fn write(&mut self, j: usize) -> Result<Duration, tokio_postgres::Error> {
        let resource = format!("bench:item:{}", (self.w + j * WRITERS) % RESOURCES);
        let sent = Instant::now();
        self.client.execute(&self.statement, &[&resource]).await?;
        Ok(sent.elapsed())
    }
}

async fn run() -> Result<(), BoxError> {
    println!(
        "inventory bench: (1) {RESERVERS} SQL reservers on {HOT_RESOURCES} resources x {UNITS_PER_HOT_RESOURCE} units; \
         (2) {RESOURCES} resources x {SUBS} WebSocket subscribers, {WRITERS} SQL writers, \
         {UPDATES_PER_S:.0} updates/s for {WRITE_SECS:.0} s"
    );
    print_machine();
    let cluster =
        tokio::task::spawn_blocking(|| Cluster::temporary_with(&[("max_connections", "200")]))
            .await??;
    let url = cluster.url("postgres");
    let server = ServerProc::start(&url).await?;
    let postmaster = postmaster_pid(cluster.pgdata()).ok_or("no postmaster.pid")?;
    server.print(cluster.port());
    let sql = connect(&url).await?;

    let (reservations_per_s, oversold) = reservations(&url, &sql, &server, postmaster).await?;

    let (p50, p99, lost, rss_per_conn) = updates(&url, &sql, &server, postmaster).await?;

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "goals: update to subscriber p99 <= {GOAL_P99_MS} ms {}; nothing oversold {}; nothing lost {}",
        verdict(p99 <= GOAL_P99_MS),
        verdict(oversold == 0),
        verdict(lost == 0),
    );
    println!(
        "RESULT inventory reservations_per_s={reservations_per_s:.0} p99_ms={p99:.2} p50_ms={p50:.2} \
         lost={lost} oversold={oversold} rss_kb_per_conn={rss_per_conn:.1}"
    );
    drop(sql);
    drop(server);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

/// Phase 1: the reservation race. Returns confirmed reservations per second and how many units
/// were confirmed beyond the stock (must be 0).
async fn reservations(
    url: &str,
    sql: &Client,
    server: &ServerProc,
    postmaster: u32,
) -> Result<(f64, i64), BoxError> {
    for r in 0..HOT_RESOURCES {
        sql.execute(
            "INSERT INTO realtime.inventory (resource_id, kind, name, available, total, price, currency) \
             VALUES ($1, 'ticket', $1, $2, $2, 100, 'JPY')",
            &[&format!("bench:hot:{r}"), &UNITS_PER_HOT_RESOURCE],
        )
        .await?;
    }
    let mut reservers = Vec::new();
    for _ in 0..RESERVERS {
        let client = connect(url).await?;
        let statement = client
            .prepare("SELECT realtime.reserve($1, $2, 1, $3) ->> 'status'")
            .await?;
        reservers.push((client, statement));
    }
    let watch = CpuWatch {
        procs: vec![
            ("server", server.pid(), false),
            ("PostgreSQL", postmaster, true),
            ("orchestrator", std::process::id(), false),
        ],
    };
    println!("load average before reserving: {}", loadavg());
    let round_trip = Arc::new(Histogram::default());
    let failures = Arc::new(AtomicU64::new(0));
    let cpu_start = watch.snapshot();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (w, (client, statement)) in reservers.into_iter().enumerate() {
        let (round_trip, failures) = (round_trip.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let resource = format!("bench:hot:{}", w % HOT_RESOURCES);
            let user = format!("bench-reserver-{w}");
            let (mut confirmed, mut last_confirmed) = (0u64, start);
            loop {
                let key = format!("{user}:{confirmed}");
                let sent = Instant::now();
                match client
                    .query_one(&statement, &[&resource, &user, &key])
                    .await
                {
                    Ok(row) => {
                        round_trip.record(sent.elapsed().as_micros() as u64);
                        if row.get::<_, &str>(0) != "confirmed" {
                            return (confirmed, last_confirmed, true);
                        }
                        confirmed += 1;
                        last_confirmed = Instant::now();
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("reserver {w}: {e}");
                        }
                        return (confirmed, last_confirmed, false);
                    }
                }
            }
        }));
    }
    let (mut confirmed, mut ended_on_rejection, mut last) = (0u64, 0usize, start);
    for task in tasks {
        let (n, at, rejected) = task.await?;
        confirmed += n;
        last = last.max(at);
        ended_on_rejection += usize::from(rejected);
    }
    let cpu = watch.percent(&cpu_start, &watch.snapshot());
    let secs = last.duration_since(start).as_secs_f64();
    let per_s = confirmed as f64 / secs.max(1e-9);
    println!("load average after reserving: {}", loadavg());
    let row = sql
        .query_one(
            "SELECT (SELECT coalesce(sum(available), 0) FROM realtime.inventory WHERE kind = 'ticket')::int8, \
                    (SELECT coalesce(sum(quantity), 0) FROM realtime.reservations WHERE status = 'confirmed')::int8, \
                    (SELECT count(*) FROM realtime.reservations WHERE status = 'rejected')::int8",
            &[],
        )
        .await?;
    let (left, held, rejected): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    let stock = HOT_RESOURCES as i64 * i64::from(UNITS_PER_HOT_RESOURCE);
    println!(
        "reservations: {confirmed} confirmed in {secs:.2} s = {per_s:.0}/s ({:.0}/s per resource), {rejected} rejected; \
         {ended_on_rejection} of {RESERVERS} reservers ended on a rejection, {} failed; \
         call round trip incl. commit {}",
        per_s / HOT_RESOURCES as f64,
        failures.load(Ordering::Relaxed),
        round_trip.round_trips_ms(),
    );
    println!(
        "stock check: {stock} units, {held} confirmed in realtime.reservations, {left} left; CPU (% of one core): {}",
        format_cpu(&cpu)
    );
    if held + left != stock || confirmed as i64 != held || ended_on_rejection != RESERVERS {
        return Err(format!(
            "reservation check failed: held {held} + left {left} != stock {stock}, or {confirmed} \
             confirmed calls, or {ended_on_rejection} reservers ended on a rejection"
        )
        .into());
    }
    Ok((per_s, (held - stock).max(0)))
}

/// Phase 2: update-to-subscriber latency. Returns p50 and p99 in ms, deliveries lost and the
/// server's RSS per idle subscribed connection in KiB.
async fn updates(
    url: &str,
    sql: &Client,
    server: &ServerProc,
    postmaster: u32,
) -> Result<(f64, f64, u64, f64), BoxError> {
    sql.execute(
        "INSERT INTO realtime.inventory (resource_id, kind, name, available, total, price, currency) \
         SELECT 'bench:item:' || i, 'hotel_room', 'Room ' || i, 1000, 1000, 100 + i % 50, 'JPY' \
         FROM generate_series(0, $1::int - 1) i",
        &[&(RESOURCES as i32)],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kb(server.pid());
    let conns = RESOURCES * SUBS;
    let mut lg = LoadgenProc::spawn_args(&loadgen::args(server.port, RESOURCES, SUBS))?;
    let ready = lg.expect("READY", Duration::from_secs(300)).await?;
    lg.check_ready(&ready, "subscribed", "connections subscribed", conns, "")?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle = rss_kb(server.pid());
    let rss_per_conn = rss_idle.saturating_sub(rss_before) as f64 / conns as f64;
    println!(
        "server RSS: {rss_before} KiB before the clients, {rss_idle} KiB with {conns} idle subscribed connections \
         -> {rss_per_conn:.1} KiB per connection"
    );

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = connect(url).await?;
        let statement = client
            .prepare(
                "UPDATE realtime.inventory SET available = CASE WHEN available > 0 THEN available - 1 ELSE total END \
                 WHERE resource_id = $1",
            )
            .await?;
        writers.push(Writer {
            w,
            client,
            statement,
        });
    }
    let watch = CpuWatch::with_writers(server.pid(), lg.pid(), postmaster, "orchestrator+writers");
    println!("load average before writing: {}", loadavg());
    let per_writer = UPDATES_PER_S / WRITERS as f64;
    let cpu_start = watch.snapshot();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(WRITE_SECS);
    let writes = write_paced(writers, per_writer, start, end).await?;
    let updates = writes.written;
    let cpu = watch.percent(&cpu_start, &watch.snapshot());
    let wrote_secs = start.elapsed().as_secs_f64();
    println!("load average after writing: {}", loadavg());

    let expected = updates * SUBS as u64;
    let report = lg.tail_report(expected, TAIL).await?;
    lg.quit().await;
    let received = num(&report, "received") as u64;
    let lost = expected.saturating_sub(received);
    let ms = |key: &str| num(&report, key) / 1000.0;
    println!(
        "writers: {updates} updates committed in {wrote_secs:.1} s ({:.0}/s, {} failed); \
         statement round trip incl. commit {}",
        updates as f64 / wrote_secs,
        writes.failures,
        writes.round_trips.round_trips_ms(),
    );
    println!(
        "deliveries: {received} of {expected} expected ({lost} lost); per-connection version checks: {} skipped, \
         {} duplicate or out of order; {} connections closed, {} error frames",
        num(&report, "gaps"),
        num(&report, "disorder"),
        num(&report, "closed"),
        num(&report, "errors"),
    );
    println!(
        "update-to-subscriber latency (transaction start to client): {}",
        latencies_ms(&report)
    );
    println!("CPU while writing (% of one core): {}", format_cpu(&cpu));
    let lost = lost + num(&report, "gaps") as u64;
    Ok((ms("p50_us"), ms("p99_us"), lost, rss_per_conn))
}
