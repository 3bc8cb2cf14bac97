//! The load generator: a separate process (the bench binary re-executed with `--loadgen`) that
//! opens `rooms × subs` WebSocket subscribers, and for fan-out one publisher per room, against
//! our server or a Socket.IO 4 server, or `rooms × subs` users subscribed to their own
//! notifications, then follows orders read line by line on stdin and answers on stdout:
//!
//! - `READY joined=… failed=… publishers=… connect_secs=…` once everyone has joined;
//! - `STATUS` → `STATUS received=… closed=… errors=…` (deliveries of step 0, the e2e and notify
//!   runs);
//! - `REPORT` → `REPORT received=… p50_us=… …` for step 0, with per-connection seq checks;
//! - `STEP <index> <events/s> <secs>` → the publishers send for `secs` (`STEP_SENT`), then the
//!   tail is awaited and `STEP_DONE …` reports that step's deliveries, loss and latency;
//! - `QUIT`.
//!
//! It is built to cost little per delivery, so that on a 2-core machine it measures the server
//! and not itself: frames are never parsed into a JSON tree; only the few numbers needed are
//! picked out of the text (`"seq":`, and `"t":` / `"s":` / `"n":` inside the payload: send
//! time in Unix nanoseconds, step and per-room counter). Latencies go into lock-free
//! histograms, one set per worker thread.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::{token, u64_after, unix_nanos, BoxError, Histogram};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Ladder steps a run can have; the payload's `"s"` indexes per-step histograms.
pub(crate) const MAX_STEPS: usize = 24;
/// Histogram sets; each worker thread records into its own.
const SHARDS: usize = 4;
/// Handshakes in flight while connecting.
const CONNECT_CONCURRENCY: usize = 256;
/// The client read buffer: tungstenite zero-fills its whole read buffer before each read, so
/// its 128 KiB default would cost a 128 KiB memset per read syscall; 4 KiB still holds a
/// dozen frames.
const READ_BUFFER: usize = 4 * 1024;
/// After a step's publishers stop, how long late deliveries are awaited before they count as
/// lost.
const TAIL: Duration = Duration::from_secs(5);
/// About 100 bytes of padding in every event payload.
pub(crate) const PAD: &str = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrst";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// triptrip-realtime: `/ws`, `room:join`, `room:message` / `room:broadcast`.
    Ours,
    /// Socket.IO v5 over Engine.IO v4, websocket transport only.
    SocketIo,
    /// triptrip-realtime: `/ws`, `notification:subscribe`, `notification:new`; every
    /// subscriber is a user of its own ([`user_name`]), and "rooms" only number them.
    Notifications,
}

#[derive(Clone, Debug)]
pub(crate) struct Options {
    pub(crate) target: Target,
    pub(crate) port: u16,
    pub(crate) rooms: usize,
    pub(crate) subs: usize,
    /// One publishing connection per room (fan-out); without, only subscribers (e2e).
    pub(crate) publishers: bool,
}

impl Options {
    pub(crate) fn to_args(&self) -> Vec<String> {
        let target = match self.target {
            Target::Ours => "ours",
            Target::SocketIo => "socketio",
            Target::Notifications => "notifications",
        };
        [
            "--loadgen",
            "--target",
            target,
            "--port",
            &self.port.to_string(),
            "--rooms",
            &self.rooms.to_string(),
            "--subs",
            &self.subs.to_string(),
            "--publishers",
            if self.publishers { "1" } else { "0" },
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    fn from_args(args: &[String]) -> Result<Options, String> {
        let value = |name: &str| -> Result<&str, String> {
            let at = args
                .iter()
                .position(|a| a == name)
                .ok_or_else(|| format!("missing {name}"))?;
            args.get(at + 1)
                .map(String::as_str)
                .ok_or_else(|| format!("missing value of {name}"))
        };
        let number = |name: &str| -> Result<usize, String> {
            value(name)?.parse().map_err(|e| format!("{name}: {e}"))
        };
        Ok(Options {
            target: match value("--target")? {
                "ours" => Target::Ours,
                "socketio" => Target::SocketIo,
                "notifications" => Target::Notifications,
                other => return Err(format!("unknown target {other}")),
            },
            port: number("--port")? as u16,
            rooms: number("--rooms")?,
            subs: number("--subs")?,
            publishers: number("--publishers")? != 0,
        })
    }
}

pub(crate) fn room_name(room: usize) -> String {
    format!("bench-{room}")
}

/// The user (token `sub`) of subscriber `index`.
pub(crate) fn user_name(index: usize) -> String {
    format!("bench-user-{index}")
}

/// Entry point of the `--loadgen` process; never returns.
pub(crate) fn main(args: &[String]) -> ! {
    let options = Options::from_args(args).unwrap_or_else(|e| {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    });
    run_process(run(options))
}

/// Runs a load generator's `run` on a multi-threaded runtime and exits: 0 when it returns
/// `Ok`, 1 when it fails. The sockets are simply dropped with the process.
pub(crate) fn run_process(run: impl Future<Output = Result<(), BoxError>>) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async move {
        match run.await {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("loadgen: {e}");
                1
            }
        }
    });
    std::process::exit(code)
}

