//! The inventory load generator: a separate process (the bench binary re-executed with
//! `--loadgen`) that opens `resources × subs` WebSocket connections, each subscribed with
//! `inventory:subscribe` to one resource (connection `i` to resource `i % resources`), then
//! follows orders read line by line on stdin and answers on stdout:
//!
//! - `READY subscribed=… failed=… connect_secs=…` once everyone is subscribed;
//! - `STATUS` → `STATUS received=… closed=… errors=…`;
//! - `REPORT` → `REPORT received=… p50_us=… … gaps=… disorder=…`;
//! - `QUIT`.
//!
//! For every `inventory:update` it records now − `updated_at` (the writer's transaction start)
//! and checks that the resource's `version` follows the last one this connection saw. Frames
//! are never parsed into a JSON tree; only `"version":` and `"updated_at":"…"` are picked out.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::common::loadgen::{
    control_frame, from_positional_args, next_text, on_message, open, positional_args, quantiles,
    run_process, stdin_commands, Ws,
};
use super::common::{token, u64_after, unix_nanos, BoxError, Histogram};

/// Handshakes in flight while connecting.
const CONNECT_CONCURRENCY: usize = 256;
/// Histograms; each worker thread records into one of them.
const SHARDS: usize = 4;

/// The arguments that start the load generator.
pub(crate) fn args(port: u16, resources: usize, subs: usize) -> Vec<String> {
    positional_args(port, resources, subs)
}

/// One subscriber's view of its resource's versions. Written only by its own task.
#[derive(Default)]
struct Conn {
    last: AtomicU64,
    /// Versions skipped (changes this connection never got).
    gaps: AtomicU64,
    /// Versions at or below the last one seen.
    disorder: AtomicU64,
}

impl Conn {
    fn see(&self, version: u64) {
        let last = self.last.load(Relaxed);
        if version == last + 1 {
            self.last.store(version, Relaxed);
        } else if version > last {
            self.gaps.fetch_add(version - last - 1, Relaxed);
            self.last.store(version, Relaxed);
        } else {
            self.disorder.fetch_add(1, Relaxed);
        }
    }
}

#[derive(Default)]
struct Shared {
    latency: [Histogram; SHARDS],
    conns: Mutex<Vec<Arc<Conn>>>,
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    closed: AtomicU64,
    errors: AtomicU64,
    unparsed: AtomicU64,
    next_shard: AtomicUsize,
}

impl Shared {
    fn received(&self) -> u64 {
        self.latency.iter().map(Histogram::count).sum()
    }

