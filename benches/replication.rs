//! `./bench.sh replication`: the same logical replication workload streamed through our
//! `replication` crate (decoded to rows, no output) and through `pg_recvlogical` (written to a
//! file), in one run on one private cluster.
//!
//! Method: every slot (by default three for us, three for `pg_recvlogical`) is created
//! before the workload is written, so all of them decode exactly the same WAL. Runs alternate
//! (`pg_recvlogical` 1, ours 1, `pg_recvlogical` 2, ...), each on its own fresh slot, so
//! neither side profits from a warm slot or suffers from a drifting machine. A run is timed
//! from the start of its connection to having received every transaction up to the WAL
//! position recorded after the workload.
//!
//! The last line is machine-readable:
//! `RESULT replication ours_rows_per_s=<int> pg_recvlogical_rows_per_s=<int> ratio=<x.xx>`.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cores_and_cpu, postmaster_pid, sql, BoxError};
use pgcluster::Cluster;
use replication::{Change, ConnectConfig, Event, Lsn, ReplicationStream, StreamConfig};
use tokio_postgres::Client;

const TRANSACTIONS: i64 = 2_000;
const ROWS_PER_TRANSACTION: i64 = 100;
const ROWS: u64 = (TRANSACTIONS * ROWS_PER_TRANSACTION) as u64;
/// Runs per side unless `BENCH_RUNS` says otherwise; each uses its own slot.
const DEFAULT_RUNS: usize = 3;
const MAX_RUNS: usize = 20;
const PUBLICATION: &str = "bench_pub";
/// A run that takes longer than this is broken, not slow.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter here. `run` runs on a worker thread, as
    // the server runs its stream, not on the thread that blocks on it.
    common::bench_main("replication", run);
}

