//! In-app latency: 1,000 users subscribed to their notifications in the load generator, SQL
//! writers committing `trip_update` notifications at a steady rate; latency from just before the
//! commit to `notification:new` in the client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgcluster::Cluster;

use super::{prepare, server, sql, Plan, Providers};
use crate::common::loadgen::{self, Target, PAD};
use crate::common::{
    format_cpu, http_get, loadavg, metric, num, rss_kb, unix_nanos, BoxError, CpuWatch, Histogram,
    LoadgenProc, MachineCpu,
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
    prepare(&sql(&url).await?, plan, &providers.webhook.url()).await?;

    // Writers: connected, prepared and warmed up (a session's first notification compiles the
    // PL/pgSQL functions and plans the triggers' statements, about 10 ms) before any client
    // subscribes, as a service's pooled connections would be.
    let per_writer = plan.rate / plan.writers as f64;
    let mut writers = Vec::new();
    for w in 0..plan.writers {
        let client = sql(&url).await?;
        let statement = client
            .prepare(
                "SELECT realtime.notify($1, 'trip_update', jsonb_build_object('t', $2::bigint, 'message', $3::text))",
            )
            .await?;
        client
            .query_one(&statement, &[&loadgen::user_name(w), &0i64, &PAD])
            .await?;
        writers.push((client, statement));
    }
    let warmed_up: i64 = writers[0]
        .0
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
    let joined = num(&ready, "joined") as usize;
    println!(
        "load generator: pid {}; {joined} users subscribed in {:.1} s ({} failed)",
        lg.pid(),
        num(&ready, "connect_secs"),
        num(&ready, "failed")
    );
    if joined != plan.users {
        return Err(format!("only {joined} of {} users subscribed", plan.users).into());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let watch = CpuWatch {
        procs: vec![
            ("server", server.pid(), false),
            ("load generator", lg.pid(), false),
            ("PostgreSQL", postmaster, true),
            (
                "orchestrator (writers, idle stand-ins)",
                std::process::id(),
                false,
            ),
        ],
    };
    println!("load average before writing: {}", loadavg());
    let commit_rtt = Arc::new(Histogram::default());
    let failures = Arc::new(AtomicU64::new(0));
    let sampler = {
        let port = server.port;
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut lags = Vec::new();
            loop {
                if let Some((200, text)) = http_get(port, "/metrics").await {
                    if let Some(lag) = metric(&text, "triptrip_replication_lag_seconds") {
                        lags.push(lag * 1000.0);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop_rx.changed() => break,
                }
            }
            lags
        });
        (stop_tx, task)
    };
    let cpu_start = watch.snapshot();
    let machine_start = MachineCpu::now();
    let start = tokio::time::Instant::now() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(plan.write_secs);
    let (users, nwriters) = (plan.users, plan.writers);
    let mut tasks = Vec::new();
    for (w, (client, statement)) in writers.into_iter().enumerate() {
        let (commit_rtt, failures) = (commit_rtt.clone(), failures.clone());
        tasks.push(tokio::spawn(async move {
            let period = 1.0 / per_writer;
            let offset = w as f64 * period / nwriters as f64;
            let mine: Vec<String> = (w..users)
                .step_by(nwriters)
                .map(loadgen::user_name)
                .collect();
            let mut written = 0u64;
            let mut j = 0usize;
            loop {
                let at = start + Duration::from_secs_f64(offset + j as f64 * period);
                if at >= end {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let user = &mine[j % mine.len()];
                let sent = Instant::now();
                let t = unix_nanos() as i64;
                match client.query_one(&statement, &[user, &t, &PAD]).await {
                    Ok(_) => {
                        written += 1;
                        commit_rtt.record(sent.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        if failures.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("writer {w}: {e}");
                        }
                    }
                }
                j += 1;
            }
            (client, written)
        }));
    }
    let mut committed = 0u64;
    let mut clients = Vec::new();
    for task in tasks {
        let (client, written) = task.await?;
        committed += written;
        clients.push(client);
    }
    let cpu_end = watch.snapshot();
    let machine = MachineCpu::now().since(&machine_start);
    let wrote_secs = start.elapsed().as_secs_f64();
    let _ = sampler.0.send(true);
    let mut lags = sampler.1.await?;
    lags.sort_by(f64::total_cmp);
    let mut cpu = watch.percent(&cpu_start, &cpu_end);
    let others = machine.append_to(&mut cpu);
    println!("load average after writing: {}", loadavg());

    let tail_start = Instant::now();
    loop {
        lg.send("STATUS").await?;
        let status = lg.expect("STATUS", Duration::from_secs(30)).await?;
        if num(&status, "received") as u64 >= committed || tail_start.elapsed() >= TAIL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    lg.send("REPORT").await?;
    let report = lg.expect("REPORT", Duration::from_secs(30)).await?;
    let server_rss = rss_kb(server.pid());
    lg.quit().await;
    // The server records what reached a client every 250 ms.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let row = clients[0]
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) \
             FROM realtime.notification_deliveries \
             WHERE channel = 'in_app' AND notification_id > $1",
            &[&warmed_up],
        )
        .await?;
    let (recorded, in_app_rows): (i64, i64) = (row.get(0), row.get(1));
    drop(clients);
    drop(server);

    let received = num(&report, "received") as u64;
    let lost = committed.saturating_sub(received);
    let ms = |key: &str| num(&report, key) / 1000.0;
    let (p50, p99, p999) = (ms("p50_us"), ms("p99_us"), ms("p999_us"));
    println!(
        "writers (each warmed up with one notification before the clients subscribed): \
         {committed} notifications committed in {wrote_secs:.1} s ({:.0}/s; {} failed); \
         statement round trip incl. commit p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        committed as f64 / wrote_secs,
        failures.load(Ordering::Relaxed),
        commit_rtt.quantile(0.5) / 1000.0,
        commit_rtt.quantile(0.99) / 1000.0,
        commit_rtt.max_micros() as f64 / 1000.0,
    );
    println!(
        "notification:new: {received} of {committed} ({lost} lost); per-connection seq checks: {} skipped, {} duplicate/out of order; \
         {} connections closed, {} error frames; in-app deliveries recorded delivered: {recorded} of {in_app_rows}",
        num(&report, "gaps"),
        num(&report, "disorder"),
        num(&report, "closed"),
        num(&report, "errors"),
    );
    println!(
        "commit-to-client latency: p50 {p50:.2} ms, p90 {:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {:.2} ms",
        ms("p90_us"),
        ms("max_us"),
    );
    if !lags.is_empty() {
        println!(
            "server replication lag (commit to hub, /metrics every 250 ms while writing): median {:.1} ms, max {:.1} ms over {} samples",
            lags[lags.len() / 2],
            lags[lags.len() - 1],
            lags.len()
        );
    }
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
