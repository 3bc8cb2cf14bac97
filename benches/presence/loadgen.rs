//! The presence load generator: a separate process (the bench binary re-executed with
//! `--loadgen`) that connects `users` WebSocket clients, one per user (`bench-user-<i>`), each
//! sending `presence:subscribe`, then follows orders read line by line on stdin and answers on
//! stdout:
//!
//! - `READY subscribed=… failed=… watched=… connect_secs=…` once everyone is subscribed;
//! - `RUN <changes/s> <reconnects/s> <activity period s> <secs>`: for `secs`, users toggle
//!   between `dnd` and `online` (`presence:set`) at the given rate, in an order that spreads
//!   them over the rooms (a user changes again only after every other one did), some clients
//!   drop their connection and reconnect at once (within the grace: nobody should see it), and
//!   every client sends `presence:activity` once per period; then the tail is awaited and
//!   `DONE changes=… reconnects=… expected=… received=… p50_us=… … unexpected=…` answers;
//! - `QUIT`.
//!
//! A change's latency is from just before its client sends `presence:set` to each peer's
//! `presence:update` carrying the new status (one clock: the same process). Frames are never
//! parsed into a JSON tree; only the user number and the status are picked out.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use super::common::loadgen::{
    control_frame, from_positional_args, next_text, on_message, open, positional_args, quantiles,
    run_process, stdin_commands, Ws,
};
use super::common::{token, u64_after, unix_nanos, BoxError, Histogram};

/// Handshakes in flight while connecting.
const CONNECT_CONCURRENCY: usize = 256;
/// After the changes stop, how long late updates are awaited.
const TAIL: Duration = Duration::from_secs(5);
/// A stride coprime with the user count spreads consecutive changes over the rooms.
const STRIDE: usize = 7_919;

const DND: u8 = 1;
const ONLINE: u8 = 2;

/// The arguments that start the load generator.
pub(crate) fn args(port: u16, users: usize, rooms: usize) -> Vec<String> {
    positional_args(port, users, rooms)
}

/// The user (token `sub`) of client `index`.
pub(crate) fn user_name(index: usize) -> String {
    format!("bench-user-{index}")
}

/// What a client task is told to do.
enum Order {
    /// Send `presence:set` with this status.
    Set(u8),
    /// Drop the connection and connect again at once.
    Reconnect,
}

struct Shared {
    latency: Histogram,
    /// Per user: when its last change was sent (Unix ns; 0 before the first) and the status
    /// it changed to.
    sent_ns: Vec<AtomicU64>,
    status: Vec<AtomicU8>,
    orders: Mutex<Vec<Option<mpsc::UnboundedSender<Order>>>>,
    subscribed: AtomicUsize,
    failed: AtomicUsize,
    watched: AtomicU64,
    /// Updates that match no change of ours (a status we did not set, or too late).
    unexpected: AtomicU64,
    closed: AtomicU64,
    errors: AtomicU64,
    /// While true, clients send `presence:activity` once per `activity_ms`.
    running: AtomicBool,
    activity_ms: AtomicU64,
}

impl Shared {
    /// Handles one text frame; returns the reply to send, if any.
    fn on_text(&self, text: &str) -> Option<&'static str> {
        if text.contains(r#""type":"presence:update""#) {
            let user = u64_after(text, r#""user":"bench-user-"#)
                .and_then(|u| usize::try_from(u).ok())
                .filter(|&u| u < self.sent_ns.len());
            let status = if text.contains(r#""status":"dnd""#) {
                DND
            } else if text.contains(r#""status":"online""#) {
                ONLINE
            } else {
                0
            };
            let now = unix_nanos();
            match user {
                Some(u) if self.status[u].load(Relaxed) == status => {
                    let sent = self.sent_ns[u].load(Relaxed);
                    let micros = now.saturating_sub(sent) / 1_000;
                    if sent == 0 || micros > 30_000_000 {
                        self.unexpected.fetch_add(1, Relaxed);
                    } else {
                        self.latency.record(micros);
                    }
                }
                _ => {
                    if self.unexpected.fetch_add(1, Relaxed) < 3 {
                        eprintln!("loadgen: unexpected {text}");
                    }
                }
            }
            None
        } else {
            control_frame(text, &self.errors)
        }
    }
}

