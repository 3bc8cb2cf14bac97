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

use super::common::loadgen::{open, Ws};
use super::common::{token, u64_after, unix_nanos, BoxError, Histogram};

/// Handshakes in flight while connecting.
const CONNECT_CONCURRENCY: usize = 256;
/// Histograms; each worker thread records into one of them.
const SHARDS: usize = 4;

/// The arguments that start the load generator.
pub(crate) fn args(port: u16, resources: usize, subs: usize) -> Vec<String> {
    [
        "--loadgen".to_owned(),
        port.to_string(),
        resources.to_string(),
        subs.to_string(),
    ]
    .to_vec()
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
        } else if text.contains(r#""type":"ping""#) {
            return Some(r#"{"type":"pong"}"#);
        } else if (text.contains(r#""type":"error""#) || text.contains(r#""status":"error""#))
            && self.errors.fetch_add(1, Relaxed) < 5
        {
            eprintln!("loadgen: error frame {text}");
        }
        None
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, BoxError> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .map_err(|_| "no frame within 60 s")?;
        match message {
            Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
            Some(Ok(Message::Close(frame))) => {
                return Err(format!("closed by the server: {frame:?}").into())
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err("the connection ended".into()),
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
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                if let Some(reply) = shared.on_text(&conn, shard, &text) {
                    if let Err(e) = ws.send(Message::Text(reply.into())).await {
                        break e.to_string();
                    }
                }
            }
            Some(Ok(Message::Close(frame))) => break format!("closed by the server: {frame:?}"),
            Some(Ok(_)) => {}
            Some(Err(e)) => break e.to_string(),
            None => break "the connection ended".to_owned(),
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
        "REPORT received={} p50_us={:.0} p90_us={:.0} p99_us={:.0} p999_us={:.0} max_us={} \
         gaps={gaps} disorder={disorder} closed={} errors={} unparsed={}",
        all.count(),
        all.quantile(0.5),
        all.quantile(0.9),
        all.quantile(0.99),
        all.quantile(0.999),
        all.max_micros(),
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
    // Commands come from stdin, read on a plain thread.
    let (command_tx, mut commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if command_tx.send(line).is_err() {
                break;
            }
        }
    });
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
    let at = args.iter().position(|a| a == "--loadgen").unwrap_or(0);
    let number = |i: usize| args.get(at + i).and_then(|a| a.parse::<usize>().ok());
    let (Some(port), Some(resources), Some(subs)) = (number(1), number(2), number(3)) else {
        eprintln!("loadgen: usage: --loadgen PORT RESOURCES SUBS");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        match run(port as u16, resources, subs).await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadgen: {e}");
                1
            }
        }
    });
    std::process::exit(code)
}
