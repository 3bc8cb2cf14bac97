//! Shared by the benches that drive the server: the server process, the load-generator process
//! (this same bench binary re-executed with `--loadgen`) and a latency histogram. The load
//! generator itself, the orchestrator's SQL writers, the Node.js servers compared against and
//! the readings of CPU time and RSS from /proc are in `loadgen`, `sql`, `node` and `procfs`.
#![allow(dead_code)]

pub(crate) mod loadgen;
pub(crate) mod node;
mod procfs;
pub(crate) mod sql;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout};

pub(crate) use procfs::*;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A bench binary's `main`: the load generator when re-executed with `--loadgen`, else `run`
/// on a worker thread of a multi-threaded runtime; exits 1 if it fails or panics.
pub(crate) fn bench_main<F>(name: &str, run: fn() -> F)
where
    F: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    bench_main_with(name, run, loadgen::main);
}

/// [`bench_main`] with a load generator of the bench's own (`loadgen` gets the arguments).
pub(crate) fn bench_main_with<F>(name: &str, run: fn() -> F, loadgen: fn(&[String]) -> !)
where
    F: std::future::Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--loadgen") {
        loadgen(&args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(async { tokio::spawn(run()).await }) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("{name} bench failed: {e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("{name} bench panicked: {e}");
            std::process::exit(1);
        }
    }
}

/// The HS256 secret the bench server verifies client tokens with.
pub(crate) const SECRET: &str = "bench-secret-not-for-production-use";

