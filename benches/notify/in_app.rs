//! In-app latency: 1,000 users subscribed to their notifications in the load generator, SQL
//! writers committing `trip_update` notifications at a steady rate; latency from just before the
//! commit to `notification:new` in the client.

use std::time::{Duration, Instant};

use pgcluster::Cluster;
use tokio_postgres::{Client, Statement};

use super::{prepare, server, Plan, Providers};
use crate::common::loadgen::{self, Target, PAD};
use crate::common::sql::{self, write_paced, PacedWriter};
use crate::common::{
    format_cpu, latencies_ms, loadavg, num, print_lags, rss_kb, unix_nanos, BoxError, CpuWatch,
    LagSampler, LoadgenProc, MachineCpu,
};

/// How long in-app deliveries may trail the last commit before the missing ones count as lost.
const TAIL: Duration = Duration::from_secs(15);

pub(crate) struct InApp {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) lost: u64,
    pub(crate) gaps: u64,
    /// CPU (% of one core) that the rest of the machine took while the writers ran.
    pub(crate) others: f64,
}

/// Writer `w` notifies users `w`, `w + writers`, … in turn.
struct Writer {
    client: Client,
    statement: Statement,
    users: Vec<String>,
}

impl PacedWriter for Writer {
    async fn write(&mut self, j: usize) -> Result<Duration, tokio_postgres::Error> {
        let user = &self.users[j % self.users.len()];
        let sent = Instant::now();
        let t = unix_nanos() as i64;
        self.client
            .query_one(&self.statement, &[user, &t, &PAD])
            .await?;
        Ok(sent.elapsed())
    }
}

pub(crate) async fn run(
    plan: &Plan,
    cluster: &Cluster,
    postmaster: u32,
    providers: &Providers,
) -> Result<InApp, BoxError> {
    println!();
    println!("== in-app: commit to notification:new");
    let url = cluster.url("postgres");
    let server = server(providers, &url, "triptrip_realtime", 1).await?;
    println!(
        "server: pid {} on 127.0.0.1:{} (1 dispatcher); PostgreSQL on 127.0.0.1:{}",
        server.pid(),
        server.port,
        cluster.port()
    );
    prepare(&sql::connect(&url).await?, plan, &providers.webhook.url()).await?;

    // Writers: connected, prepared and warmed up (a session's first notification compiles the
    // PL/pgSQL functions and plans the triggers' statements, about 10 ms) before any client
    // subscribes, as a service's pooled connections would be.
    let per_writer = plan.rate / plan.writers as f64;
    let mut writers = Vec::new();
    for w in 0..plan.writers {
        let client = sql::connect(&url).await?;
        let statement = client
            .prepare(
                "SELECT realtime.notify($1, 'trip_update', jsonb_build_object('t', $2::bigint, 'message', $3::text))",
            )
            .await?;
        client
            .query_one(&statement, &[&loadgen::user_name(w), &0i64, &PAD])
            .await?;
        let users = (w..plan.users)
            .step_by(plan.writers)
            .map(loadgen::user_name)
            .collect();
        writers.push(Writer {
            client,
            statement,
            users,
        });
    }
    let warmed_up: i64 = writers[0]
        .client
        .query_one("SELECT max(id) FROM realtime.notifications", &[])
        .await?
        .get(0);

    let mut lg = LoadgenProc::spawn(&loadgen::Options {
        target: Target::Notifications,
        port: server.port,
        rooms: plan.users,
        subs: 1,
        publishers: false,
    })?;
    let ready = lg.expect("READY", Duration::from_secs(300)).await?;
    lg.check_ready(&ready, "joined", "users subscribed", plan.users, "")?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let watch = CpuWatch::with_writers(
        server.pid(),
        lg.pid(),
        postmaster,
        "orchestrator (writers, idle stand-ins)",
    );
    println!("load average before writing: {}", loadavg());
    let sampler = LagSampler::start(server.port);
    let cpu_start = watch.snapshot();
    let machine_start = MachineCpu::now();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(plan.write_secs);
    let writes = write_paced(writers, per_writer, start, end).await?;
    let committed = writes.written;
    let cpu_end = watch.snapshot();
    let machine = MachineCpu::now().since(&machine_start);
    let wrote_secs = start.elapsed().as_secs_f64();
    let lags = sampler.stop().await?;
    let mut cpu = watch.percent(&cpu_start, &cpu_end);
    let others = machine.append_to(&mut cpu);
    println!("load average after writing: {}", loadavg());

    let report = lg.tail_report(committed, TAIL).await?;
    let server_rss = rss_kb(server.pid());
    lg.quit().await;
    // The server records what reached a client every 250 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = writes.writers[0]
        .client
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) \
             FROM realtime.notification_deliveries \
             WHERE channel = 'in_app' AND notification_id > $1",
            &[&warmed_up],
        )
        .await?;
    let (recorded, in_app_rows): (i64, i64) = (row.get(0), row.get(1));
    drop(writes.writers);
    drop(server);

    let received = num(&report, "received") as u64;
    let lost = committed.saturating_sub(received);
    let ms = |key: &str| num(&report, key) / 1000.0;
    let (p50, p99) = (ms("p50_us"), ms("p99_us"));
    println!(
        "writers (each warmed up with one notification before the clients subscribed): \
         {committed} notifications committed in {wrote_secs:.1} s ({:.0}/s; {} failed); \
         statement round trip incl. commit {}",
        committed as f64 / wrote_secs,
        writes.failures,
        writes.round_trips.round_trips_ms(),
    );
    println!(
        "notification:new: {received} of {committed} ({lost} lost); per-connection seq checks: {} skipped, {} duplicate/out of order; \
         {} connections closed, {} error frames; in-app deliveries recorded delivered: {recorded} of {in_app_rows}",
        num(&report, "gaps"),
        num(&report, "disorder"),
        num(&report, "closed"),
        num(&report, "errors"),
    );
    println!("commit-to-client latency: {}", latencies_ms(&report));
    print_lags(&lags);
    let per_notification = |pct: f64| pct / 100.0 * 1e6 / (committed as f64 / wrote_secs).max(1.0);
    println!(
        "CPU while writing (% of one core): {}; per notification: server {:.0} us, PostgreSQL {:.0} us; server RSS {server_rss} KiB",
        format_cpu(&cpu),
        per_notification(cpu[0].1),
        per_notification(cpu[2].1),
    );
    Ok(InApp {
        p50,
        p99,
        lost,
        gaps: num(&report, "gaps") as u64,
        others,
    })
}
