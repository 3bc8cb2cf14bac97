//! Every change kind and column type the server relies on arrives decoded, from a real
//! PostgreSQL 15 through the `replication` crate.

mod common;

use std::time::Duration;

use common::*;
use replication::pgoutput::{ReplicaIdentity, Tuple, Value};
use replication::{Change, Event};

const WAIT: Duration = Duration::from_secs(30);

fn text(v: &Value) -> Option<&str> {
    v.as_str()
}

async fn collect_changes(
    stream: &mut replication::ReplicationStream,
    commits: usize,
) -> Vec<Event> {
    let mut events = Vec::new();
    let mut seen = 0;
    read_until(stream, WAIT, |e| {
        events.push(e.clone());
        if matches!(e, Event::Commit(_)) {
            seen += 1;
        }
        seen == commits
    })
    .await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_column_type_arrives_as_postgres_text() {
    let (cluster, client) = cluster_with_items().await;
    client
        .batch_execute(
            "CREATE TABLE typed (id bigint PRIMARY KEY, t text, j jsonb, b bytea, u uuid, \
                                 ts timestamptz, arr int[], tags text[], n text);
             ALTER PUBLICATION pub ADD TABLE typed;",
        )
        .await
        .unwrap();
    let mut stream = start_stream(&cluster, "types", "pub").await;
    client
        .batch_execute(
            "SET TIME ZONE 'UTC';
             INSERT INTO typed VALUES (9007199254740993, 'héllo ''quoted''', '{\"a\": [1, 2]}', \
                 '\\x00ff10', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2026-11-28 10:00:00+00', \
                 '{1,NULL,3}', '{\"a b\",c}', NULL);",
        )
        .await
        .unwrap();
    let events = collect_changes(&mut stream, 1).await;
    assert!(matches!(events.first(), Some(Event::Begin(_))));
    let Some(Event::Change(Change::Insert { relation, new })) = events.get(1) else {
        panic!("expected an insert, got {events:?}");
    };
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("public", "typed")
    );
    let names: Vec<_> = relation.columns.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["id", "t", "j", "b", "u", "ts", "arr", "tags", "n"]);
    assert!(relation.columns[0].is_key);
    assert_eq!(relation.columns[0].type_oid, 20);
    let values: Vec<Option<&str>> = new.0.iter().map(text).collect();
    assert_eq!(
        values,
        [
            Some("9007199254740993"),
            Some("héllo 'quoted'"),
            Some("{\"a\": [1, 2]}"),
            Some("\\x00ff10"),
            Some("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Some("2026-11-28 10:00:00+00"),
            Some("{1,NULL,3}"),
            Some("{\"a b\",c}"),
            None,
        ]
    );
    assert_eq!(new.0[8], Value::Null);
    assert!(matches!(events.last(), Some(Event::Commit(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_and_deletes_carry_old_values_by_replica_identity() {
    let (cluster, client) = cluster_with_items().await;
    client
        .batch_execute(
            "CREATE TABLE full_rows (id int PRIMARY KEY, v text);
             ALTER TABLE full_rows REPLICA IDENTITY FULL;
             ALTER PUBLICATION pub ADD TABLE full_rows;",
        )
        .await
        .unwrap();
    let mut stream = start_stream(&cluster, "identity", "pub").await;
    for sql in [
        "INSERT INTO items (id, room, payload) VALUES (1, 'r', '{}')",
        "UPDATE items SET payload = '{\"x\": 1}' WHERE id = 1",
        "UPDATE items SET id = 2 WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
        "INSERT INTO full_rows VALUES (1, 'a')",
        "UPDATE full_rows SET v = 'b'",
        "DELETE FROM full_rows",
    ] {
        client.execute(sql, &[]).await.unwrap();
    }
    let events = collect_changes(&mut stream, 7).await;
    let changes: Vec<&Change> = events
        .iter()
        .filter_map(|e| match e {
            Event::Change(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(changes.len(), 7);
    let Change::Update {
        relation,
        key,
        old,
        new,
    } = changes[1]
    else {
        panic!()
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        (key, old),
        (&None, &None),
        "unchanged key sends no old tuple"
    );
    assert_eq!(new.0[2].as_str(), Some("{\"x\": 1}"));
    let Change::Update {
        key: Some(key),
        old: None,
        new,
        ..
    } = changes[2]
    else {
        panic!()
    };
    assert_eq!(
        key.0[0].as_str(),
        Some("1"),
        "changed key sends the old key"
    );
    assert_eq!(new.0[0].as_str(), Some("2"));
    let Change::Delete {
        key: Some(key),
        old: None,
        ..
    } = changes[3]
    else {
        panic!()
    };
    assert_eq!(key.0[0].as_str(), Some("2"));
    assert_eq!(
        key.0[1],
        Value::Null,
        "a key tuple has only key columns set"
    );
    let Change::Update {
        relation,
        key: None,
        old: Some(old),
        new,
    } = changes[5]
    else {
        panic!("{:?}", changes[5])
    };
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);
    assert_eq!(
        (old.0[1].as_str(), new.0[1].as_str()),
        (Some("a"), Some("b"))
    );
    let Change::Delete {
        key: None,
        old: Some(old),
        ..
    } = changes[6]
    else {
        panic!()
    };
    assert_eq!(
        old,
        &Tuple(vec![Value::Text("1".into()), Value::Text("b".into())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_arrive_as_a_marker() {
    let (cluster, client) = cluster_with_items().await;
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, big text, small int);
             ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
             ALTER PUBLICATION pub ADD TABLE docs;",
        )
        .await
        .unwrap();
    let mut stream = start_stream(&cluster, "toast", "pub").await;
    for sql in [
        "INSERT INTO docs VALUES (1, repeat('x', 100000), 1)",
        "UPDATE docs SET small = 2",
    ] {
        client.execute(sql, &[]).await.unwrap();
    }
    let events = collect_changes(&mut stream, 2).await;
    let updates: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Change(Change::Insert { new, .. }) => Some(new),
            Event::Change(Change::Update { new, .. }) => Some(new),
            _ => None,
        })
        .collect();
    assert_eq!(updates[0].0[1].as_str().map(str::len), Some(100_000));
    assert_eq!(updates[1].0[1], Value::UnchangedToast);
    assert_eq!(updates[1].0[2].as_str(), Some("2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_logical_messages_arrive() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "trunc", "pub").await;
    for sql in [
        "INSERT INTO items (room) VALUES ('r')",
        "TRUNCATE items RESTART IDENTITY",
        "SELECT pg_logical_emit_message(true, 'triptrip', 'in a transaction')",
        "SELECT pg_logical_emit_message(false, 'triptrip', '\\x00ff'::bytea)",
    ] {
        client.batch_execute(sql).await.unwrap();
    }
    let mut events = Vec::new();
    read_until(&mut stream, WAIT, |e| {
        events.push(e.clone());
        matches!(e, Event::Message(m) if !m.transactional)
    })
    .await;
    let truncate = events.iter().find_map(|e| match e {
        Event::Change(Change::Truncate {
            relations,
            cascade,
            restart_identity,
        }) => Some((relations[0].name.clone(), *cascade, *restart_identity)),
        _ => None,
    });
    assert_eq!(truncate, Some(("items".to_owned(), false, true)));
    let messages: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some((m.transactional, m.prefix.as_str(), m.content.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages,
        [
            (true, "triptrip", b"in a transaction".to_vec()),
            (false, "triptrip", vec![0x00, 0xff])
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_transactions_never_arrive() {
    let (cluster, mut client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "rollback", "pub").await;
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO items (id, room) VALUES (1, 'gone')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    client
        .execute("INSERT INTO items (id, room) VALUES (2, 'kept')", &[])
        .await
        .unwrap();
    let mut ids = Vec::new();
    read_until(&mut stream, WAIT, |e| {
        ids.extend(inserted_id(e));
        matches!(e, Event::Commit(_))
    })
    .await;
    assert_eq!(ids, [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_and_concurrent_writers_arrive_whole_and_in_commit_order() {
    let (cluster, client) = cluster_with_items().await;
    let mut stream = start_stream(&cluster, "bulk", "pub").await;
    client
        .execute(
            "INSERT INTO items (room, payload) \
             SELECT 'bulk', jsonb_build_object('n', g) FROM generate_series(1, 100000) g",
            &[],
        )
        .await
        .unwrap();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let url = cluster.url("postgres");
            tokio::spawn(async move {
                let client = sql_client(&url).await;
                for i in 0..50 {
                    client
                        .execute(
                            "INSERT INTO items (room, payload) VALUES ($1, jsonb_build_object('i', $2::int))",
                            &[&format!("w{w}"), &i],
                        )
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut ids = std::collections::HashSet::new();
    let mut first_tx_rows = 0;
    let mut commits = Vec::new();
    read_until(&mut stream, Duration::from_secs(120), |e| {
        if let Some(id) = inserted_id(e) {
            assert!(ids.insert(id), "row {id} delivered twice in one stream");
            if commits.is_empty() {
                first_tx_rows += 1;
            }
        }
        if let Event::Commit(c) = e {
            commits.push(c.commit_lsn);
        }
        commits.len() == 401
    })
    .await;
    assert_eq!(first_tx_rows, 100_000);
    assert_eq!(ids.len(), 100_400);
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "commit order");
}
