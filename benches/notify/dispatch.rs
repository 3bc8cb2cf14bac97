//! Dispatch rate: backlogs of external deliveries, each inserted in one transaction, sent by the
//! server's dispatchers to the stand-in providers; deliveries per second from the backlog's
//! commit to the last one recorded `sent`.

use std::time::{Duration, Instant, SystemTime};

use pgcluster::Cluster;
use tokio_postgres::Client;

use super::{plural, prepare, server, Plan, Providers, CHANNELS};
use crate::common::loadgen::PAD;
use crate::common::sql;
use crate::common::{
    format_cpu, http_get, loadavg, metric, BoxError, CpuWatch, MachineCpu, ServerProc,
};

/// A backlog whose stand-ins see nothing new for this long is given up.
const STALL: Duration = Duration::from_secs(30);

/// One backlog: `notifications` of `kind`, whose type routes each to `channels` (one delivery
/// per channel for the bench's users).
pub(crate) struct Phase {
    pub(crate) label: &'static str,
    kind: &'static str,
    channels: &'static [&'static str],
    notifications: usize,
}

pub(crate) fn phases(plan: &Plan) -> Vec<Phase> {
    let (all, quarter) = (plan.backlog, plan.backlog / CHANNELS.len());
    vec![
        Phase {
            label: "webhook",
            kind: "bench_webhook",
            channels: &["webhook"],
            notifications: all,
        },
        Phase {
            label: "push",
            kind: "bench_push",
            channels: &["push"],
            notifications: all,
        },
        Phase {
            label: "email",
            kind: "bench_email",
            channels: &["email"],
            notifications: all,
        },
        Phase {
            label: "sms",
            kind: "bench_sms",
            channels: &["sms"],
            notifications: all,
        },
        Phase {
            label: "mixed",
            kind: "bench_all",
            channels: &CHANNELS,
            notifications: quarter,
        },
    ]
}

pub(crate) struct PhaseResult {
    pub(crate) expected: u64,
    pub(crate) sent: u64,
    pub(crate) rate: f64,
    /// CPU (% of one core) that the rest of the machine took meanwhile.
    pub(crate) others: f64,
}

pub(crate) struct DispatchRun {
    pub(crate) workers: usize,
    pub(crate) phases: Vec<PhaseResult>,
}

pub(crate) async fn run(
    plan: &Plan,
    cluster: &Cluster,
    postmaster: u32,
    providers: &Providers,
    workers: usize,
) -> Result<DispatchRun, BoxError> {
    println!();
    println!(
        "== dispatch: {workers} dispatcher{} (batch {})",
        plural(workers),
        std::env::var("TRIPTRIP_DISPATCH_BATCH").unwrap_or_else(|_| "100".into())
    );
    let db = format!("dispatch_{workers}w");
    // psql, synchronously: on a worker thread of the multi-threaded runtime.
    let url = tokio::task::block_in_place(|| cluster.create_database(&db))?;
    let server = server(providers, &url, &format!("bench_{db}"), workers).await?;
    let client = sql::connect(&url).await?;
    prepare(&client, plan, &providers.webhook.url()).await?;
    println!(
        "server: pid {} on 127.0.0.1:{}, database {db}; load average {}",
        server.pid(),
        server.port,
        loadavg()
    );
    let watch = CpuWatch {
        procs: vec![
            ("server", server.pid(), false),
            ("PostgreSQL", postmaster, true),
            ("orchestrator (stand-ins)", std::process::id(), false),
        ],
    };
    let mut results = Vec::new();
    for phase in phases(plan) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        results.push(backlog(plan, &client, &server, &watch, providers, &phase).await?);
    }
    drop(server);
    // The slot's server is gone: let it go too, so it keeps no WAL.
    let _ = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
             WHERE slot_name = $1 AND NOT active",
            &[&format!("bench_{db}")],
        )
        .await;
    Ok(DispatchRun {
        workers,
        phases: results,
    })
}