/// Nanoseconds since the Unix epoch (the clock every process on this machine shares).
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// An HS256 token for `user` whose `rooms` claim grants `room`, valid for a day.
pub(crate) fn token(user: &str, room: &str) -> String {
    let now = unix_nanos() / 1_000_000_000;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({ "sub": user, "rooms": [room], "exp": now + 86_400, "iat": now }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode a token")
}

/// A number from the environment (for exploring), else `default`.
pub(crate) fn knob(name: &str, default: f64) -> Result<f64, BoxError> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|e| format!("{name}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// A comma-separated list of numbers from the environment (for exploring), else `default`.
pub(crate) fn list_knob(name: &str, default: &[f64]) -> Result<Vec<f64>, BoxError> {
    match std::env::var(name) {
        Ok(list) => Ok(list
            .split(',')
            .map(|r| r.trim().parse::<f64>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{name}: {e}"))?),
        Err(_) => Ok(default.to_vec()),
    }
}

/// A ladder's rates as a bench's first line shows them: `250/500/1000`.
pub(crate) fn format_ladder(ladder: &[f64]) -> String {
    ladder
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join("/")
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The unsigned integer right after the first `key` in `hay` (JSON whitespace skipped).
#[inline]
pub(crate) fn u64_after(hay: &str, key: &str) -> Option<u64> {
    let at = hay.find(key)? + key.len();
    let bytes = &hay.as_bytes()[at..];
    let mut i = 0;
    while i < bytes.len() && bytes[i] == b' ' {
        i += 1;
    }
    let start = i;
    let mut value: u64 = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        value = value
            .wrapping_mul(10)
            .wrapping_add(u64::from(bytes[i] - b'0'));
        i += 1;
    }
    (i > start).then_some(value)
}

// ---------------------------------------------------------------------------------------------
// Latency histogram
// ---------------------------------------------------------------------------------------------

/// Sub-buckets per power of two: values are kept to within 1/128 (0.8 %).
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of microseconds that many threads record into without locks.
pub(crate) struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        v as usize
    } else {
        let shift = 63 - v.leading_zeros() - SUB_BITS;
        (((shift + 1) as usize) << SUB_BITS) + ((v >> shift) as usize - SUB)
    }
}

/// The middle of bucket `i`.
fn bucket_value(i: usize) -> f64 {
    if i < SUB {
        i as f64
    } else {
        let shift = (i >> SUB_BITS) - 1;
        let low = ((SUB + (i & (SUB - 1))) as u64) << shift;
        low as f64 + ((1u64 << shift) as f64 - 1.0) / 2.0
    }
}

impl Histogram {
    #[inline]
    pub(crate) fn record(&self, micros: u64) {
        self.counts[bucket(micros)].fetch_add(1, Ordering::Relaxed);
        if micros > self.max.load(Ordering::Relaxed) {
            self.max.fetch_max(micros, Ordering::Relaxed);
        }
    }

    pub(crate) fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Adds `other`'s counts into this one.
    pub(crate) fn merge(&self, other: &Histogram) {
        for (a, b) in self.counts.iter().zip(other.counts.iter()) {
            let n = b.load(Ordering::Relaxed);
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        }
        self.max
            .fetch_max(other.max.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The `q` quantile (0..=1) in microseconds; 0 when empty.
    pub(crate) fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0 {
            return 0.0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                return bucket_value(i).min(self.max_micros() as f64);
            }
        }
        self.max_micros() as f64
    }

    pub(crate) fn max_micros(&self) -> u64 {
        self.max.load(Ordering::Relaxed)
    }

    /// `p50 … ms, p99 … ms, max … ms`, as the benches report round trips.
    pub(crate) fn round_trips_ms(&self) -> String {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.quantile(0.5) / 1000.0,
            self.quantile(0.99) / 1000.0,
            self.max_micros() as f64 / 1000.0,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The server under test
// ---------------------------------------------------------------------------------------------

/// A `triptrip-realtime serve` process on `database_url`, killed on drop.
pub(crate) struct ServerProc {
    child: Child,
    pub(crate) port: u16,
    _data_dir: tempfile::TempDir,
}

impl ServerProc {
    pub(crate) async fn start(database_url: &str) -> Result<ServerProc, BoxError> {
        ServerProc::start_with(database_url, &[]).await
    }

    /// [`ServerProc::start`] with more environment variables (provider settings, dispatchers),
    /// set after the bench's own so that they can override them.
    pub(crate) async fn start_with(
        database_url: &str,
        envs: &[(String, String)],
    ) -> Result<ServerProc, BoxError> {
        let port = free_port();
        let data_dir = tempfile::tempdir()?;
        let child = Command::new(env!("CARGO_BIN_EXE_triptrip-realtime"))
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("TRIPTRIP_DATA_DIR", data_dir.path())
            .env("TRIPTRIP_LISTEN", format!("127.0.0.1:{port}"))
            .env("TRIPTRIP_JWT_SECRET", SECRET)
            // One user per connection anyway; publishers send far above the default rate.
            .env("TRIPTRIP_MAX_CONNECTIONS_PER_USER", "100000")
            .env("TRIPTRIP_PUBLISH_RATE", "1000000")
            .env("TRIPTRIP_DRAIN_MS", "200")
            .env("RUST_LOG", "warn")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut server = ServerProc {
            child,
            port,
            _data_dir: data_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_status(port, "/ready").await == Some(200) {
                return Ok(server);
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(format!("the server exited before it was ready: {status}").into());
            }
            if Instant::now() > deadline {
                return Err("the server was not ready within 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Prints where the server and its PostgreSQL (on `pg_port`) listen.
    pub(crate) fn print(&self, pg_port: u16) {
        println!(
            "server: pid {} on 127.0.0.1:{}; PostgreSQL on 127.0.0.1:{pg_port}",
            self.pid(),
            self.port,
        );
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status of `GET path` on 127.0.0.1:`port`, or None when it cannot be had.
pub(crate) async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}

/// `GET path` on 127.0.0.1:`port`: status and body, or None when it cannot be had.
pub(crate) async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .ok()
        .flatten()
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub(crate) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The server's replication lag (commit to hub), read from its `/metrics` every 250 ms until
/// stopped.
pub(crate) struct LagSampler {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<f64>>,
}

impl LagSampler {
    pub(crate) fn start(port: u16) -> LagSampler {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
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
        LagSampler { stop, task }
    }

    /// Stops sampling; returns the lags in ms, sorted.
    pub(crate) async fn stop(self) -> Result<Vec<f64>, BoxError> {
        let _ = self.stop.send(true);
        let mut lags = self.task.await?;
        lags.sort_by(f64::total_cmp);
        Ok(lags)
    }
}

/// Prints the median and the largest of sorted `lags` (nothing when there are none).
pub(crate) fn print_lags(lags: &[f64]) {
    if !lags.is_empty() {
        println!(
            "server replication lag (commit to hub, /metrics every 250 ms while writing): median {:.1} ms, max {:.1} ms over {} samples",
            lags[lags.len() / 2],
            lags[lags.len() - 1],
            lags.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The load-generator process, seen from the orchestrator
// ---------------------------------------------------------------------------------------------

/// This bench binary re-executed with `--loadgen …`; talks line by line over stdin/stdout.
pub(crate) struct LoadgenProc {
    child: tokio::process::Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl LoadgenProc {
    pub(crate) fn spawn(options: &loadgen::Options) -> Result<LoadgenProc, BoxError> {
        LoadgenProc::spawn_args(&options.to_args())
    }

    /// This binary re-executed with `args`, which start with `--loadgen`.
    pub(crate) fn spawn_args(args: &[String]) -> Result<LoadgenProc, BoxError> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        Ok(LoadgenProc {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    pub(crate) async fn send(&mut self, command: &str) -> Result<(), BoxError> {
        self.stdin.write_all(command.as_bytes()).await?;
        self.stdin.write_all(b"\n").await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The next line starting with `word`, parsed into its `key=value` pairs.
    pub(crate) async fn expect(
        &mut self,
        word: &str,
        limit: Duration,
    ) -> Result<HashMap<String, String>, BoxError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .map_err(|_| format!("no {word} from the load generator within {limit:?}"))??
                .ok_or_else(|| format!("the load generator exited before {word}"))?;
            if line.split_whitespace().next() == Some(word) {
                return Ok(parse_kv(&line));
            }
            eprintln!("loadgen: {line}");
        }
    }

    /// Prints how many connections the `READY` line `ready` counts under `key`, with `what` they
    /// did ("connections joined") and `more` after it; fails unless all `expected` did.
    pub(crate) fn check_ready(
        &self,
        ready: &HashMap<String, String>,
        key: &str,
        what: &str,
        expected: usize,
        more: &str,
    ) -> Result<(), BoxError> {
        let got = num(ready, key) as usize;
        println!(
            "load generator: pid {}; {got} {what} in {:.1} s ({} failed){more}",
            self.pid(),
            num(ready, "connect_secs"),
            num(ready, "failed")
        );
        if got != expected {
            return Err(format!("only {got} of {expected} {what}").into());
        }
        Ok(())
    }

    /// Asks for `STATUS` every 100 ms until `expected` deliveries were received or `tail`
    /// passed, then for the `REPORT`, which it returns.
    pub(crate) async fn tail_report(
        &mut self,
        expected: u64,
        tail: Duration,
    ) -> Result<HashMap<String, String>, BoxError> {
        let tail_start = Instant::now();
        loop {
            self.send("STATUS").await?;
            let status = self.expect("STATUS", Duration::from_secs(30)).await?;
            if num(&status, "received") as u64 >= expected || tail_start.elapsed() >= tail {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.send("REPORT").await?;
        self.expect("REPORT", Duration::from_secs(30)).await
    }

    pub(crate) async fn quit(mut self) {
        let _ = self.send("QUIT").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

pub(crate) fn parse_kv(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A numeric field of a parsed line; 0 when missing.
pub(crate) fn num(kv: &HashMap<String, String>, key: &str) -> f64 {
    kv.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// `p50 … ms, p90 … ms, p99 … ms, p99.9 … ms, max … ms` from a load generator's `REPORT`.
pub(crate) fn latencies_ms(report: &HashMap<String, String>) -> String {
    let ms = |key: &str| num(report, key) / 1000.0;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        ms("p50_us"),
        ms("p90_us"),
        ms("p99_us"),
        ms("p999_us"),
        ms("max_us"),
    )
}

/// Why a ladder step at `rate` failed, from its `STEP_DONE` line `done`: p99 over
/// `goal_p99_ms`, anything lost, a connection closed, or the senders (`who`, sending `unit`)
/// below 95 % of the rate. Empty when the step passed.
pub(crate) fn step_failures(
    done: &HashMap<String, String>,
    rate: f64,
    goal_p99_ms: f64,
    who: &str,
    unit: &str,
) -> Vec<String> {
    let p99 = num(done, "p99_us") / 1000.0;
    let (lost, closed) = (num(done, "lost"), num(done, "closed"));
    let sent_per_s = num(done, "sent_per_s");
    let mut why = Vec::new();
    if p99 > goal_p99_ms {
        why.push(format!("p99 {p99:.1} ms > {goal_p99_ms} ms"));
    }
    if lost > 0.0 {
        why.push(format!("{lost:.0} lost"));
    }
    if closed > 0.0 {
        why.push(format!("{closed:.0} connections closed"));
    }
    if sent_per_s < 0.95 * rate {
        why.push(format!("{who} reached only {sent_per_s:.0} {unit}"));
    }
    why
}
