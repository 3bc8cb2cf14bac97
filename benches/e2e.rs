//! `./bench.sh e2e`: commit-to-client latency through the whole server, from a separate
//! load-generator process on the same machine.
//!
//! Three processes besides PostgreSQL (a private cluster): this orchestrator, which also runs
//! the SQL writers; the server (`triptrip-realtime serve`, the release binary); and the load
//! generator (this binary re-executed with `--loadgen`), which holds 100 rooms × 100
//! subscribers = 10,000 WebSocket connections, each with its own token whose `rooms` claim
//! grants its room, joined without `since`.
//!
//! Method:
//! 1. Server RSS is read idle before any client connects, and again once all 10,000 have
//!    joined and the server has been left idle a few seconds: `rss_kb_per_conn` is the
//!    difference over 10,000.
//! 2. 50 writer connections commit 40 rows/s each (2,000 rows/s in total), every row its own
//!    transaction, `SELECT realtime.publish(room, 'bench', jsonb_build_object('t', <Unix ns
//!    just before the statement is sent>, 'pad', <100 bytes>))`. Writer `w` writes rooms
//!    `w` and `w+50` in turn, so writers never queue on one room's seq lock. Meanwhile the
//!    server's `/metrics` is sampled for its replication lag (commit to hub), which splits the
//!    latency into the WAL path and the fan-out path.
//! 3. For every `room:message` the load generator records now − t: the latency from just
//!    before the commit to the client, commit included, on one clock. It checks per connection
//!    that seqs follow each other with no gap and no duplicate.
//! 4. After the writers stop, the tail is awaited; lost = committed rows × 100 − received.
//!
//! The last line is machine-readable:
//! `RESULT e2e p50_ms=… p99_ms=… deliveries_per_s=… rss_kb_per_conn=… lost=…`.

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::loadgen::{self, room_name, Target, PAD};
use common::sql::{self, write_paced, PacedWriter};
use common::{
    format_cpu, knob, latencies_ms, loadavg, num, postmaster_pid, print_lags, print_machine,
    rss_kb, unix_nanos, BoxError, CpuWatch, LagSampler, LoadgenProc, ServerProc,
};
use pgcluster::Cluster;
use tokio_postgres::{Client, Statement};

const ROOMS: usize = 100;
const SUBS: usize = 100;
/// Enough writers that each one's commit round trip (a WAL flush, ~3 ms on this disk, more
/// under load) leaves room in its period.
const WRITERS: usize = 50;
const ROWS_PER_WRITER_PER_S: f64 = 40.0;
const WRITE_SECS: f64 = 20.0;
/// Idle time before reading RSS, so the server has settled.
const SETTLE: Duration = Duration::from_secs(5);
/// How long deliveries may trail the last commit before the missing ones count as lost.
const TAIL: Duration = Duration::from_secs(15);

const GOAL_P99_MS: f64 = 50.0;
const GOAL_RSS_KB: f64 = 8.0;

fn main() {
    common::bench_main("e2e", run);
}

/// Writer `w` publishes to rooms `w`, `w + WRITERS`, … in turn.
struct Writer {
    client: Client,
    statement: Statement,
    rooms: Vec<String>,
}

impl PacedWriter for Writer {
    async fn write(&mut self, j: usize) -> Result<Duration, tokio_postgres::Error> {
        let k = j % self.rooms.len();
        let sent = Instant::now();
        let t = unix_nanos() as i64;
        self.client
            .query_one(&self.statement, &[&self.rooms[k], &t, &PAD])
            .await?;
        Ok(sent.elapsed())
    }
}

