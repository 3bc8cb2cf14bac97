//! `./bench.sh fanout`: in-memory fan-out of client-published events (no database on the
//! path), ours against Socket.IO 4.8, driven by the same load generator in the same run.
//!
//! For each server: a separate load-generator process (this binary re-executed with
//! `--loadgen`) opens 100 rooms × 100 subscribers = 10,000 WebSocket connections plus one
//! publishing connection per room. Ours: `room:broadcast`, relayed to the room's other
//! members (the sender's connection is excluded). Socket.IO (`bench/socketio/server.js`):
//! `socket.to(room).emit('msg', payload)`, which also excludes the sender; the load generator
//! speaks Engine.IO v4 / Socket.IO v5 over a raw WebSocket.
//!
//! A ladder of publish rates (events/s in total, spread evenly over the rooms), each step
//! `STEP_SECS` long. Every payload carries its send time (Unix ns), its step and a per-room
//! counter; every subscriber must receive every event of its room. After a step's publishers
//! stop, late deliveries are awaited up to 5 s, then the missing ones count as lost. A step
//! passes when its p99 latency is <= 50 ms, nothing is lost, no connection closed, and the
//! publishers kept up with the rate (>= 95 %). A failed step is run once more (the machine is
//! shared and one disturbed step should not decide); the ladder stops at a rate that fails
//! twice. Max = the highest passed rate × 100 subscribers, in deliveries/s.
//!
//! The last line is machine-readable:
//! `RESULT fanout ours_max_deliveries_per_s=… socketio_max_deliveries_per_s=… ratio=…`.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::loadgen::{self, Target};
use common::node::{node_version, package_version, start_node, NodeProc};
use common::{
    format_cpu, format_ladder, knob, list_knob, loadavg, num, print_machine, rss_kb, step_failures,
    BoxError, CpuWatch, LoadgenProc, ServerProc,
};
use pgcluster::Cluster;

const ROOMS: usize = 100;
const SUBS: usize = 100;
/// Publish rates in events/s over all rooms (× 100 subscribers = deliveries/s).
const LADDER: &[f64] = &[
    20.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0, 1500.0, 2000.0, 3000.0,
    4000.0, 6000.0, 8000.0,
];
const STEP_SECS: f64 = 8.0;

/// `FANOUT_LADDER=200,500` (events/s), `FANOUT_STEP_SECS=8` and `FANOUT_TARGETS=ours,socketio`
/// override the defaults, for exploring; the RESULT line is only meaningful with the defaults.
struct Plan {
    ladder: Vec<f64>,
    step_secs: f64,
    ours: bool,
    socketio: bool,
}

impl Plan {
    fn from_env() -> Result<Plan, BoxError> {
        let ladder = list_knob("FANOUT_LADDER", LADDER)?;
        if ladder.is_empty() || ladder.len() > loadgen::MAX_STEPS {
            return Err(format!("the ladder needs 1 to {} steps", loadgen::MAX_STEPS).into());
        }
        let step_secs = knob("FANOUT_STEP_SECS", STEP_SECS)?;
        let targets = std::env::var("FANOUT_TARGETS").unwrap_or_else(|_| "ours,socketio".into());
        Ok(Plan {
            ladder,
            step_secs,
            ours: targets.split(',').any(|t| t.trim() == "ours"),
            socketio: targets.split(',').any(|t| t.trim() == "socketio"),
        })
    }
}
const GOAL_P99_MS: f64 = 50.0;
const GOAL_RATIO: f64 = 10.0;

fn main() {
    common::bench_main("fanout", run);
}

async fn run() -> Result<(), BoxError> {
    let plan = Plan::from_env()?;
    println!(
        "fanout bench: {ROOMS} rooms x {SUBS} subscribers = {} WebSocket connections + {ROOMS} publishers; \
         ladder {} events/s, {:.0} s per step; pass = p99 <= {GOAL_P99_MS} ms, nothing lost",
        ROOMS * SUBS,
        format_ladder(&plan.ladder),
        plan.step_secs,
    );
    print_machine();

    let mut ours = 0.0;
    if plan.ours {
        // On a private cluster (joins read the room's seq; broadcasts never touch it).
        let cluster = tokio::task::spawn_blocking(Cluster::temporary).await??;
        let server = ServerProc::start(&cluster.url("postgres")).await?;
        println!(
            "\n== ours: triptrip-realtime (pid {}, 127.0.0.1:{})",
            server.pid(),
            server.port
        );
        ours = ladder(&plan, Target::Ours, server.port, server.pid()).await?;
        drop(server);
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
    }

    let mut theirs = 0.0;
    if plan.socketio {
        let node = NodeServer::start().await?;
        println!(
            "\n== Socket.IO {} on Node.js {} (pid {}, 127.0.0.1:{}, websocket transport only)",
            node.socket_io_version, node.node_version, node.pid, node.port
        );
        theirs = ladder(&plan, Target::SocketIo, node.port, node.pid).await?;
        drop(node);
    }

    let ratio = match (ours > 0.0, theirs > 0.0) {
        (_, true) => ours / theirs,
        (true, false) => f64::INFINITY,
        (false, false) => 0.0,
    };
    println!(
        "\nmax deliveries/s with p99 <= {GOAL_P99_MS} ms and nothing lost: ours {ours:.0}, Socket.IO {theirs:.0}, ratio {ratio:.2} \
         (goal >= {GOAL_RATIO}: {}); load average at end: {}",
        if ratio >= GOAL_RATIO { "met" } else { "MISSED" },
        loadavg()
    );
    println!(
        "RESULT fanout ours_max_deliveries_per_s={ours:.0} socketio_max_deliveries_per_s={theirs:.0} ratio={ratio:.2}"
    );
    Ok(())
}