async fn run() -> Result<(), BoxError> {
    let (cores, cpu) = cores_and_cpu();
    let runs = match std::env::var("BENCH_RUNS") {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_RUNS).contains(n))
            .ok_or_else(|| {
                format!("BENCH_RUNS must be a number from 1 to {MAX_RUNS}, not {v:?}")
            })?,
        Err(_) => DEFAULT_RUNS,
    };
    println!("replication bench: {ROWS} rows in {TRANSACTIONS} transactions of {ROWS_PER_TRANSACTION}, {runs} runs per side");
    println!("machine: {cores} cores, {cpu}");

    // Room for every run's slot and walsender, besides the cluster's defaults.
    let slots = (2 * runs + 4).to_string();
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::temporary_with(&[
            ("max_replication_slots", slots.as_str()),
            ("max_wal_senders", slots.as_str()),
        ])
    })
    .await??;
    let client = sql::connect(&cluster.url("postgres")).await?;
    let version: String = client.query_one("SHOW server_version", &[]).await?.get(0);
    println!(
        "cluster: PostgreSQL {version} on 127.0.0.1:{}, binaries in {}",
        cluster.port(),
        cluster.bindir().display()
    );

    client
        .batch_execute(&format!(
            "CREATE TABLE items (id bigserial PRIMARY KEY, room text NOT NULL, payload jsonb, \
                                 created_at timestamptz NOT NULL DEFAULT now()) \
                 WITH (autovacuum_enabled = off);
             CREATE PUBLICATION {PUBLICATION} FOR TABLE items;"
        ))
        .await?;

    // All slots exist before the first row is written: they all see the same WAL.
    for i in 1..=runs {
        for side in ["ours", "recv"] {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&format!("{side}_{i}")],
                )
                .await?;
        }
    }
    let start_lsn = current_wal_lsn(&client).await?;

    let written = Instant::now();
    let insert = client
        .prepare(
            "INSERT INTO items (room, payload) \
             SELECT 'room-' || (g % 50), \
                    jsonb_build_object('room', 'room-' || (g % 50), \
                                       'author', 'user-' || (g % 997), \
                                       'text', md5(g::text) || md5((g + 1)::text), \
                                       'n', g, \
                                       'tags', jsonb_build_array('trip', 'day-' || (g % 7))) \
             FROM generate_series($1::bigint, $2::bigint) AS g",
        )
        .await?;
    for t in 0..TRANSACTIONS {
        let first = t * ROWS_PER_TRANSACTION + 1;
        let last = first + ROWS_PER_TRANSACTION - 1;
        client.execute(&insert, &[&first, &last]).await?;
    }
    let end_lsn = current_wal_lsn(&client).await?;
    let written = written.elapsed();
    let avg_payload: f64 = client
        .query_one(
            "SELECT avg(octet_length(payload::text))::float8 FROM items",
            &[],
        )
        .await?
        .get(0);
    println!(
        "workload written in {:.1} s: WAL {start_lsn} .. {end_lsn} ({:.1} MiB), payload ~{avg_payload:.0} bytes of JSON per row",
        written.as_secs_f64(),
        (end_lsn.0 - start_lsn.0) as f64 / (1024.0 * 1024.0)
    );

    let out_dir = tempfile::tempdir()?;
    let postmaster = postmaster_pid(cluster.pgdata()).ok_or("no postmaster.pid")?;
    let mut recv_rates = Vec::new();
    let mut ours_rates = Vec::new();
    for i in 1..=runs {
        let slot = format!("recv_{i}");
        let out = out_dir.path().join(format!("{slot}.out"));
        let before = CpuTimes::now(postmaster);
        let secs = run_pg_recvlogical(&cluster, &slot, end_lsn, &out).await?;
        wait_inactive(&client, &slot).await?;
        let cpu = CpuTimes::now(postmaster).since(&before);
        let rate = ROWS as f64 / secs;
        println!(
            "run {i}: pg_recvlogical {rate:>7.0} rows/s ({secs:.3} s; CPU: pg_recvlogical {:.2} s, walsender {:.2} s)",
            cpu.children, cpu.server
        );
        recv_rates.push(rate);

        let slot = format!("ours_{i}");
        let before = CpuTimes::now(postmaster);
        let secs = run_ours(&cluster, &slot, end_lsn).await?;
        wait_inactive(&client, &slot).await?;
        let cpu = CpuTimes::now(postmaster).since(&before);
        let rate = ROWS as f64 / secs;
        println!(
            "run {i}: ours           {rate:>7.0} rows/s ({secs:.3} s; CPU: ours {:.2} s, walsender {:.2} s)",
            cpu.own, cpu.server
        );
        ours_rates.push(rate);
    }

    let ours = median(&mut ours_rates);
    let recv = median(&mut recv_rates);
    let ratio = ours / recv;
    println!("median: ours {ours:.0} rows/s, pg_recvlogical {recv:.0} rows/s, ratio {ratio:.2}");
    println!(
        "RESULT replication ours_rows_per_s={:.0} pg_recvlogical_rows_per_s={:.0} ratio={ratio:.2}",
        ours, recv
    );
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