/// Connects as user `index` and subscribes to presence; returns the socket and how many
/// users the ack lists.
async fn connect(port: u16, index: usize, rooms: usize) -> Result<(Ws, u64), BoxError> {
    let user = user_name(index);
    let token = token(&user, &format!("bench-{}", index % rooms));
    let mut ws = open(port, &format!("/ws?token={token}")).await?;
    let hello = next_text(&mut ws).await?;
    if !hello.contains("system:connected") {
        return Err(format!("expected system:connected, got {hello}").into());
    }
    ws.send(Message::Text(
        r#"{"type":"presence:subscribe","id":"s","data":{"device":"loadgen"}}"#.into(),
    ))
    .await?;
    loop {
        let text = next_text(&mut ws).await?;
        if text.contains(r#""original_id":"s""#) {
            if !text.contains(r#""status":"success""#) {
                return Err(format!("presence:subscribe refused: {text}").into());
            }
            return Ok((ws, text.matches(r#""user":"#).count() as u64));
        }
    }
}

async fn client(
    shared: Arc<Shared>,
    port: u16,
    index: usize,
    rooms: usize,
    permit: OwnedSemaphorePermit,
) {
    let result = connect(port, index, rooms).await;
    drop(permit);
    let mut ws = match result {
        Ok((ws, watched)) => {
            shared.watched.fetch_add(watched, Relaxed);
            shared.subscribed.fetch_add(1, Relaxed);
            ws
        }
        Err(e) => {
            if shared.failed.fetch_add(1, Relaxed) < 5 {
                eprintln!("loadgen: client {index} could not subscribe: {e}");
            }
            return;
        }
    };
    let (tx, mut orders) = mpsc::unbounded_channel();
    shared.orders.lock().expect("orders")[index] = Some(tx);
    // Activity pings start at a random offset, so they spread over the period.
    let mut next_activity = tokio::time::Instant::now()
        + Duration::from_millis(rand::random_range(
            0..shared.activity_ms.load(Relaxed).max(1),
        ));
    let why = loop {
        tokio::select! {
            message = ws.next() => {
                if let Err(why) = on_message(&mut ws, message, |text| shared.on_text(text)).await {
                    break why;
                }
            }
            order = orders.recv() => match order {
                Some(Order::Set(status)) => {
                    let name = if status == DND { "dnd" } else { "online" };
                    shared.status[index].store(status, Relaxed);
                    shared.sent_ns[index].store(unix_nanos(), Relaxed);
                    let frame = format!(r#"{{"type":"presence:set","data":{{"status":"{name}"}}}}"#);
                    if let Err(e) = ws.send(Message::Text(frame.into())).await {
                        break e.to_string();
                    }
                }
                Some(Order::Reconnect) => {
                    let _ = ws.close(None).await;
                    match connect(port, index, rooms).await {
                        Ok((again, _)) => ws = again,
                        Err(e) => break format!("reconnecting: {e}"),
                    }
                }
                None => break "stopped".to_owned(),
            },
            () = tokio::time::sleep_until(next_activity) => {
                next_activity += Duration::from_millis(shared.activity_ms.load(Relaxed).max(1));
                if shared.running.load(Relaxed) {
                    if let Err(e) = ws.send(Message::Text(r#"{"type":"presence:activity"}"#.into())).await {
                        break e.to_string();
                    }
                }
            }
        }
    };
    if shared.closed.fetch_add(1, Relaxed) < 5 {
        eprintln!("loadgen: client {index} stopped: {why}");
    }
}

/// One `RUN`: changes and reconnects at their rates for `secs`, then the tail.
async fn run_load(shared: &Shared, changes_per_s: f64, reconnects_per_s: f64, secs: f64) {
    let users = shared.sent_ns.len();
    let received_before = shared.latency.count();
    let unexpected_before = shared.unexpected.load(Relaxed);
    let closed_before = shared.closed.load(Relaxed);
    let watched = shared.watched.load(Relaxed) as f64 / users as f64;
    shared.running.store(true, Relaxed);
    let start = tokio::time::Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let send = |index: usize, order: Order| {
        if let Some(tx) = &shared.orders.lock().expect("orders")[index] {
            let _ = tx.send(order);
        }
    };
    let (mut changes, mut reconnects) = (0usize, 0usize);
    let mut next = 0usize;
    loop {
        let change_at = start + Duration::from_secs_f64(changes as f64 / changes_per_s);
        let reconnect_at = if reconnects_per_s > 0.0 {
            start + Duration::from_secs_f64((reconnects as f64 + 0.5) / reconnects_per_s)
        } else {
            end
        };
        let at = change_at.min(reconnect_at);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at).await;
        if change_at <= reconnect_at {
            let user = next % users;
            next += STRIDE;
            let status = if shared.status[user].load(Relaxed) == DND {
                ONLINE
            } else {
                DND
            };
            send(user, Order::Set(status));
            changes += 1;
        } else {
            // A user that is not changing now: half a user count away from the next change.
            send((next + users / 2) % users, Order::Reconnect);
            reconnects += 1;
        }
    }
    shared.running.store(false, Relaxed);
    let expected = (changes as f64 * watched).round() as u64;
    let tail_end = tokio::time::Instant::now() + TAIL;
    while shared.latency.count() - received_before < expected
        && tokio::time::Instant::now() < tail_end
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = &shared.latency;
    println!(
        "DONE changes={changes} reconnects={reconnects} expected={expected} received={} {} \
         unexpected={} closed={} errors={}",
        h.count() - received_before,
        quantiles(h),
        shared.unexpected.load(Relaxed) - unexpected_before,
        shared.closed.load(Relaxed) - closed_before,
        shared.errors.load(Relaxed),
    );
}

async fn run(port: u16, users: usize, rooms: usize) -> Result<(), BoxError> {
    let shared = Arc::new(Shared {
        latency: Histogram::default(),
        sent_ns: (0..users).map(|_| AtomicU64::new(0)).collect(),
        status: (0..users).map(|_| AtomicU8::new(ONLINE)).collect(),
        orders: Mutex::new((0..users).map(|_| None).collect()),
        subscribed: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        watched: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        running: AtomicBool::new(false),
        activity_ms: AtomicU64::new(30_000),
    });
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for index in 0..users {
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(client(shared.clone(), port, index, rooms, permit));
    }
    while shared.subscribed.load(Relaxed) + shared.failed.load(Relaxed) < users {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "READY subscribed={} failed={} watched={} connect_secs={:.1}",
        shared.subscribed.load(Relaxed),
        shared.failed.load(Relaxed),
        shared.watched.load(Relaxed),
        started.elapsed().as_secs_f64()
    );
    let mut commands = stdin_commands();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["RUN", changes, reconnects, activity_s, secs] => {
                let activity_ms = (activity_s.parse::<f64>()? * 1000.0) as u64;
                shared.activity_ms.store(activity_ms.max(1), Relaxed);
                run_load(
                    &shared,
                    changes.parse()?,
                    reconnects.parse()?,
                    secs.parse()?,
                )
                .await;
            }
            ["QUIT"] | [] => break,
            _ => eprintln!("loadgen: unknown command {line:?}"),
        }
    }
    Ok(())
}

/// Entry point of the `--loadgen` process: `--loadgen PORT USERS ROOMS`; never returns.
pub(crate) fn main(args: &[String]) -> ! {
    let (port, users, rooms) = from_positional_args(args, "--loadgen PORT USERS ROOMS");
    run_process(run(port, users, rooms))
}