/// The arguments `--loadgen PORT A B` that start a load generator of two numbers.
pub(crate) fn positional_args(port: u16, a: usize, b: usize) -> Vec<String> {
    [
        "--loadgen".to_owned(),
        port.to_string(),
        a.to_string(),
        b.to_string(),
    ]
    .to_vec()
}

/// The port and the two numbers of [`positional_args`]; exits 2 with `usage` when they are
/// not there.
pub(crate) fn from_positional_args(args: &[String], usage: &str) -> (u16, usize, usize) {
    let at = args.iter().position(|a| a == "--loadgen").unwrap_or(0);
    let number = |i: usize| args.get(at + i).and_then(|a| a.parse::<usize>().ok());
    let (Some(port), Some(a), Some(b)) = (number(1), number(2), number(3)) else {
        eprintln!("loadgen: usage: {usage}");
        std::process::exit(2);
    };
    (port as u16, a, b)
}

/// The orchestrator's commands, one line each, read from stdin on a plain thread (tokio's
/// stdin needs a feature this workspace does not enable).
pub(crate) fn stdin_commands() -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (command_tx, commands) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if command_tx.send(line).is_err() {
                break;
            }
        }
    });
    commands
}

/// What every client does with a frame that carries no event: a reply to the server's ping,
/// or an error frame counted in `errors` (the first five printed).
pub(crate) fn control_frame(text: &str, errors: &AtomicU64) -> Option<&'static str> {
    if text.contains(r#""type":"ping""#) {
        return Some(r#"{"type":"pong"}"#);
    }
    if (text.contains(r#""type":"error""#) || text.contains(r#""status":"error""#))
        && errors.fetch_add(1, Relaxed) < 5
    {
        eprintln!("loadgen: error frame {text}");
    }
    None
}

// ---------------------------------------------------------------------------------------------
// Shared counters
// ---------------------------------------------------------------------------------------------

struct Shard {
    steps: Vec<Histogram>,
    first_ns: AtomicU64,
    last_ns: AtomicU64,
}

/// One subscriber's view of its room's sequence (the `seq` of `room:message`, or the
/// publisher's per-room counter `n` in fan-out payloads). Written only by its own task.
struct Conn {
    room: usize,
    last: AtomicU64,
    received: AtomicU64,
    /// Numbers skipped (events this connection never got).
    gaps: AtomicU64,
    /// Numbers at or below the last one seen (duplicates or reordering).
    disorder: AtomicU64,
}

impl Conn {
    fn new(room: usize) -> Conn {
        Conn {
            room,
            last: AtomicU64::new(0),
            received: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            disorder: AtomicU64::new(0),
        }
    }

    #[inline]
    fn see(&self, n: u64) {
        self.received.fetch_add(1, Relaxed);
        let last = self.last.load(Relaxed);
        if n == last + 1 {
            self.last.store(n, Relaxed);
        } else if n > last {
            self.gaps.fetch_add(n - last - 1, Relaxed);
            self.last.store(n, Relaxed);
        } else {
            self.disorder.fetch_add(1, Relaxed);
        }
    }
}

struct Shared {
    target: Target,
    rooms: usize,
    subs: usize,
    shards: Vec<Shard>,
    conns: Mutex<Vec<Arc<Conn>>>,
    joined: AtomicUsize,
    failed: AtomicUsize,
    publishers_ready: AtomicUsize,
    publishers_gone: AtomicUsize,
    /// Subscriber connections that ended while the run was on.
    closed: AtomicU64,
    /// Error frames received (refused publishes, slow-consumer notices, …).
    errors: AtomicU64,
    /// Event frames whose numbers could not be read.
    unparsed: AtomicU64,
    sent: Vec<AtomicU64>,
    step_done: Vec<AtomicUsize>,
    /// Worst latency (µs) per second of the current step, by delivery time since its start.
    timeline: Vec<AtomicU64>,
    timeline_start_ns: AtomicU64,
}

/// Seconds of per-step timeline kept.
const TIMELINE_SECS: usize = 120;

thread_local! {
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

fn shard_index() -> usize {
    SHARD.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
            s.set(i);
        }
        i
    })
}

