//! The stream's guarantees under faults: PostgreSQL killed and restarted mid-stream, a slot
//! dropped under it, an idle slot, a definite error.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use replication::{Event, Lsn};

/// Inserts ids 0..count, one transaction each, retrying through outages; `ON CONFLICT` makes a
/// retry of a commit whose acknowledgement was lost harmless.
async fn write_through_outages(url: String, count: i64) {
    let mut client = None;
    let mut id = 0;
    while id < count {
        if client.is_none() {
            match tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    client = Some(c);
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        }
        let insert = client
            .as_ref()
            .unwrap()
            .execute(
                "INSERT INTO items (id, room) VALUES ($1, 'r') ON CONFLICT DO NOTHING",
                &[&id],
            )
            .await;
        match insert {
            Ok(_) => id += 1,
            Err(_) => client = None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_and_restarted_mid_stream_loses_no_committed_transaction() {
    let (mut cluster, _client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "faults", "pub").await;
    let writer = tokio::spawn(write_through_outages(cluster.url("postgres"), 3000));

    let mut seen = HashSet::new();
    let mut reconnects = 0;
    for fault in 0..2 {
        read_until(&mut stream, Duration::from_secs(60), |e| {
            seen.extend(inserted_id(e));
            seen.len() >= 500 * (fault + 1)
        })
        .await;
        cluster = tokio::task::spawn_blocking(move || {
            if fault == 0 {
                cluster.kill().expect("kill -9 postgres");
            } else {
                cluster.crash().expect("immediate stop");
            }
            std::thread::sleep(Duration::from_millis(500));
            cluster.start().expect("restart postgres");
            cluster
        })
        .await
        .unwrap();
    }
    writer.await.unwrap();
    let client = sql_client(&cluster.url("postgres")).await;
    let committed: HashSet<i64> = client
        .query("SELECT id FROM items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(committed.len(), 3000);
    read_until(&mut stream, Duration::from_secs(60), |e| {
        seen.extend(inserted_id(e));
        if matches!(e, Event::Reconnected { .. }) {
            reconnects += 1;
        }
        committed.is_subset(&seen)
    })
    .await;
    assert!(reconnects >= 1, "the stream reconnected at least once");
    assert!(seen.is_subset(&committed), "nothing uncommitted arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_transactions_are_sent_again_after_reconnect() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "again", "pub").await;
    client
        .batch_execute("INSERT INTO items (id, room) VALUES (1, 'r'); INSERT INTO items (id, room) VALUES (2, 'r');")
        .await
        .unwrap();
    let mut first = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let event = stream.next().await.unwrap();
            first.extend(inserted_id(&event));
            if matches!(event, Event::Commit(_)) {
                break;
            }
        }
    })
    .await
    .unwrap();
    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'again'",
            &[],
        )
        .await
        .unwrap();
    let mut again = Vec::new();
    let mut reconnected = false;
    read_until(&mut stream, Duration::from_secs(30), |e| {
        reconnected |= matches!(
            e,
            Event::Reconnected {
                slot_created: false,
                ..
            }
        );
        again.extend(inserted_id(e));
        again.len() == 2
    })
    .await;
    assert!(reconnected);
    assert_eq!(first, [1, 2]);
    assert_eq!(again, [1, 2], "never confirmed, so sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_slot_advances_while_only_unpublished_tables_change() {
    let (cluster, client) = cluster_with_items().await;
    client
        .batch_execute("CREATE TABLE other (id serial PRIMARY KEY, v text)")
        .await
        .unwrap();
    let mut stream = start_stream(&cluster, "idle", "pub").await;
    let start = confirmed_flush_lsn(&client, "idle").await;
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok(event) =
                    tokio::time::timeout(Duration::from_millis(100), stream.next()).await
                {
                    assert!(
                        !matches!(event.expect("stream"), Event::Change(_)),
                        "no published table changed"
                    );
                }
            }
        })
    };
    let mut target = Lsn::ZERO;
    let mut advanced = false;
    for _ in 0..150 {
        client
            .execute(
                "INSERT INTO other (v) SELECT repeat('x', 1000) FROM generate_series(1, 100)",
                &[],
            )
            .await
            .unwrap();
        if target == Lsn::ZERO {
            let row = client
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .unwrap();
            target = row.get::<_, String>(0).parse().unwrap();
        }
        if confirmed_flush_lsn(&client, "idle").await >= target {
            advanced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert!(target > start);
    assert!(
        advanced,
        "confirmed_flush_lsn stayed behind {target} (started at {start})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_slot_is_recreated_and_reported() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "dropme", "pub").await;
    drop_slot_under_its_consumer(&client, "dropme").await;
    let mut recreated = false;
    let mut ids = Vec::new();
    let inserter = {
        let url = cluster.url("postgres");
        tokio::spawn(async move {
            let client = sql_client(&url).await;
            for id in 0i64..200 {
                client
                    .execute("INSERT INTO items (id, room) VALUES ($1, 'r')", &[&id])
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    read_until(&mut stream, Duration::from_secs(30), |e| {
        recreated |= matches!(
            e,
            Event::Reconnected {
                slot_created: true,
                ..
            }
        );
        ids.extend(inserted_id(e));
        ids.contains(&199)
    })
    .await;
    inserter.await.unwrap();
    assert!(recreated, "the stream reported the slot as recreated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_publication_is_a_definite_error() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "nopub", "no_such_publication").await;
    client
        .execute("INSERT INTO items (room) VALUES ('r')", &[])
        .await
        .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Err(e) = stream.next().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(err.code(), Some("42704"), "{err}");
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_reports_positions_and_frees_the_slot() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "bye", "pub").await;
    client
        .execute("INSERT INTO items (room) VALUES ('r')", &[])
        .await
        .unwrap();
    let mut end = Lsn::ZERO;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Event::Commit(commit) = stream.next().await.unwrap() {
                end = commit.end_lsn;
                break;
            }
        }
    })
    .await
    .unwrap();
    stream.report_positions(end, end, Lsn(end.0 - 1));
    stream.shutdown().await.expect("CopyDone handshake");
    assert_eq!(confirmed_flush_lsn(&client, "bye").await, end);
    let mut active = true;
    for _ in 0..100 {
        active = client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'bye'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !active,
        "the walsender let go of the slot after the session ended"
    );
}