async fn backlog(
    plan: &Plan,
    client: &Client,
    server: &ServerProc,
    watch: &CpuWatch,
    providers: &Providers,
    phase: &Phase,
) -> Result<PhaseResult, BoxError> {
    providers.clear();
    let expected_per_channel: Vec<u64> = CHANNELS
        .iter()
        .map(|c| {
            if phase.channels.contains(c) {
                phase.notifications as u64
            } else {
                0
            }
        })
        .collect();
    let expected: u64 = expected_per_channel.iter().sum();
    let after: i64 = client
        .query_one(
            "SELECT coalesce(max(id), 0) FROM realtime.notifications",
            &[],
        )
        .await?
        .get(0);
    let metrics_before = http_get(server.port, "/metrics").await;
    let smtp_before = providers.smtp.connections();
    let tcp_before = TcpCounters::read();
    let load_before = loadavg();
    // One transaction: the whole backlog becomes due at its commit.
    let inserted = Instant::now();
    client
        .query_one(
            "SELECT count(realtime.notify('bench-user-' || (n % $1::int), $2, \
                 jsonb_build_object('n', n, 'message', $3::text))) \
             FROM generate_series(0, $4::int - 1) n",
            &[
                &(plan.users as i32),
                &phase.kind,
                &PAD,
                &(phase.notifications as i32),
            ],
        )
        .await?;
    let t0 = SystemTime::now();
    let started = Instant::now();
    let insert_secs = started.duration_since(inserted).as_secs_f64();
    let cpu_start = watch.snapshot();
    let machine_start = MachineCpu::now();

    // The stand-ins' own counts, every 10 ms: free to read, so the measurement costs nothing.
    let mut reached: Vec<Option<f64>> = expected_per_channel
        .iter()
        .map(|&e| (e == 0).then_some(0.0))
        .collect();
    let mut last = [0u64; 4];
    let mut progress_at = Instant::now();
    loop {
        let counts = providers.counts();
        for (i, count) in counts.iter().enumerate() {
            if reached[i].is_none() && *count >= expected_per_channel[i] {
                reached[i] = Some(started.elapsed().as_secs_f64());
            }
        }
        if counts != last {
            last = counts;
            progress_at = Instant::now();
        }
        if reached.iter().all(Option::is_some) || progress_at.elapsed() > STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_end = watch.snapshot();
    let machine = MachineCpu::now().since(&machine_start);
    let mut cpu = watch.percent(&cpu_start, &cpu_end);
    let others = machine.append_to(&mut cpu);
    let load_after = loadavg();
    let smtp_connections = providers.smtp.connections() - smtp_before;
    let tcp = TcpCounters::read().since(&tcp_before);

    // Then the database: every delivery recorded (the round after the stand-in's answer).
    let query = "SELECT channel, count(*) FILTER (WHERE state = 'sent'), count(*), \
                        count(*) FILTER (WHERE state = 'pending'), \
                        min(updated_at) FILTER (WHERE state = 'sent'), \
                        max(updated_at) FILTER (WHERE state = 'sent') \
                 FROM realtime.notification_deliveries \
                 WHERE notification_id > $1 AND channel <> 'in_app' GROUP BY channel";
    let deadline = Instant::now() + STALL;
    let rows = loop {
        let rows = client.query(query, &[&after]).await?;
        let pending: i64 = rows.iter().map(|r| r.get::<_, i64>(3)).sum();
        if pending == 0 || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metrics_after = http_get(server.port, "/metrics").await;
    let rounds = |m: &Option<(u16, String)>, name: &str| {
        m.as_ref()
            .and_then(|(_, text)| metric(text, name))
            .unwrap_or(0.0)
    };
    let round_count = rounds(
        &metrics_after,
        "triptrip_notification_dispatch_rounds_total",
    ) - rounds(
        &metrics_before,
        "triptrip_notification_dispatch_rounds_total",
    );
    let round_failures = rounds(
        &metrics_after,
        "triptrip_notification_dispatch_failures_total",
    ) - rounds(
        &metrics_before,
        "triptrip_notification_dispatch_failures_total",
    );

    let secs_since = |at: SystemTime| at.duration_since(t0).unwrap_or_default().as_secs_f64();
    let mut sent_total = 0u64;
    let mut rows_total = 0u64;
    let mut first: Option<SystemTime> = None;
    let mut last_sent: Option<SystemTime> = None;
    let mut per_channel = Vec::new();
    for row in &rows {
        let channel: String = row.get(0);
        let sent = row.get::<_, i64>(1) as u64;
        let total = row.get::<_, i64>(2) as u64;
        let lo: Option<SystemTime> = row.get(4);
        let hi: Option<SystemTime> = row.get(5);
        sent_total += sent;
        rows_total += total;
        first = match (first, lo) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last_sent = match (last_sent, hi) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let secs = hi.map_or(0.0, secs_since);
        let standin = CHANNELS
            .iter()
            .position(|c| *c == channel)
            .and_then(|i| reached[i]);
        per_channel.push(format!(
            "{channel} {sent}/{total} in {secs:.2} s = {:.0}/s (stand-in had all after {})",
            rate(sent, secs),
            standin.map_or_else(|| "-".into(), |s| format!("{s:.2} s"))
        ));
    }
    let secs = last_sent.map_or(0.0, secs_since);
    let result = PhaseResult {
        expected,
        sent: sent_total,
        rate: rate(sent_total, secs),
        others,
    };
    println!(
        "{:<8} {sent_total} of {expected} deliveries sent ({rows_total} rows) in {secs:.2} s = {:.0}/s; first sent after {:.0} ms; \
         {round_count:.0} rounds ({round_failures:.0} failed); backlog inserted in {insert_secs:.1} s",
        phase.label,
        result.rate,
        first.map_or(0.0, secs_since) * 1000.0,
    );
    if phase.channels.len() > 1 {
        println!("         per channel: {}", per_channel.join("; "));
    } else if let Some(line) = per_channel.first() {
        println!("         {line}");
    }
    if phase.channels.contains(&"email") {
        println!("         SMTP connections the server opened: {smtp_connections}");
    }
    println!(
        "         TCP on this machine meanwhile: {} connections opened, {} SYNs dropped by full accept queues, {} SYNs retransmitted",
        tcp.active_opens, tcp.listen_overflows, tcp.syn_retransmits
    );
    println!(
        "         CPU (% of one core): {}; load average {load_before} before, {load_after} after",
        format_cpu(&cpu)
    );
    Ok(result)
}

/// Machine-wide TCP counters (`/proc/net/snmp`, `/proc/net/netstat`): a burst of new
/// connections shows here, and so do SYNs dropped by a full accept queue, which the client
/// resends only after a second.
#[derive(Default)]
struct TcpCounters {
    active_opens: u64,
    listen_overflows: u64,
    syn_retransmits: u64,
}

impl TcpCounters {
    fn read() -> TcpCounters {
        let field = |file: &str, prefix: &str, name: &str| -> u64 {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let mut lines = text.lines().filter(|l| l.starts_with(prefix));
            let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
                return 0;
            };
            names
                .split_whitespace()
                .zip(values.split_whitespace())
                .find(|(n, _)| *n == name)
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        TcpCounters {
            active_opens: field("/proc/net/snmp", "Tcp:", "ActiveOpens"),
            listen_overflows: field("/proc/net/netstat", "TcpExt:", "ListenOverflows"),
            syn_retransmits: field("/proc/net/netstat", "TcpExt:", "TCPSynRetrans"),
        }
    }

    fn since(&self, before: &TcpCounters) -> TcpCounters {
        TcpCounters {
            active_opens: self.active_opens.saturating_sub(before.active_opens),
            listen_overflows: self
                .listen_overflows
                .saturating_sub(before.listen_overflows),
            syn_retransmits: self.syn_retransmits.saturating_sub(before.syn_retransmits),
        }
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}
