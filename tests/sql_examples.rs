//! Every example in `sql/` runs, as written, against a migrated database whose server is
//! streaming (so the slot and walsender queries have something to show).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use pgcluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sql_example_runs() {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .unwrap();
    let url = cluster.url("postgres");
    let mut server = Command::new(env!("CARGO_BIN_EXE_triptrip-realtime"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = sql_client(&url).await;
    let mut active = false;
    for _ in 0..300 {
        active = client
            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = 'triptrip_realtime' AND active", &[])
            .await
            .unwrap()
            .is_some();
        if active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(active, "the server took its slot");

    let mut files: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let sql = std::fs::read_to_string(&file).unwrap();
        let output = cluster.psql("postgres", &sql);
        assert!(output.is_ok(), "{}: {:?}", file.display(), output.err());
        if file.ends_with("replication_status.sql") {
            let output = output.unwrap();
            assert!(output.contains("triptrip_realtime"), "{output}");
            assert!(output.contains("wal_level|logical|"), "{output}");
        }
    }
    let _ = server.kill();
    let _ = server.wait();
}