/// `pg_recvlogical` from the cluster's own binaries, writing the stream to `out`, until
/// `--endpos`. Returns the seconds from spawning it to its exit.
async fn run_pg_recvlogical(
    cluster: &Cluster,
    slot: &str,
    end_lsn: Lsn,
    out: &Path,
) -> Result<f64, BoxError> {
    let mut cmd = Command::new(cluster.bindir().join("pg_recvlogical"));
    cmd.args(["-h", cluster.host(), "-p", &cluster.port().to_string()])
        .args([
            "-U", "postgres", "-d", "postgres", "--slot", slot, "--start",
        ])
        .arg("-f")
        .arg(out)
        .args(["--no-loop", "-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={PUBLICATION}"))
        .args(["-P", "pgoutput"])
        .arg(format!("--endpos={end_lsn}"))
        .env("PGPASSWORD", cluster.password())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let output = tokio::time::timeout(RUN_LIMIT, tokio::process::Command::from(cmd).output())
        .await
        .map_err(|_| format!("pg_recvlogical on {slot} took longer than {RUN_LIMIT:?}"))??;
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() {
        return Err(format!(
            "pg_recvlogical on {slot} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    let size = std::fs::metadata(out)?.len();
    if size == 0 {
        return Err(format!(
            "pg_recvlogical on {slot} wrote nothing to {}",
            out.display()
        )
        .into());
    }
    Ok(secs)
}

/// Our stream on `slot` until the commit that reaches `end_lsn`, decoding every row and
/// confirming every commit. Returns the seconds from connecting to that commit.
async fn run_ours(cluster: &Cluster, slot: &str, end_lsn: Lsn) -> Result<f64, BoxError> {
    let mut config = StreamConfig::new(
        ConnectConfig::from_url(&cluster.url("postgres"))?,
        slot,
        PUBLICATION,
    );
    config.create_slot = false;

    let started = Instant::now();
    let mut stream = ReplicationStream::start(config).await?;
    let mut rows = 0u64;
    let mut values = 0usize;
    let mut bytes = 0usize;
    let mut commits = 0u64;
    let mut last_end = Lsn::ZERO;
    let streamed = tokio::time::timeout(RUN_LIMIT, async {
        loop {
            match stream.next().await.map_err(|e| e.to_string())? {
                Event::Change(Change::Insert { relation, new }) => {
                    if relation.name != "items" {
                        return Err(format!("insert into unexpected table {}", relation.name));
                    }
                    rows += 1;
                    values += new.0.len();
                    bytes += new
                        .0
                        .iter()
                        .map(|v| v.as_str().map_or(0, str::len))
                        .sum::<usize>();
                    black_box(&new);
                }
                Event::Change(other) => return Err(format!("unexpected change {other:?}")),
                Event::Commit(commit) => {
                    commits += 1;
                    last_end = commit.end_lsn;
                    stream.confirm(commit.end_lsn);
                    if commit.end_lsn >= end_lsn {
                        return Ok(());
                    }
                }
                Event::Reconnected { .. } => return Err("the stream reconnected".to_owned()),
                Event::Begin(_) | Event::Message(_) => {}
            }
        }
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    match streamed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("our stream on {slot}: {e}").into()),
        Err(_) => {
            return Err(format!(
                "our stream on {slot} took longer than {RUN_LIMIT:?}: {rows} rows, {commits} commits, last commit ends at {last_end}, waiting for {end_lsn}"
            )
            .into())
        }
    }
    black_box((values, bytes));
    if rows != ROWS || commits != TRANSACTIONS as u64 || values != rows as usize * 4 {
        return Err(format!(
            "our stream on {slot} got {rows} rows ({values} values) in {commits} commits, expected {ROWS} rows of 4 values in {TRANSACTIONS}"
        )
        .into());
    }
    stream.send_status().await?;
    stream.shutdown().await?;
    Ok(secs)
}

async fn current_wal_lsn(client: &Client) -> Result<Lsn, BoxError> {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    Ok(text.parse()?)
}

/// Waits until no walsender serves `slot` any more, so its CPU time has been accounted.
async fn wait_inactive(client: &Client, slot: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let active: bool = client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await?
            .get(0);
        if !active {
            // The postmaster reaps the walsender (adding its CPU time to its own children's)
            // right after the slot is released.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("slot {slot} is still active 10 s after its run").into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU seconds (user + system) from /proc: this process, its reaped children
/// (`pg_recvlogical`), and the postmaster's reaped children (the walsenders of finished runs).
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    own: f64,
    children: f64,
    server: f64,
}

impl CpuTimes {
    fn now(postmaster: u32) -> CpuTimes {
        let own = proc_stat_times("/proc/self/stat");
        let server = proc_stat_times(&format!("/proc/{postmaster}/stat"));
        CpuTimes {
            own: own.0,
            children: own.1,
            server: server.1,
        }
    }

    fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            own: self.own - before.own,
            children: self.children - before.children,
            server: self.server - before.server,
        }
    }
}

/// (utime + stime, cutime + cstime) in seconds; zeros when unreadable.
fn proc_stat_times(path: &str) -> (f64, f64) {
    // USER_HZ, the unit of these fields, is 100 on Linux.
    const TICKS: f64 = 100.0;
    let Ok(stat) = std::fs::read_to_string(path) else {
        return (0.0, 0.0);
    };
    // The command name may contain spaces; the fields after it are plain numbers.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or("")
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    // After the name: state is index 0, utime 11, stime 12, cutime 13, cstime 14.
    let get = |i: usize| fields.get(i).copied().unwrap_or(0.0) / TICKS;
    (get(11) + get(12), get(13) + get(14))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}
