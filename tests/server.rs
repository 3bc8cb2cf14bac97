//! The `triptrip-realtime` binary end to end: embedded PostgreSQL kept across restarts,
//! `DATABASE_URL` with its `wal_level` check, migrations, readiness, metrics and SIGTERM.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::server::{free_port, http};
use common::*;
use pgcluster::Cluster;

const BIN: &str = env!("CARGO_BIN_EXE_triptrip-realtime");

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(envs: &[(&str, &str)]) -> Server {
        let port = free_port();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env_remove("DATABASE_URL")
            .env("TRIPTRIP_LISTEN", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            command.env(k, v);
        }
        Server {
            child: command.spawn().expect("spawn the server"),
            port,
        }
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http(self.port, "GET", "/ready", None, "").await {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the server exited before it was ready: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the server was not ready in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(mut self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "exit after SIGTERM: {status}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().unwrap()
}

fn embedded_is_running(data_dir: &Path) -> bool {
    let pid_file = data_dir.join("postgres/pgdata/postmaster.pid");
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| Path::new("/proc").join(l.trim()).exists())
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_postgres_starts_without_configuration_and_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let mut server = Server::start(&[("TRIPTRIP_DATA_DIR", data)]);
    server.wait_ready().await;
    let (status, body) = http(server.port, "GET", "/health", None, "").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (_, metrics) = http(server.port, "GET", "/metrics", None, "")
        .await
        .unwrap();
    assert!(
        metrics.contains("triptrip_replication_streaming 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("triptrip_replication_retained_wal_bytes"),
        "{metrics}"
    );

    let port: u16 = std::fs::read_to_string(data_dir.join("postgres/port"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let password = std::fs::read_to_string(data_dir.join("postgres/postgres.password")).unwrap();
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{port}/triptrip",
        password.trim()
    );
    sql_client(&url)
        .await
        .batch_execute(
            "CREATE TABLE public.kept (v text); INSERT INTO public.kept VALUES ('still here')",
        )
        .await
        .unwrap();
    server.terminate();
    assert!(
        !embedded_is_running(&data_dir),
        "SIGTERM stops the embedded PostgreSQL"
    );

    let mut server = Server::start(&[("TRIPTRIP_DATA_DIR", data)]);
    server.wait_ready().await;
    let row = sql_client(&url)
        .await
        .query_one("SELECT v FROM public.kept", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "still here");
    let status = run(&["status"], &[("TRIPTRIP_DATA_DIR", data)]);
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(
        report.contains("slot triptrip_realtime: active"),
        "{report}"
    );
    assert!(
        embedded_is_running(&data_dir),
        "`status` leaves the server's cluster running"
    );
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_url_without_logical_wal_is_refused_with_the_setting_named() {
    let cluster =
        tokio::task::spawn_blocking(|| Cluster::temporary_with(&[("wal_level", "replica")]))
            .await
            .unwrap()
            .unwrap();
    let output = run(&["serve"], &[("DATABASE_URL", &cluster.url("postgres"))]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wal_level=logical"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_url_server_streams_and_releases_its_slot_on_sigterm() {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let mut server = Server::start(&[("DATABASE_URL", &url), ("TRIPTRIP_SLOT", "node_a")]);
    server.wait_ready().await;
    let client = sql_client(&url).await;
    let slot_active = || async {
        client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'node_a'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    };
    assert!(slot_active().await);
    server.terminate();
    assert!(!slot_active().await, "the slot is released on shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_migrating_together_apply_each_migration_once() {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let outputs: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| run(&["migrate"], &[("DATABASE_URL", &url)])))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut applied = 0;
    for output in &outputs {
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        applied += stdout
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }
    let client = sql_client(&url).await;
    let versions: i64 = client
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied as i64, versions,
        "each migration applied by exactly one node"
    );
    let publication: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_publication WHERE pubname = 'triptrip_realtime'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(publication, 1);
}

#[test]
fn help_documents_the_configuration() {
    let output = run(&["--help"], &[]);
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "DATABASE_URL",
        "TRIPTRIP_DATA_DIR",
        "TRIPTRIP_LISTEN",
        "serve",
        "migrate",
        "status",
    ] {
        assert!(help.contains(needle), "--help mentions {needle}:\n{help}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_sees_a_published_event_arrive_with_listen() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().unwrap();
    let mut server = Server::start(&[("TRIPTRIP_DATA_DIR", data)]);
    server.wait_ready().await;
    let listen = format!("127.0.0.1:{}", server.port);
    let mut listener = Command::new(BIN)
        .args(["listen", "--room", "demo:lobby"])
        .env("TRIPTRIP_DATA_DIR", data)
        .env("TRIPTRIP_LISTEN", &listen)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = listener.stdout.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || {
        lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a line from listen")
    };
    let ack = loop {
        let line = next_line();
        if line.contains("\"ack\"") {
            break line;
        }
    };
    assert!(ack.contains("\"success\""), "{ack}");

    let port = std::fs::read_to_string(data_dir.join("postgres/port")).unwrap();
    let password = std::fs::read_to_string(data_dir.join("postgres/postgres.password")).unwrap();
    let url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/triptrip",
        password.trim(),
        port.trim()
    );
    sql_client(&url)
        .await
        .execute(
            "SELECT realtime.publish('demo:lobby', 'hello', '{\"text\": \"hi\"}')",
            &[],
        )
        .await
        .unwrap();
    let event = loop {
        let line = next_line();
        if line.contains("room:message") {
            break line;
        }
    };
    let event: serde_json::Value = serde_json::from_str(&event).unwrap();
    assert_eq!(event["room"], "demo:lobby");
    assert_eq!(event["data"]["payload"]["text"], "hi");
    let _ = listener.kill();
    let _ = listener.wait();
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upkeep_creates_partitions_ahead_and_drops_expired_history() {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let mut client = sql_client(&url).await;
    triptrip_realtime::migrate::run(&mut client).await.unwrap();
    let pool = triptrip_realtime::db::pool(&url, 2).unwrap();
    let (_, _, dropped) = triptrip_realtime::maintenance::once(&pool, None)
        .await
        .unwrap();
    assert_eq!(dropped, 0, "no retention configured: nothing dropped");
    let ahead: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'realtime.messages'::regclass \
               AND c.relname = 'messages_p' || to_char((now() AT TIME ZONE 'UTC') + interval '3 days', 'YYYYMMDD')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ahead, 1, "a partition three days ahead exists");
    client
        .batch_execute(
            "CREATE TABLE realtime.messages_p20000101 PARTITION OF realtime.messages \
               FOR VALUES FROM ('2000-01-01 00:00+00') TO ('2000-01-02 00:00+00');",
        )
        .await
        .unwrap();
    let (_, _, dropped) = triptrip_realtime::maintenance::once(&pool, Some(30))
        .await
        .unwrap();
    assert_eq!(dropped, 1);
}