async fn run() -> Result<(), BoxError> {
    // `E2E_ROWS_PER_S`, `E2E_WRITE_SECS` and `E2E_SUBS` (subscribers per room) override the
    // workload, for exploring; the RESULT line is only comparable with the defaults.
    let subs = knob("E2E_SUBS", SUBS as f64)? as usize;
    let conns = ROOMS * subs;
    let rate = knob("E2E_ROWS_PER_S", WRITERS as f64 * ROWS_PER_WRITER_PER_S)?;
    let write_secs = knob("E2E_WRITE_SECS", WRITE_SECS)?;
    let per_writer = rate / WRITERS as f64;
    println!(
        "e2e bench: {ROOMS} rooms x {subs} subscribers = {conns} WebSocket connections; \
         {WRITERS} SQL writers x {per_writer:.0} rows/s = {rate:.0} rows/s for {write_secs:.0} s \
         ({:.0} deliveries/s offered)",
        rate * subs as f64
    );
    print_machine();

    let cluster = tokio::task::spawn_blocking(Cluster::temporary).await??;
    let url = cluster.url("postgres");
    let server = ServerProc::start(&url).await?;
    let postmaster = postmaster_pid(cluster.pgdata()).ok_or("no postmaster.pid")?;
    server.print(cluster.port());

    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before = rss_kb(server.pid());

    let mut lg = LoadgenProc::spawn(&loadgen::Options {
        target: Target::Ours,
        port: server.port,
        rooms: ROOMS,
        subs,
        publishers: false,
    })?;
    let ready = lg.expect("READY", Duration::from_secs(300)).await?;
    lg.check_ready(&ready, "joined", "connections joined", conns, "")?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle = rss_kb(server.pid());
    let rss_per_conn = rss_idle.saturating_sub(rss_before) as f64 / conns as f64;
    println!(
        "server RSS: {rss_before} KiB idle without clients, {rss_idle} KiB with {conns} idle joined connections \
         -> {rss_per_conn:.1} KiB per connection (load generator RSS {} KiB)",
        rss_kb(lg.pid())
    );

    // Writers: connected and prepared before the clock starts.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = sql::connect(&url).await?;
        let statement = client
            .prepare(
                "SELECT realtime.publish($1, 'bench', jsonb_build_object('t', $2::bigint, 'pad', $3::text))",
            )
            .await?;
        let rooms = (0..ROOMS / WRITERS)
            .map(|k| room_name(w + k * WRITERS))
            .collect();
        writers.push(Writer {
            client,
            statement,
            rooms,
        });
    }

    let watch = CpuWatch::with_writers(server.pid(), lg.pid(), postmaster, "orchestrator+writers");
    println!("load average before writing: {}", loadavg());
    let sampler = LagSampler::start(server.port);
    let cpu_start = watch.snapshot();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(write_secs);
    let writes = write_paced(writers, per_writer, start, end).await?;
    let rows = writes.written;
    let cpu_end = watch.snapshot();
    let wrote_secs = start.elapsed().as_secs_f64();
    let lags = sampler.stop().await?;
    let cpu = watch.percent(&cpu_start, &cpu_end);
    let rss_loaded = rss_kb(server.pid());
    println!("load average after writing: {}", loadavg());

    // The tail: wait until every delivery arrived or TAIL passed.
    let expected = rows * subs as u64;
    let report = lg.tail_report(expected, TAIL).await?;
    lg.quit().await;

    let in_db: i64 = writes.writers[0]
        .client
        .query_one("SELECT count(*) FROM realtime.messages", &[])
        .await?
        .get(0);
    drop(writes.writers);

    let received = num(&report, "received") as u64;
    let lost = expected.saturating_sub(received);
    let span_s = (num(&report, "last_ns") - num(&report, "first_ns")) / 1e9;
    let deliveries_per_s = if span_s > 0.0 {
        received as f64 / span_s
    } else {
        0.0
    };
    let ms = |key: &str| num(&report, key) / 1000.0;
    let (p50, p99) = (ms("p50_us"), ms("p99_us"));

    println!(
        "writers: {rows} rows committed in {wrote_secs:.1} s ({:.0} rows/s; {} failed; {in_db} rows in realtime.messages); \
         statement round trip incl. commit {}",
        rows as f64 / wrote_secs,
        writes.failures,
        writes.round_trips.round_trips_ms(),
    );
    println!(
        "deliveries: {received} of {expected} expected ({lost} lost) over {span_s:.1} s = {deliveries_per_s:.0}/s; \
         per-connection seq checks: {} skipped, {} duplicate/out of order, {} connections behind their room by {} events; \
         {} connections closed, {} error frames",
        num(&report, "gaps"),
        num(&report, "disorder"),
        num(&report, "behind_conns"),
        num(&report, "behind_events"),
        num(&report, "closed"),
        num(&report, "errors"),
    );
    println!("commit-to-client latency: {}", latencies_ms(&report));
    print_lags(&lags);
    let offered = rows as f64 * subs as f64 / wrote_secs;
    let per_delivery = |pct: f64| pct / 100.0 * 1e6 / offered.max(1.0);
    println!(
        "CPU while writing (% of one core): {}; per delivery: server {:.1} us, load generator {:.1} us; \
         server RSS under load {rss_loaded} KiB",
        format_cpu(&cpu),
        per_delivery(cpu[0].1),
        per_delivery(cpu[1].1),
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "goals: p99 <= {GOAL_P99_MS} ms {}; nothing lost {}; <= {GOAL_RSS_KB} KiB per idle connection {}",
        verdict(p99 <= GOAL_P99_MS),
        verdict(lost == 0 && num(&report, "gaps") == 0.0),
        verdict(rss_per_conn <= GOAL_RSS_KB),
    );
    println!(
        "RESULT e2e p50_ms={p50:.2} p99_ms={p99:.2} deliveries_per_s={deliveries_per_s:.0} rss_kb_per_conn={rss_per_conn:.1} lost={lost}"
    );
    drop(server);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