impl Shared {
    fn new(options: &Options) -> Shared {
        Shared {
            target: options.target,
            rooms: options.rooms,
            subs: options.subs,
            shards: (0..SHARDS)
                .map(|_| Shard {
                    steps: (0..MAX_STEPS).map(|_| Histogram::default()).collect(),
                    first_ns: AtomicU64::new(u64::MAX),
                    last_ns: AtomicU64::new(0),
                })
                .collect(),
            conns: Mutex::new(Vec::with_capacity(options.rooms * options.subs)),
            joined: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            publishers_ready: AtomicUsize::new(0),
            publishers_gone: AtomicUsize::new(0),
            closed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            unparsed: AtomicU64::new(0),
            sent: (0..MAX_STEPS).map(|_| AtomicU64::new(0)).collect(),
            step_done: (0..MAX_STEPS).map(|_| AtomicUsize::new(0)).collect(),
            timeline: (0..TIMELINE_SECS).map(|_| AtomicU64::new(0)).collect(),
            timeline_start_ns: AtomicU64::new(0),
        }
    }

    #[inline]
    fn record(&self, step: u64, sent_ns: u64) {
        let Some(step) = usize::try_from(step).ok().filter(|&s| s < MAX_STEPS) else {
            self.unparsed.fetch_add(1, Relaxed);
            return;
        };
        let now = unix_nanos();
        let shard = &self.shards[shard_index()];
        let micros = now.saturating_sub(sent_ns) / 1_000;
        shard.steps[step].record(micros);
        let second = now.saturating_sub(self.timeline_start_ns.load(Relaxed)) / 1_000_000_000;
        if let Some(worst) = self.timeline.get(second as usize) {
            if micros > worst.load(Relaxed) {
                worst.fetch_max(micros, Relaxed);
            }
        }
        if now < shard.first_ns.load(Relaxed) {
            shard.first_ns.fetch_min(now, Relaxed);
        }
        shard.last_ns.fetch_max(now, Relaxed);
    }

    fn received(&self, step: usize) -> u64 {
        self.shards.iter().map(|s| s.steps[step].count()).sum()
    }

    fn merged(&self, step: usize) -> Histogram {
        let all = Histogram::default();
        for shard in &self.shards {
            all.merge(&shard.steps[step]);
        }
        all
    }