/// Runs the ladder against one server; returns the highest passing rate in deliveries/s.
async fn ladder(plan: &Plan, target: Target, port: u16, server_pid: u32) -> Result<f64, BoxError> {
    let step_secs = plan.step_secs;
    let rss_before = rss_kb(server_pid);
    let mut lg = LoadgenProc::spawn(&loadgen::Options {
        target,
        port,
        rooms: ROOMS,
        subs: SUBS,
        publishers: true,
    })?;
    let ready = lg.expect("READY", Duration::from_secs(300)).await?;
    let joined = num(&ready, "joined") as usize;
    let publishers = num(&ready, "publishers") as usize;
    if joined != ROOMS * SUBS || publishers != ROOMS {
        return Err(format!(
            "only {joined} of {} subscribers and {publishers} of {ROOMS} publishers joined",
            ROOMS * SUBS
        )
        .into());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle = rss_kb(server_pid);
    println!(
        "{joined} subscribers + {publishers} publishers joined in {:.1} s (load generator pid {}); \
         server RSS {rss_before} KiB -> {rss_idle} KiB ({:.1} KiB per connection); load average {}",
        num(&ready, "connect_secs"),
        lg.pid(),
        rss_idle.saturating_sub(rss_before) as f64 / (joined + publishers) as f64,
        loadavg()
    );
    let watch = CpuWatch {
        procs: vec![
            ("server", server_pid, false),
            ("load generator", lg.pid(), false),
        ],
    };
    let mut best = 0.0;
    // A failed step is run once more (the machine is shared: one disturbed step should not end
    // the ladder); the ladder stops when a rate fails twice in a row.
    let mut index = 0;
    let mut rungs = plan.ladder.iter().peekable();
    let mut retried = false;
    while let Some(&&rate) = rungs.peek() {
        if index >= loadgen::MAX_STEPS {
            println!("  (no steps left in the load generator)");
            break;
        }
        lg.send(&format!("STEP {index} {rate} {step_secs}")).await?;
        index += 1;
        let cpu_start = watch.snapshot();
        lg.expect("STEP_SENT", Duration::from_secs_f64(step_secs + 60.0))
            .await?;
        let cpu_end = watch.snapshot();
        let done = lg.expect("STEP_DONE", Duration::from_secs(60)).await?;
        let cpu = watch.percent(&cpu_start, &cpu_end);
        let ms = |key: &str| num(&done, key) / 1000.0;
        let sent_per_s = num(&done, "sent_per_s");
        let p99 = ms("p99_us");
        let why = step_failures(&done, rate, GOAL_P99_MS, "publishers", "events/s");
        let server_us = cpu[0].1 / 100.0 * 1e6 / (sent_per_s * SUBS as f64).max(1.0);
        println!(
            "  {rate:>5.0} events/s ({:>7.0} deliveries/s): sent {:.0}/s, received {:.0}/{:.0}, \
             latency p50 {:.2} / p99 {:.2} / p99.9 {:.2} / max {:.1} ms; CPU {} (server {server_us:.1} us per delivery); \
             RSS {} KiB; {}",
            rate * SUBS as f64,
            sent_per_s,
            num(&done, "received"),
            num(&done, "expected"),
            ms("p50_us"),
            p99,
            ms("p999_us"),
            ms("max_us"),
            format_cpu(&cpu),
            rss_kb(server_pid),
            if why.is_empty() {
                "pass".to_owned()
            } else {
                format!("FAIL ({})", why.join(", "))
            },
        );
        if std::env::var_os("FANOUT_TIMELINE").is_some() {
            println!(
                "      worst latency per second (ms): {}",
                done.get("worst_ms_per_s").map_or("?", String::as_str)
            );
        }
        if !why.is_empty() {
            if retried {
                break;
            }
            retried = true;
            println!("  {rate:>5.0} events/s again (one retry per rate)");
            continue;
        }
        retried = false;
        best = rate * SUBS as f64;
        rungs.next();
    }
    lg.quit().await;
    Ok(best)
}

/// `node bench/socketio/server.js` on a free port, killed on drop.
struct NodeServer {
    _child: tokio::process::Child,
    pid: u32,
    port: u16,
    node_version: String,
    socket_io_version: String,
}

impl NodeServer {
    async fn start() -> Result<NodeServer, BoxError> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/socketio");
        let package = dir.join("node_modules/socket.io/package.json");
        let socket_io_version = package_version(&package).ok_or_else(|| {
            format!(
                "{} is missing: run `npm install --no-audit --no-fund` in {} (./bench.sh fanout does)",
                package.display(),
                dir.display()
            )
        })?;
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let node_version = node_version(&node).map_err(|e| format!("cannot run {node}: {e}"))?;
        let NodeProc {
            child,
            pid,
            port,
            mut lines,
        } = start_node(&node, &dir.join("server.js"), &[], "Socket.IO").await?;
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(NodeServer {
            _child: child,
            pid,
            port,
            node_version,
            socket_io_version,
        })
    }
}