    /// Handles one text frame; returns the reply to send, if any.
    fn on_text(&self, conn: &Conn, shard: usize, text: &str) -> Option<&'static str> {
        if text.contains(r#""type":"inventory:update""#) {
            let version = u64_after(text, r#""version":"#);
            let updated = text
                .find(r#""updated_at":""#)
                .and_then(|at| {
                    let rest = &text[at + 14..];
                    rest.find('"').map(|end| &rest[..end])
                })
                .and_then(|stamp| OffsetDateTime::parse(stamp, &Rfc3339).ok());
            match (version, updated) {
                (Some(version), Some(updated)) => {
                    let sent_ns = u64::try_from(updated.unix_timestamp_nanos()).unwrap_or(0);
                    let micros = unix_nanos().saturating_sub(sent_ns) / 1_000;
                    self.latency[shard].record(micros);
                    conn.see(version);
                }
                _ => {
                    if self.unparsed.fetch_add(1, Relaxed) < 3 {
                        eprintln!("loadgen: cannot read {text}");
                    }
                }
            }
            None
        } else {
            control_frame(text, &self.errors)
        }
    }
}

/// Connects and subscribes to `resource`; returns the socket and the version of the state
/// the subscription started with.
async fn subscribe(port: u16, index: usize, resource: usize) -> Result<(Ws, u64), BoxError> {
    let token = token(&format!("bench-sub-{index}"), "none");
    let mut ws = open(port, &format!("/ws?token={token}")).await?;
    let hello = next_text(&mut ws).await?;
    if !hello.contains("system:connected") {
        return Err(format!("expected system:connected, got {hello}").into());
    }
    let request = format!(
        r#"{{"type":"inventory:subscribe","id":"s","data":{{"resources":["bench:item:{resource}"]}}}}"#
    );
    ws.send(Message::Text(request.into())).await?;
    let mut version = 0;
    loop {
        let text = next_text(&mut ws).await?;
        if text.contains(r#""type":"inventory:update""#) {
            version = version.max(u64_after(&text, r#""version":"#).unwrap_or(0));
        } else if text.contains(r#""original_id":"s""#) {
            if !text.contains(r#""status":"success""#) || version == 0 {
                return Err(format!("subscription refused: {text}").into());
            }
            return Ok((ws, version));
        }
    }
}

async fn subscriber(
    shared: Arc<Shared>,
    port: u16,
    index: usize,
    resource: usize,
    permit: OwnedSemaphorePermit,
) {
    let result = subscribe(port, index, resource).await;
    drop(permit);
    let conn = Arc::new(Conn::default());
    let mut ws = match result {
        Ok((ws, version)) => {
            conn.last.store(version, Relaxed);
            shared.conns.lock().expect("conns").push(conn.clone());
            shared.subscribed.fetch_add(1, Relaxed);
            ws
        }
        Err(e) => {
            if shared.failed.fetch_add(1, Relaxed) < 5 {
                eprintln!("loadgen: subscriber {index} failed: {e}");
            }
            return;
        }
    };
    let shard = shared.next_shard.fetch_add(1, Relaxed) % SHARDS;
    let why = loop {
        let message = ws.next().await;
        let on_text = |text: &str| shared.on_text(&conn, shard, text);
        if let Err(why) = on_message(&mut ws, message, on_text).await {
            break why;
        }
    };
    if shared.closed.fetch_add(1, Relaxed) < 5 {
        eprintln!("loadgen: subscriber {index} lost its connection: {why}");
    }
}

fn report(shared: &Shared) {
    let all = Histogram::default();
    for h in &shared.latency {
        all.merge(h);
    }
    let (mut gaps, mut disorder) = (0, 0);
    for conn in shared.conns.lock().expect("conns").iter() {
        gaps += conn.gaps.load(Relaxed);
        disorder += conn.disorder.load(Relaxed);
    }
    println!(
        "REPORT received={} {} gaps={gaps} disorder={disorder} closed={} errors={} unparsed={}",
        all.count(),
        quantiles(&all),
        shared.closed.load(Relaxed),
        shared.errors.load(Relaxed),
        shared.unparsed.load(Relaxed),
    );
}

async fn run(port: u16, resources: usize, subs: usize) -> Result<(), BoxError> {
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let total = resources * subs;
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for index in 0..total {
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(subscriber(
            shared.clone(),
            port,
            index,
            index % resources,
            permit,
        ));
    }
    while shared.subscribed.load(Relaxed) + shared.failed.load(Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "READY subscribed={} failed={} connect_secs={:.1}",
        shared.subscribed.load(Relaxed),
        shared.failed.load(Relaxed),
        started.elapsed().as_secs_f64()
    );
    let mut commands = stdin_commands();
    while let Some(line) = commands.recv().await {
        match line.trim() {
            "STATUS" => println!(
                "STATUS received={} closed={} errors={}",
                shared.received(),
                shared.closed.load(Relaxed),
                shared.errors.load(Relaxed)
            ),
            "REPORT" => report(&shared),
            "QUIT" | "" => break,
            other => eprintln!("loadgen: unknown command {other:?}"),
        }
    }
    Ok(())
}

/// Entry point of the `--loadgen` process: `--loadgen PORT RESOURCES SUBS`; never returns.
pub(crate) fn main(args: &[String]) -> ! {
    let (port, resources, subs) = from_positional_args(args, "--loadgen PORT RESOURCES SUBS");
    run_process(run(port, resources, subs))
}