    /// Handles one text frame; returns the reply to send, if any.
    #[inline]
    fn on_text(&self, conn: &Conn, text: &str) -> Option<&'static str> {
        match self.target {
            Target::Ours => {
                if text.starts_with(r#"{"type":"room:message""#) {
                    self.on_sequenced(conn, text);
                } else if text.starts_with(r#"{"type":"room:broadcast""#) {
                    match text.find(r#""payload":"#) {
                        Some(p) => self.on_event(conn, &text[p..]),
                        None => self.bad_frame(text),
                    }
                } else if text.ends_with(r#""type":"ping"}"#) {
                    return Some(r#"{"type":"pong"}"#);
                } else if text.contains(r#""type":"error""#) || text.contains(r#""status":"error""#)
                {
                    self.error_frame(text);
                }
            }
            Target::Notifications => {
                if text.starts_with(r#"{"type":"notification:new""#) {
                    self.on_sequenced(conn, text);
                } else if text.ends_with(r#""type":"ping"}"#) {
                    return Some(r#"{"type":"pong"}"#);
                } else if text.contains(r#""type":"error""#) || text.contains(r#""status":"error""#)
                {
                    self.error_frame(text);
                }
            }
            Target::SocketIo => {
                if let Some(payload) = text.strip_prefix(r#"42["msg","#) {
                    self.on_event(conn, payload);
                } else if text == "2" {
                    // Engine.IO ping: answer pong.
                    return Some("3");
                } else if text.starts_with("44") || text.starts_with('1') {
                    self.error_frame(text);
                }
            }
        }
        None
    }

    /// A `room:message` or `notification:new`: the envelope's seq comes first; the send time is
    /// the payload's "t".
    #[inline]
    fn on_sequenced(&self, conn: &Conn, text: &str) {
        let seq = u64_after(text, r#""seq":"#);
        let sent = text
            .find(r#""payload":"#)
            .and_then(|p| u64_after(&text[p..], r#""t":"#));
        match (seq, sent) {
            (Some(seq), Some(sent)) => {
                self.record(0, sent);
                conn.see(seq);
            }
            _ => self.bad_frame(text),
        }
    }

    /// A fan-out event payload `{"t":…,"s":…,"n":…,"pad":…}`.
    #[inline]
    fn on_event(&self, conn: &Conn, payload: &str) {
        let Some(t_at) = payload.find(r#""t":"#) else {
            return self.bad_frame(payload);
        };
        let rest = &payload[t_at..];
        match (
            u64_after(rest, r#""t":"#),
            u64_after(rest, r#""s":"#),
            u64_after(rest, r#""n":"#),
        ) {
            (Some(sent), Some(step), Some(n)) => {
                self.record(step, sent);
                conn.see(n);
            }
            _ => self.bad_frame(payload),
        }
    }

    fn bad_frame(&self, text: &str) {
        if self.unparsed.fetch_add(1, Relaxed) < 3 {
            eprintln!("loadgen: cannot read frame {}", clip(text));
        }
    }

    fn error_frame(&self, text: &str) {
        if self.errors.fetch_add(1, Relaxed) < 5 {
            eprintln!("loadgen: error frame {}", clip(text));
        }
    }

    fn first_last_ns(&self) -> (u64, u64) {
        let first = self
            .shards
            .iter()
            .map(|s| s.first_ns.load(Relaxed))
            .min()
            .unwrap_or(0);
        let last = self
            .shards
            .iter()
            .map(|s| s.last_ns.load(Relaxed))
            .max()
            .unwrap_or(0);
        (if first == u64::MAX { 0 } else { first }, last)
    }
}

fn clip(text: &str) -> &str {
    let mut end = text.len().min(300);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// A client WebSocket to 127.0.0.1:`port` at `path`, with a small read buffer.
pub(crate) async fn open(port: u16, path: &str) -> Result<Ws, BoxError> {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true).await?;
    Ok(ws)
}

/// The next text frame, within 60 s; other frames are passed over.
pub(crate) async fn next_text(ws: &mut Ws) -> Result<String, BoxError> {
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

async fn send(ws: &mut Ws, text: String) -> Result<(), BoxError> {
    ws.send(Message::Text(text.into())).await?;
    Ok(())
}

/// Connects, authenticates and joins `room` (or, for [`Target::Notifications`], subscribes to
/// `user`'s notifications); returns the socket and the room's (feed's) seq at the join.
async fn handshake(
    target: Target,
    port: u16,
    user: &str,
    room: usize,
) -> Result<(Ws, u64), BoxError> {
    let name = room_name(room);
    match target {
        Target::Ours | Target::Notifications => {
            let token = token(user, &name);
            let mut ws = open(port, &format!("/ws?token={token}")).await?;
            let hello = next_text(&mut ws).await?;
            if !hello.contains("system:connected") {
                return Err(format!("expected system:connected, got {}", clip(&hello)).into());
            }
            let join = if target == Target::Notifications {
                r#"{"type":"notification:subscribe","id":"j","data":{}}"#.to_owned()
            } else {
                format!(r#"{{"type":"room:join","id":"j","data":{{"room":"{name}"}}}}"#)
            };
            send(&mut ws, join).await?;
            loop {
                let text = next_text(&mut ws).await?;
                if text.contains(r#""original_id":"j""#) {
                    let ack: serde_json::Value = serde_json::from_str(&text)?;
                    if ack["data"]["status"] != "success" {
                        return Err(format!("join refused: {}", clip(&text)).into());
                    }
                    let seq = ack["data"]["result"]["seq"].as_u64().unwrap_or(0);
                    return Ok((ws, seq));
                }
            }
        }
        Target::SocketIo => {
            let mut ws = open(port, "/socket.io/?EIO=4&transport=websocket").await?;
            let opened = next_text(&mut ws).await?;
            if !opened.starts_with('0') {
                return Err(
                    format!("expected an Engine.IO open packet, got {}", clip(&opened)).into(),
                );
            }
            send(&mut ws, "40".into()).await?;
            loop {
                let text = next_text(&mut ws).await?;
                if text.starts_with("40") {
                    break;
                }
                if text.starts_with("44") {
                    return Err(format!("namespace connect refused: {}", clip(&text)).into());
                }
            }
            // Join with an acknowledgement (id 0), so we know the room has us.
            send(&mut ws, format!(r#"420["join","{name}"]"#)).await?;
            loop {
                let text = next_text(&mut ws).await?;
                if text.starts_with("430") {
                    return Ok((ws, 0));
                }
                if text == "2" {
                    send(&mut ws, "3".into()).await?;
                }
            }
        }
    }
}

async fn subscriber(
    shared: Arc<Shared>,
    port: u16,
    index: usize,
    room: usize,
    permit: OwnedSemaphorePermit,
) {
    let conn = Arc::new(Conn::new(room));
    let result = handshake(shared.target, port, &user_name(index), room).await;
    drop(permit);
    let mut ws = match result {
        Ok((ws, seq)) => {
            conn.last.store(seq, Relaxed);
            shared.conns.lock().expect("conns").push(conn.clone());
            shared.joined.fetch_add(1, Relaxed);
            ws
        }
        Err(e) => {
            if shared.failed.fetch_add(1, Relaxed) < 5 {
                eprintln!("loadgen: subscriber {index} could not join: {e}");
            }
            return;
        }
    };
    let why = loop {
        let message = ws.next().await;
        if let Err(why) = on_message(&mut ws, message, |text| shared.on_text(&conn, text)).await {
            break why;
        }
    };
    if shared.closed.fetch_add(1, Relaxed) < 5 {
        eprintln!("loadgen: subscriber {index} lost its connection: {why}");
    }
}

/// One publisher step: a global rate `rate` over all rooms, this room's events spread evenly
/// and offset from the other rooms'.
#[derive(Clone, Copy, Debug)]
struct Step {
    index: usize,
    rate: f64,
    secs: f64,
    start: Instant,
}

fn event_frame(target: Target, room: usize, step: usize, n: u64) -> String {
    let t = unix_nanos();
    let name = room_name(room);
    match target {
        Target::Ours | Target::Notifications => format!(
            r#"{{"type":"room:broadcast","data":{{"room":"{name}","event":"bench","payload":{{"t":{t},"s":{step},"n":{n},"pad":"{PAD}"}}}}}}"#
        ),
        Target::SocketIo => {
            format!(r#"42["pub","{name}",{{"t":{t},"s":{step},"n":{n},"pad":"{PAD}"}}]"#)
        }
    }
}

async fn publisher(
    shared: Arc<Shared>,
    port: u16,
    room: usize,
    mut steps: watch::Receiver<Option<Step>>,
) {
    let user = format!("bench-publisher-{room}");
    let mut ws = match handshake(shared.target, port, &user, room).await {
        Ok((ws, _)) => ws,
        Err(e) => {
            eprintln!(
                "loadgen: publisher of {} could not join: {e}",
                room_name(room)
            );
            shared.publishers_gone.fetch_add(1, Relaxed);
            return;
        }
    };
    shared.publishers_ready.fetch_add(1, Relaxed);
    // Frames to the publisher are only heartbeats and errors.
    let scratch = Conn::new(room);
    let mut n = 0u64;
    let why = 'outer: loop {
        tokio::select! {
            changed = steps.changed() => {
                if changed.is_err() {
                    break "stopped".to_owned();
                }
                let Some(step) = *steps.borrow_and_update() else { continue };
                let period = shared.rooms as f64 / step.rate;
                let offset = room as f64 / step.rate;
                let end = step.start + Duration::from_secs_f64(step.secs);
                let mut j = 0u64;
                loop {
                    let at = step.start + Duration::from_secs_f64(offset + j as f64 * period);
                    if at >= end {
                        break;
                    }
                    tokio::select! {
                        biased;
                        message = ws.next() => {
                            if let Err(why) = on_message(&mut ws, message, |text| shared.on_text(&scratch, text)).await {
                                shared.step_done[step.index].fetch_add(1, Relaxed);
                                break 'outer why;
                            }
                        }
                        () = tokio::time::sleep_until(at) => {
                            n += 1;
                            let frame = event_frame(shared.target, room, step.index, n);
                            if let Err(e) = send(&mut ws, frame).await {
                                shared.step_done[step.index].fetch_add(1, Relaxed);
                                break 'outer e.to_string();
                            }
                            shared.sent[step.index].fetch_add(1, Relaxed);
                            j += 1;
                        }
                    }
                }
                shared.step_done[step.index].fetch_add(1, Relaxed);
            }
            message = ws.next() => {
                if let Err(why) = on_message(&mut ws, message, |text| shared.on_text(&scratch, text)).await {
                    break why;
                }
            }
        }
    };
    shared.publishers_gone.fetch_add(1, Relaxed);
    if why != "stopped" {
        eprintln!("loadgen: publisher of {} stopped: {why}", room_name(room));
    }
}

/// Handles one read from a client's socket: answers a text frame as `on_text` says; the reason
/// when the connection is over.
#[inline]
pub(crate) async fn on_message(
    ws: &mut Ws,
    message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    on_text: impl FnOnce(&str) -> Option<&'static str>,
) -> Result<(), String> {
    match message {
        Some(Ok(Message::Text(text))) => {
            if let Some(reply) = on_text(&text) {
                ws.send(Message::Text(reply.into()))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        Some(Ok(Message::Close(frame))) => Err(format!("closed by the server: {frame:?}")),
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("the connection ended".to_owned()),
    }
}

// ---------------------------------------------------------------------------------------------
// The command loop
// ---------------------------------------------------------------------------------------------

async fn run(options: Options) -> Result<(), BoxError> {
    if options.publishers && options.target == Target::Notifications {
        return Err("notification subscribers have no publishers".into());
    }
    let shared = Arc::new(Shared::new(&options));
    let started = Instant::now();
    let total = options.rooms * options.subs;
    let gate = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
    for index in 0..total {
        let permit = gate.clone().acquire_owned().await?;
        tokio::spawn(subscriber(
            shared.clone(),
            options.port,
            index,
            index % options.rooms,
            permit,
        ));
    }
    while shared.joined.load(Relaxed) + shared.failed.load(Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (step_tx, step_rx) = watch::channel(None::<Step>);
    if options.publishers {
        for room in 0..options.rooms {
            tokio::spawn(publisher(
                shared.clone(),
                options.port,
                room,
                step_rx.clone(),
            ));
        }
        while shared.publishers_ready.load(Relaxed) + shared.publishers_gone.load(Relaxed)
            < options.rooms
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "READY joined={} failed={} publishers={} connect_secs={:.1}",
        shared.joined.load(Relaxed),
        shared.failed.load(Relaxed),
        shared.publishers_ready.load(Relaxed),
        started.elapsed().as_secs_f64()
    );

    let mut commands = stdin_commands();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["STATUS"] => println!(
                "STATUS received={} closed={} errors={}",
                shared.received(0),
                shared.closed.load(Relaxed),
                shared.errors.load(Relaxed)
            ),
            ["REPORT"] => report(&shared),
            ["STEP", index, rate, secs] => {
                let index: usize = index.parse()?;
                if index >= MAX_STEPS {
                    return Err(format!("step {index} is past the last one ({MAX_STEPS})").into());
                }
                step(&shared, &step_tx, index, rate.parse()?, secs.parse()?).await;
            }
            ["QUIT"] | [] => break,
            _ => eprintln!("loadgen: unknown command {line:?}"),
        }
    }
    Ok(())
}

/// `p50_us=… p90_us=… p99_us=… p999_us=… max_us=…` of `h`.
pub(crate) fn quantiles(h: &Histogram) -> String {
    format!(
        "p50_us={:.0} p90_us={:.0} p99_us={:.0} p999_us={:.0} max_us={}",
        h.quantile(0.5),
        h.quantile(0.9),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max_micros()
    )
}

/// Per-connection checks: the sum of skipped numbers, of duplicates, and how far connections
/// are behind the furthest connection of their room.
fn sequence_checks(shared: &Shared) -> String {
    let conns = shared.conns.lock().expect("conns");
    let mut top = vec![0u64; shared.rooms];
    for c in conns.iter() {
        top[c.room] = top[c.room].max(c.last.load(Relaxed));
    }
    let (mut gaps, mut disorder, mut behind_conns, mut behind_events) = (0, 0, 0, 0);
    for c in conns.iter() {
        gaps += c.gaps.load(Relaxed);
        disorder += c.disorder.load(Relaxed);
        let behind = top[c.room] - c.last.load(Relaxed);
        if behind > 0 {
            behind_conns += 1;
            behind_events += behind;
        }
    }
    format!(
        "gaps={gaps} disorder={disorder} behind_conns={behind_conns} behind_events={behind_events}"
    )
}

fn report(shared: &Shared) {
    let h = shared.merged(0);
    let (first, last) = shared.first_last_ns();
    println!(
        "REPORT received={} {} first_ns={first} last_ns={last} {} closed={} errors={} unparsed={}",
        h.count(),
        quantiles(&h),
        sequence_checks(shared),
        shared.closed.load(Relaxed),
        shared.errors.load(Relaxed),
        shared.unparsed.load(Relaxed),
    );
}

async fn step(
    shared: &Shared,
    steps: &watch::Sender<Option<Step>>,
    index: usize,
    rate: f64,
    secs: f64,
) {
    let start = Instant::now() + Duration::from_millis(50);
    for worst in &shared.timeline {
        worst.store(0, Relaxed);
    }
    shared
        .timeline_start_ns
        .store(unix_nanos() + 50_000_000, Relaxed);
    let closed_before = shared.closed.load(Relaxed);
    let errors_before = shared.errors.load(Relaxed);
    let _ = steps.send(Some(Step {
        index,
        rate,
        secs,
        start,
    }));
    let deadline = start + Duration::from_secs_f64(secs) + Duration::from_secs(30);
    while shared.step_done[index].load(Relaxed) + shared.publishers_gone.load(Relaxed)
        < shared.rooms
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let sent = shared.sent[index].load(Relaxed);
    println!("STEP_SENT index={index} sent={sent} send_secs={send_secs:.2}");
    let expected = sent * shared.subs as u64;
    let tail_end = Instant::now() + TAIL;
    while shared.received(index) < expected && Instant::now() < tail_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let h = shared.merged(index);
    let received = h.count();
    let seconds = (send_secs.ceil() as usize + 1).min(TIMELINE_SECS);
    let timeline: Vec<String> = shared.timeline[..seconds]
        .iter()
        .map(|w| format!("{:.0}", w.load(Relaxed) as f64 / 1000.0))
        .collect();
    println!(
        "STEP_DONE index={index} rate={rate} sent={sent} sent_per_s={:.0} expected={expected} received={received} lost={} {} {} closed={} errors={} unparsed={} worst_ms_per_s={}",
        sent as f64 / secs,
        expected.saturating_sub(received),
        quantiles(&h),
        sequence_checks(shared),
        shared.closed.load(Relaxed) - closed_before,
        shared.errors.load(Relaxed) - errors_before,
        shared.unparsed.load(Relaxed),
        timeline.join(","),
    );
}
