//! Shared test helpers: private clusters, SQL clients and stream collectors.
#![allow(dead_code, unreachable_pub)]

pub mod server;

use std::time::Duration;

use pgcluster::Cluster;
use replication::{Change, ConnectConfig, Event, ReplicationStream, StreamConfig};
use tokio_postgres::{Client, NoTls};

/// Runs each statement and asserts it fails with an error whose message (or constraint name)
/// contains the expected text.
pub async fn assert_refused(sql: &Client, cases: &[(&str, &str)]) {
    for (statement, expected) in cases {
        let err = sql.batch_execute(statement).await.expect_err(statement);
        let message = err
            .as_db_error()
            .map(|d| format!("{} {}", d.message(), d.constraint().unwrap_or("")))
            .unwrap_or_else(|| err.to_string());
        assert!(message.contains(expected), "{statement}: {message}");
    }
}

pub async fn sql_client(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh private cluster (in its own temp dir) with a publication `pub` on table `items`.
pub async fn cluster_with_items() -> (Cluster, Client) {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .expect("start a private cluster");
    let client = sql_client(&cluster.url("postgres")).await;
    client
        .batch_execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, room text NOT NULL, payload jsonb, \
                                 created_at timestamptz NOT NULL DEFAULT now());
             CREATE PUBLICATION pub FOR TABLE items;",
        )
        .await
        .unwrap();
    (cluster, client)
}

pub fn stream_config(cluster: &Cluster, slot: &str, publication: &str) -> StreamConfig {
    let connect = ConnectConfig::from_url(&cluster.url("postgres")).unwrap();
    let mut config = StreamConfig::new(connect, slot, publication);
    config.status_interval = Duration::from_millis(200);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_millis(500);
    config
}

/// Starts a stream and waits until its slot exists, so later commits are in it.
pub async fn start_stream(cluster: &Cluster, slot: &str, publication: &str) -> ReplicationStream {
    ReplicationStream::start(stream_config(cluster, slot, publication))
        .await
        .expect("start streaming")
}

/// Reads events until `done` says so, confirming each commit; fails after `limit`.
pub async fn read_until(
    stream: &mut ReplicationStream,
    limit: Duration,
    mut on_event: impl FnMut(&Event) -> bool,
) {
    tokio::time::timeout(limit, async {
        loop {
            let event = stream.next().await.expect("stream event");
            if let Event::Commit(commit) = &event {
                stream.confirm(commit.end_lsn);
            }
            if on_event(&event) {
                return;
            }
        }
    })
    .await
    .expect("events arrived in time");
}

/// The `id` column of an inserted `items` row.
pub fn inserted_id(event: &Event) -> Option<i64> {
    match event {
        Event::Change(Change::Insert { relation, new }) if relation.name == "items" => {
            new.0[0].as_str().and_then(|s| s.parse().ok())
        }
        _ => None,
    }
}

pub async fn confirmed_flush_lsn(client: &Client, slot: &str) -> replication::Lsn {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap();
    row.get::<_, String>(0).parse().unwrap()
}

/// Drops `slot` from under its consumer, which reconnects quickly: terminates the walsender
/// and drops the slot in one round trip, retrying until the drop wins the race.
pub async fn drop_slot_under_its_consumer(client: &Client, slot: &str) {
    let sql = format!(
        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
           WHERE slot_name = '{slot}' AND active_pid IS NOT NULL;
         SELECT pg_sleep(0.01);
         SELECT pg_drop_replication_slot('{slot}');"
    );
    for _ in 0..200 {
        if client.batch_execute(&sql).await.is_ok() {
            return;
        }
    }
    panic!("could not drop slot {slot}");
}

/// Shows the library's logs in a failing test's output (`RUST_LOG` picks the level).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}
