//! The rooms schema (`migrations/V2__rooms.sql`) on a real PostgreSQL 15, migrated the way the
//! server does it: per-room sequence numbers, idempotency keys, validation, partitions,
//! membership, the publication, and what arrives through the replication stream.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pgcluster::Cluster;
use replication::pgoutput::{Relation, Tuple};
use replication::{Change, Event};
use tokio_postgres::{Client, SimpleQueryMessage};

const WAIT: Duration = Duration::from_secs(60);

/// A private cluster with the server's migrations applied.
async fn migrated() -> (Cluster, Client) {
    let cluster = tokio::task::spawn_blocking(Cluster::temporary)
        .await
        .unwrap()
        .expect("start a private cluster");
    let mut client = sql_client(&cluster.url("postgres")).await;
    let applied = triptrip_realtime::migrate::run(&mut client)
        .await
        .expect("migrations apply");
    assert!(applied >= 2, "V1 and V2 applied, got {applied}");
    (cluster, client)
}

async fn publish(client: &Client, room: &str, event: &str) -> i64 {
    client
        .query_one("SELECT realtime.publish($1, $2)", &[&room, &event])
        .await
        .unwrap()
        .get(0)
}

async fn publish_keyed(client: &Client, room: &str, event: &str, key: &str) -> i64 {
    client
        .query_one(
            "SELECT realtime.publish($1, $2, '{}', $3)",
            &[&room, &event, &key],
        )
        .await
        .unwrap()
        .get(0)
}

/// The seqs of a room's rows, in seq order.
async fn seqs(client: &Client, room: &str) -> Vec<i64> {
    client
        .query(
            "SELECT seq FROM realtime.messages WHERE room = $1 ORDER BY seq",
            &[&room],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn last_seq(client: &Client, room: &str) -> Option<i64> {
    client
        .query_opt(
            "SELECT last_seq FROM realtime.rooms WHERE room = $1",
            &[&room],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// SQLSTATE, message and constraint of a database error.
fn db_error(e: &tokio_postgres::Error) -> (String, String, Option<String>) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {e}"));
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.constraint().map(str::to_owned),
    )
}

/// The UTC day `offset` days from today, as in partition names (`YYYYMMDD`).
async fn utc_day(client: &Client, offset: i32) -> String {
    client
        .query_one(
            "SELECT to_char((now() AT TIME ZONE 'UTC')::date + $1::int, 'YYYYMMDD')",
            &[&offset],
        )
        .await
        .unwrap()
        .get(0)
}

async fn partitions(client: &Client) -> Vec<String> {
    client
        .query(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'realtime.messages'::regclass ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn text_rows(client: &Client, sql: &str) -> Vec<String> {
    client
        .simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        })
        .collect()
}

/// A column of a streamed tuple, by name.
fn column<'a>(relation: &Relation, tuple: &'a Tuple, name: &str) -> Option<&'a str> {
    let i = relation.columns.iter().position(|c| c.name == name)?;
    tuple.0.get(i)?.as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seqs_are_gap_free_and_in_commit_order_per_room_with_concurrent_writers() {
    const TASKS: usize = 8;
    const PER_TASK: usize = 200;
    const ROOMS: [&str; 3] = ["trip:1", "trip:2", "trip:3"];
    let (cluster, _client) = migrated().await;
    let url = cluster.url("postgres");
    // The stream delivers transactions in commit order: what a subscriber sees.
    let mut stream = start_stream(&cluster, "seq_order", "triptrip_realtime").await;

    let origin = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = sql_client(&url).await;
            let insert = client
                .prepare(
                    "INSERT INTO realtime.messages (room, event, payload) \
                     VALUES ($1, 'tick', jsonb_build_object('task', $2::int, 'i', $3::int)) \
                     RETURNING seq",
                )
                .await
                .unwrap();
            let mut done = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let room = ROOMS[(task + i) % ROOMS.len()];
                let started = origin.elapsed();
                // One row per transaction (autocommit): when it returns, it has committed.
                let seq: i64 = client
                    .query_one(&insert, &[&room, &(task as i32), &(i as i32)])
                    .await
                    .unwrap()
                    .get(0);
                done.push((room, seq, started, origin.elapsed()));
            }
            done
        }));
    }
    let mut writes = Vec::new();
    for t in tasks {
        writes.extend(t.await.unwrap());
    }
    assert_eq!(writes.len(), TASKS * PER_TASK);

    let client = sql_client(&url).await;
    for room in ROOMS {
        let n = writes.iter().filter(|w| w.0 == room).count() as i64;
        assert_eq!(
            seqs(&client, room).await,
            (1..=n).collect::<Vec<_>>(),
            "{room}"
        );
        assert_eq!(last_seq(&client, room).await, Some(n), "{room}");
        // A write that committed before another one started has the smaller seq.
        let mut room_writes: Vec<_> = writes.iter().filter(|w| w.0 == room).collect();
        room_writes.sort_by_key(|w| w.1);
        for (i, a) in room_writes.iter().enumerate() {
            for b in &room_writes[..i] {
                assert!(
                    a.3 >= b.2,
                    "{room}: seq {} committed before seq {} started",
                    a.1,
                    b.1
                );
            }
        }
    }

    // In commit (stream) order, each room's seqs are exactly 1, 2, 3, ...
    let mut arrived: HashMap<String, Vec<i64>> = HashMap::new();
    let mut total = 0;
    read_until(&mut stream, WAIT, |event| {
        if let Event::Change(Change::Insert { relation, new }) = event {
            if relation.name == "messages" {
                let room = column(relation, new, "room").unwrap().to_owned();
                let seq = column(relation, new, "seq").unwrap().parse().unwrap();
                arrived.entry(room).or_default().push(seq);
                total += 1;
            }
        }
        total == TASKS * PER_TASK
    })
    .await;
    for room in ROOMS {
        let n = writes.iter().filter(|w| w.0 == room).count() as i64;
        assert_eq!(arrived[room], (1..=n).collect::<Vec<_>>(), "{room}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_inserts_leave_no_gap() {
    let (cluster, client) = migrated().await;
    let url = cluster.url("postgres");
    assert_eq!(publish(&client, "trip:7", "a").await, 1);

    // A rolled-back transaction, alone.
    client
        .batch_execute(
            "BEGIN; INSERT INTO realtime.messages (room, event) VALUES ('trip:7', 'draft'); \
             ROLLBACK;",
        )
        .await
        .unwrap();
    assert_eq!(last_seq(&client, "trip:7").await, Some(1));

    // A writer queued behind a transaction that then rolls back takes over its seq.
    let first = sql_client(&url).await;
    first.batch_execute("BEGIN").await.unwrap();
    assert_eq!(publish(&first, "trip:7", "draft").await, 2);
    let second = tokio::spawn({
        let url = url.clone();
        async move {
            let client = sql_client(&url).await;
            publish(&client, "trip:7", "b").await
        }
    });
    let deadline = Instant::now() + WAIT;
    while count(
        &client,
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
    )
    .await
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the second writer waits for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!second.is_finished());
    first.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(second.await.unwrap(), 2);
    assert_eq!(publish(&client, "trip:7", "c").await, 3);

    // Savepoints rolled back inside a transaction, interleaved with other rooms.
    client
        .batch_execute(
            "BEGIN; \
             INSERT INTO realtime.messages (room, event) VALUES ('trip:7', 'd'); \
             SAVEPOINT a; \
             INSERT INTO realtime.messages (room, event) \
               SELECT 'trip:7', 'draft' FROM generate_series(1, 3); \
             ROLLBACK TO a; \
             INSERT INTO realtime.messages (room, event) VALUES ('trip:8', 'x'); \
             SAVEPOINT b; \
             INSERT INTO realtime.messages (room, event) VALUES ('trip:8', 'draft'); \
             ROLLBACK TO b; \
             INSERT INTO realtime.messages (room, event) VALUES ('trip:7', 'e'), ('trip:8', 'y'); \
             COMMIT;",
        )
        .await
        .unwrap();

    assert_eq!(seqs(&client, "trip:7").await, [1, 2, 3, 4, 5]);
    assert_eq!(seqs(&client, "trip:8").await, [1, 2]);
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM realtime.messages WHERE event = 'draft'"
        )
        .await,
        0
    );
    assert_eq!(last_seq(&client, "trip:7").await, Some(5));
    assert_eq!(last_seq(&client, "trip:8").await, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_insert_into_one_room_in_one_transaction_takes_linear_time() {
    let (_cluster, client) = migrated().await;
    let timed = |sql: &'static str| {
        let client = &client;
        async move {
            let started = Instant::now();
            client.batch_execute(sql).await.unwrap();
            started.elapsed()
        }
    };
    // Baseline: one row in each of 5,000 rooms.
    let spread = timed(
        "INSERT INTO realtime.messages (room, event) \
         SELECT 'spread:' || g, 'e' FROM generate_series(1, 5000) g",
    )
    .await;
    // 50,000 rows into one room: its counter row gets 50,000 versions that cannot be pruned
    // before commit; reaching the current one through the index would make this quadratic.
    let bulk = timed(
        "INSERT INTO realtime.messages (room, event) \
         SELECT 'bulk:1', 'e' FROM generate_series(1, 50000)",
    )
    .await;
    assert!(
        bulk < spread * 15,
        "50,000 rows into one room took {bulk:?}; 5,000 rows into 5,000 rooms took {spread:?}"
    );
    assert_eq!(last_seq(&client, "bulk:1").await, Some(50_000));
    assert_eq!(
        count(
            &client,
            "SELECT count(DISTINCT seq) FILTER (WHERE seq BETWEEN 1 AND 50000) \
             FROM realtime.messages WHERE room = 'bulk:1'"
        )
        .await,
        50_000
    );
    // With idempotency keys, in one transaction with another statement in between.
    client
        .batch_execute(
            "BEGIN; \
             INSERT INTO realtime.messages (room, event, idempotency_key) \
               SELECT 'bulk:2', 'e', 'k' || (g % 1000) FROM generate_series(1, 5000) g; \
             UPDATE realtime.rooms SET last_seq = last_seq WHERE room = 'bulk:2'; \
             INSERT INTO realtime.messages (room, event, idempotency_key) \
               SELECT 'bulk:2', 'e', 'k' || g FROM generate_series(500, 1500) g; \
             COMMIT;",
        )
        .await
        .unwrap();
    assert_eq!(
        seqs(&client, "bulk:2").await,
        (1..=1501).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_supplied_by_the_writer_is_overwritten() {
    let (_cluster, client) = migrated().await;
    let mut got = Vec::new();
    for supplied in [999_i64, 1, -5, 0] {
        let row = client
            .query_one(
                "INSERT INTO realtime.messages (room, seq, event) VALUES ('trip:9', $1, 'e') \
                 RETURNING seq",
                &[&supplied],
            )
            .await
            .unwrap();
        got.push(row.get::<_, i64>(0));
    }
    assert_eq!(got, [1, 2, 3, 4]);
    // Several rows in one statement, and a COPY-like INSERT ... SELECT.
    let rows = client
        .query(
            "INSERT INTO realtime.messages (room, seq, event) \
             SELECT 'trip:9', 7, 'bulk' FROM generate_series(1, 3) RETURNING seq",
            &[],
        )
        .await
        .unwrap();
    let bulk: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(bulk, [5, 6, 7]);
    assert_eq!(seqs(&client, "trip:9").await, [1, 2, 3, 4, 5, 6, 7]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_within_24h_is_a_noop_returning_the_first_seq() {
    let (cluster, client) = migrated().await;
    let first = publish_keyed(&client, "trip:5", "booking.confirmed", "k-1").await;
    assert_eq!(first, 1);
    assert_eq!(publish(&client, "trip:5", "other").await, 2);
    assert_eq!(
        publish_keyed(&client, "trip:5", "booking.confirmed", "k-1").await,
        1
    );
    // A plain INSERT with the key inserts nothing.
    let inserted = client
        .execute(
            "INSERT INTO realtime.messages (room, event, idempotency_key) \
             VALUES ('trip:5', 'booking.confirmed', 'k-1')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 0);
    // Twice in one transaction: once.
    client
        .batch_execute(
            "BEGIN; \
             SELECT realtime.publish('trip:5', 'e', '{}', 'k-2'); \
             SELECT realtime.publish('trip:5', 'e', '{}', 'k-2'); \
             COMMIT;",
        )
        .await
        .unwrap();
    assert_eq!(publish_keyed(&client, "trip:5", "e", "k-2").await, 3);
    // Keys are per room.
    assert_eq!(publish_keyed(&client, "trip:6", "e", "k-1").await, 1);

    assert_eq!(seqs(&client, "trip:5").await, [1, 2, 3]);
    assert_eq!(last_seq(&client, "trip:5").await, Some(3));

    // Concurrent duplicates from many connections: exactly one row, one seq for all.
    const WRITERS: usize = 8;
    let url = cluster.url("postgres");
    let barrier = Arc::new(tokio::sync::Barrier::new(WRITERS));
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let url = url.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let client = sql_client(&url).await;
            let mut got = Vec::new();
            for round in 0..20 {
                let key = format!("race-{round}");
                barrier.wait().await;
                got.push(publish_keyed(&client, "trip:race", "e", &key).await);
            }
            got
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    for round in 0..20 {
        let seqs: Vec<i64> = results.iter().map(|r| r[round]).collect();
        assert!(
            seqs.iter().all(|s| *s == seqs[0]),
            "round {round}: {seqs:?}"
        );
    }
    let rows = client
        .query(
            "SELECT idempotency_key, count(*) FROM realtime.messages WHERE room = 'trip:race' \
             GROUP BY 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|r| r.get::<_, i64>(1) == 1));
    assert_eq!(
        seqs(&client, "trip:race").await,
        (1..=20).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_idempotency_key_publishes_again() {
    let (_cluster, client) = migrated().await;
    assert_eq!(publish_keyed(&client, "trip:3", "e", "k").await, 1);
    client
        .batch_execute(
            "UPDATE realtime.idempotency_keys SET created_at = now() - interval '25 hours' \
             WHERE room = 'trip:3' AND key = 'k'",
        )
        .await
        .unwrap();
    assert_eq!(publish_keyed(&client, "trip:3", "e", "k").await, 2);
    // The key now dedupes against the new message.
    assert_eq!(publish_keyed(&client, "trip:3", "e", "k").await, 2);
    let key_seq: i64 = client
        .query_one(
            "SELECT seq FROM realtime.idempotency_keys WHERE room = 'trip:3' AND key = 'k'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(key_seq, 2);
    assert_eq!(seqs(&client, "trip:3").await, [1, 2]);

    // Pruning deletes expired keys only.
    assert_eq!(publish_keyed(&client, "trip:3", "e", "old").await, 3);
    client
        .batch_execute(
            "UPDATE realtime.idempotency_keys SET created_at = now() - interval '25 hours' \
             WHERE key = 'old'",
        )
        .await
        .unwrap();
    let pruned: i64 = client
        .query_one("SELECT realtime.prune_idempotency_keys()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pruned, 1);
    assert_eq!(
        count(&client, "SELECT count(*) FROM realtime.idempotency_keys").await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected_with_a_clear_error_and_changes_nothing() {
    let (_cluster, client) = migrated().await;
    assert_eq!(publish(&client, "trip:ok", "e").await, 1);
    let big = "a".repeat(65_534); // as JSON text "aaa...": exactly 65536 bytes
    let too_big = "a".repeat(65_535);
    let long_room = "r".repeat(201);
    let long_event = "e".repeat(101);
    let long_key = "k".repeat(201);

    // (sql, params, SQLSTATE, message contains, constraint)
    type Case<'a> = (
        &'a str,
        Vec<Option<&'a str>>,
        &'a str,
        &'a str,
        Option<&'a str>,
    );
    let publish_sql = "SELECT realtime.publish($1, $2, $3::text::jsonb, $4)";
    let insert_sql = "INSERT INTO realtime.messages (room, event, payload, idempotency_key) \
                      VALUES ($1, $2, coalesce($3::text::jsonb, '{}'), $4)";
    let mut cases: Vec<Case> = Vec::new();
    for room in [
        None,
        Some(""),
        Some("trip 42"),
        Some("trip:*"),
        Some("a,b"),
        Some("alice@trip"),
        Some("trip/42"),
        Some(long_room.as_str()),
    ] {
        cases.push((
            publish_sql,
            vec![room, Some("e"), None, None],
            "22023",
            "realtime.publish: invalid room",
            None,
        ));
        let (code, text, constraint) = match room {
            None => ("23502", "room must not be NULL", None),
            Some(_) => (
                "23514",
                "realtime.messages: invalid room",
                Some("messages_room_format"),
            ),
        };
        cases.push((
            insert_sql,
            vec![room, Some("e"), None, None],
            code,
            text,
            constraint,
        ));
    }
    for event in [None, Some(""), Some("a b"), Some(long_event.as_str())] {
        cases.push((
            publish_sql,
            vec![Some("trip:ok"), event, None, None],
            "22023",
            "realtime.publish: invalid event",
            None,
        ));
    }
    cases.push((
        insert_sql,
        vec![Some("trip:ok"), Some("bad event"), None, None],
        "23514",
        "invalid event",
        Some("messages_event_format"),
    ));
    let too_big_json = format!("\"{too_big}\"");
    cases.push((
        publish_sql,
        vec![
            Some("trip:ok"),
            Some("e"),
            Some(too_big_json.as_str()),
            None,
        ],
        "23514",
        "payload is 65537 bytes as JSON text; the limit is 65536",
        Some("messages_payload_size"),
    ));
    for key in ["", long_key.as_str()] {
        cases.push((
            publish_sql,
            vec![Some("trip:ok"), Some("e"), None, Some(key)],
            "23514",
            "idempotency_key must be 1-200 characters",
            Some("messages_idempotency_key_length"),
        ));
    }
    cases.push((
        "INSERT INTO realtime.messages (room, event, created_at) VALUES ($1, $2, NULL)",
        vec![Some("trip:ok"), Some("e")],
        "23502",
        "created_at must not be NULL",
        None,
    ));
    cases.push((
        "INSERT INTO realtime.messages (room, event, payload) VALUES ($1, $2, NULL)",
        vec![Some("trip:ok"), Some("e")],
        "23502",
        "payload must not be NULL",
        None,
    ));
    cases.push((
        "INSERT INTO realtime.rooms (room) VALUES ($1)",
        vec![Some("bad room")],
        "23514",
        "rooms_room_format",
        Some("rooms_room_format"),
    ));

    for (sql, params, code, text, constraint) in &cases {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let err = client
            .execute(*sql, &params)
            .await
            .expect_err(&format!("{sql} {:?} is rejected", &params));
        let (got_code, message, got_constraint) = db_error(&err);
        assert_eq!(&got_code, code, "{sql}: {message}");
        assert!(message.contains(text), "{sql}: {message}");
        if constraint.is_some() {
            assert_eq!(got_constraint.as_deref(), *constraint, "{sql}: {message}");
        }
    }

    // Nothing changed: one message, one room, its counter at 1.
    assert_eq!(
        count(&client, "SELECT count(*) FROM realtime.messages").await,
        1
    );
    assert_eq!(
        count(&client, "SELECT count(*) FROM realtime.rooms").await,
        1
    );
    assert_eq!(last_seq(&client, "trip:ok").await, Some(1));
    assert_eq!(
        count(&client, "SELECT count(*) FROM realtime.idempotency_keys").await,
        0
    );

    // The limits are inclusive; a NULL payload in publish means {}.
    let at_limit = format!("\"{big}\"");
    let seq: i64 = client
        .query_one(
            "SELECT realtime.publish('trip:ok', 'e', $1::text::jsonb)",
            &[&at_limit],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 2);
    let seq: i64 = client
        .query_one(
            "SELECT realtime.publish('trip:ok', 'e', NULL, $1)",
            &[&"k".repeat(200)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(seq, 3);
    let room200 = "r".repeat(200);
    assert_eq!(publish(&client, &room200, &"e".repeat(100)).await, 1);
    assert_eq!(publish(&client, "Trip_9.a:b-c", "x.y:z-w_1").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_cannot_move_to_another_room_seq_or_day() {
    let (_cluster, client) = migrated().await;
    publish(&client, "trip:1", "e").await;
    publish(&client, "trip:1", "e").await;
    for set in [
        "seq = 5",
        "room = 'trip:2'",
        "created_at = now() + interval '2 days'",
    ] {
        let err = client
            .execute(
                &format!("UPDATE realtime.messages SET {set} WHERE room = 'trip:1' AND seq = 1"),
                &[],
            )
            .await
            .expect_err(set);
        let (code, message, _) = db_error(&err);
        assert_eq!(code, "23000", "{message}");
        assert!(message.contains("cannot change"), "{message}");
    }
    // Other columns may be corrected.
    let updated = client
        .execute(
            "UPDATE realtime.messages SET payload = '{\"fixed\": true}' \
             WHERE room = 'trip:1' AND seq = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(updated, 1);
    assert_eq!(seqs(&client, "trip:1").await, [1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_partitions_are_created_ahead_rows_land_in_their_day_and_only_old_ones_drop() {
    let (cluster, client) = migrated().await;
    let day = |offset| utc_day(&client, offset);
    let mut expected = Vec::new();
    for offset in -1..=3 {
        expected.push(format!("messages_p{}", day(offset).await));
    }
    expected.push("messages_default".to_owned());
    expected.sort();
    assert_eq!(
        partitions(&client).await,
        expected,
        "the migration's partitions"
    );

    let ensure = |days: i32| {
        let client = &client;
        async move {
            client
                .query_one("SELECT realtime.ensure_message_partitions($1)", &[&days])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }
    };
    assert_eq!(
        count(
            &client,
            "SELECT realtime.ensure_message_partitions()::bigint"
        )
        .await,
        0
    );
    assert_eq!(ensure(5).await, 2);

    // A row lands in its day's partition.
    let today = day(0).await;
    let part: String = client
        .query_one(
            "INSERT INTO realtime.messages (room, event) VALUES ('trip:1', 'e') \
             RETURNING tableoid::regclass::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(part, format!("realtime.messages_p{today}"));

    // A day without a partition goes to the default partition; creating the day moves it.
    let part: String = client
        .query_one(
            "INSERT INTO realtime.messages (room, event, created_at) \
             VALUES ('trip:1', 'later', now() + interval '8 days') \
             RETURNING tableoid::regclass::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(part, "realtime.messages_default");
    assert_eq!(ensure(8).await, 3);
    let later = day(8).await;
    let row = client
        .query_one(
            "SELECT seq, tableoid::regclass::text FROM realtime.messages WHERE event = 'later'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2, "the moved row keeps its seq");
    assert_eq!(
        row.get::<_, String>(1),
        format!("realtime.messages_p{later}")
    );
    assert_eq!(last_seq(&client, "trip:1").await, Some(2));
    assert_eq!(publish(&client, "trip:1", "e").await, 3);

    // Concurrent calls create each partition once.
    let url = cluster.url("postgres");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = sql_client(&url).await;
            client
                .query_one("SELECT realtime.ensure_message_partitions(12)", &[])
                .await
                .unwrap()
                .get::<_, i32>(0)
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap();
    }
    assert_eq!(created, 4);
    assert_eq!(
        partitions(&client).await.len(),
        14 + 1,
        "yesterday to today + 12, default"
    );

    // Retention: an old day (created by hand, as a DBA might) is dropped; recent days, the
    // default partition and old rows waiting in it are not.
    let old = day(-50).await;
    let old_end = day(-49).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE realtime.messages_p{old} PARTITION OF realtime.messages \
             FOR VALUES FROM ('{old} 00:00:00+00') TO ('{old_end} 00:00:00+00'); \
             INSERT INTO realtime.messages (room, event, created_at) \
             VALUES ('trip:1', 'old', '{old} 12:00:00+00'), \
                    ('trip:1', 'stray', now() - interval '40 days');"
        ))
        .await
        .unwrap();
    let dropped: i32 = client
        .query_one(
            "SELECT realtime.drop_message_partitions(interval '30 days')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(dropped, 1);
    let left = partitions(&client).await;
    assert!(!left.contains(&format!("messages_p{old}")), "{left:?}");
    assert!(left.contains(&format!("messages_p{}", day(-1).await)));
    assert!(left.contains(&"messages_default".to_owned()));
    assert_eq!(left.len(), 15);
    let events: Vec<String> = client
        .query(
            "SELECT event FROM realtime.messages WHERE room = 'trip:1' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["e", "later", "e", "stray"]);
    assert_eq!(
        count(
            &client,
            "SELECT realtime.drop_message_partitions(interval '30 days')::bigint"
        )
        .await,
        0
    );

    // Bad arguments.
    for sql in [
        "SELECT realtime.ensure_message_partitions(-1)",
        "SELECT realtime.ensure_message_partitions(NULL)",
        "SELECT realtime.drop_message_partitions(NULL)",
        "SELECT realtime.drop_message_partitions(interval '-1 day')",
    ] {
        let err = client.execute(sql, &[]).await.expect_err(sql);
        assert_eq!(db_error(&err).0, "22023", "{sql}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replay_query_reads_each_partition_through_the_primary_key() {
    let (_cluster, client) = migrated().await;
    client
        .batch_execute(
            "INSERT INTO realtime.messages (room, event) \
             SELECT 'room:' || (g % 20), 'e' FROM generate_series(1, 5000) g; \
             ANALYZE realtime.messages;",
        )
        .await
        .unwrap();
    let today = utc_day(&client, 0).await;
    let plan = text_rows(
        &client,
        "EXPLAIN SELECT room, seq, event, payload, sender, created_at FROM realtime.messages \
         WHERE room = 'room:3' AND seq > 10 ORDER BY seq LIMIT 100",
    )
    .await
    .join("\n");
    assert!(
        plan.contains(&format!("messages_p{today}_pkey")),
        "today's partition is read through its index:\n{plan}"
    );
    assert!(
        !plan.contains(&format!("Seq Scan on messages_p{today}")),
        "{plan}"
    );

    // As a prepared statement's generic plan (what a pooled server reuses): an ordered index
    // scan on every partition, merged in seq order.
    let plan = text_rows(
        &client,
        "SET plan_cache_mode = force_generic_plan; \
         PREPARE replay(text, bigint, bigint) AS \
           SELECT room, seq, event, payload, sender, created_at FROM realtime.messages \
           WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3; \
         EXPLAIN EXECUTE replay('room:3', 10, 100); \
         DEALLOCATE replay; RESET plan_cache_mode;",
    )
    .await
    .join("\n");
    let leaves = partitions(&client).await.len();
    let index_scans = plan
        .lines()
        .filter(|l| l.contains("Index Scan using") || l.contains("Index Only Scan using"))
        .count();
    assert!(plan.contains("Merge Append"), "{plan}");
    assert_eq!(index_scans, leaves, "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn can_join_and_can_publish_follow_membership_roles_and_can_be_overridden() {
    let (_cluster, client) = migrated().await;
    client
        .batch_execute(
            "INSERT INTO realtime.room_members (room, user_id, role) VALUES \
               ('trip:42', 'alice', 'owner'), ('trip:42', 'bob', 'writer'), \
               ('trip:42', 'carol', 'reader'); \
             INSERT INTO realtime.room_members (room, user_id) VALUES ('trip:43', 'alice');",
        )
        .await
        .unwrap();
    let check = |user: &'static str, room: &'static str| {
        let client = &client;
        async move {
            let row = client
                .query_one(
                    "SELECT realtime.can_join($1, $2), realtime.can_publish($1, $2)",
                    &[&user, &room],
                )
                .await
                .unwrap();
            (row.get::<_, bool>(0), row.get::<_, bool>(1))
        }
    };
    assert_eq!(check("alice", "trip:42").await, (true, true));
    assert_eq!(check("bob", "trip:42").await, (true, true));
    assert_eq!(check("carol", "trip:42").await, (true, false));
    assert_eq!(check("mallory", "trip:42").await, (false, false));
    assert_eq!(check("bob", "trip:43").await, (false, false));
    assert_eq!(
        check("alice", "trip:43").await,
        (true, true),
        "default role: writer"
    );
    let nulls = client
        .query_one(
            "SELECT realtime.can_join(NULL, 'trip:42'), realtime.can_publish('alice', NULL)",
            &[],
        )
        .await
        .unwrap();
    assert!(!nulls.get::<_, bool>(0) && !nulls.get::<_, bool>(1));

    client
        .batch_execute(
            "UPDATE realtime.room_members SET role = 'reader' WHERE user_id = 'bob'; \
             DELETE FROM realtime.room_members WHERE user_id = 'carol';",
        )
        .await
        .unwrap();
    assert_eq!(check("bob", "trip:42").await, (true, false));
    assert_eq!(check("carol", "trip:42").await, (false, false));
    let err = client
        .execute(
            "INSERT INTO realtime.room_members (room, user_id, role) \
             VALUES ('trip:42', 'eve', 'admin')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(db_error(&err).2.as_deref(), Some("room_members_role_valid"));

    // A deployment's own rule, through CREATE OR REPLACE.
    let default_def: String = client
        .query_one(
            "SELECT pg_get_functiondef('realtime.can_join(text, text)'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(
            "BEGIN; \
             CREATE OR REPLACE FUNCTION realtime.can_join(user_id text, room text) \
             RETURNS boolean LANGUAGE sql STABLE AS $$ \
               SELECT starts_with(can_join.room, 'public:') OR EXISTS ( \
                 SELECT 1 FROM realtime.room_members m \
                 WHERE m.room = can_join.room AND m.user_id = can_join.user_id) $$;",
        )
        .await
        .unwrap();
    assert_eq!(check("mallory", "public:lobby").await, (true, false));
    assert_eq!(check("mallory", "trip:42").await, (false, false));
    assert_eq!(check("alice", "trip:42").await, (true, true));
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(check("mallory", "public:lobby").await, (false, false));
    let def: String = client
        .query_one(
            "SELECT pg_get_functiondef('realtime.can_join(text, text)'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(def, default_def);
    let volatility: Vec<String> = client
        .query(
            "SELECT provolatile::text FROM pg_proc \
             WHERE oid IN ('realtime.can_join(text, text)'::regprocedure, \
                           'realtime.can_publish(text, text)'::regprocedure)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(volatility, ["s", "s"], "both STABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publication_streams_messages_as_the_root_table_with_the_assigned_seq() {
    let (cluster, client) = migrated().await;
    let tables: Vec<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
             WHERE pubname = 'triptrip_realtime' ORDER BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        tables.contains(&("realtime".into(), "messages".into())),
        "{tables:?}"
    );
    assert!(
        tables.contains(&("realtime".into(), "room_members".into())),
        "{tables:?}"
    );
    assert!(
        !tables
            .iter()
            .any(|(_, t)| t.starts_with("messages_") || t == "rooms" || t == "idempotency_keys"),
        "{tables:?}"
    );
    let via_root: bool = client
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = 'triptrip_realtime'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(via_root);
    let identity: String = client
        .query_one(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'realtime.room_members'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity, "d");

    let mut stream = start_stream(&cluster, "rooms_stream", "triptrip_realtime").await;
    // One transaction per statement (a multi-statement batch would be one transaction).
    for sql in [
        "INSERT INTO realtime.messages (room, seq, event, payload) \
         VALUES ('trip:42', 999, 'itinerary.updated', '{\"day\": 2}')",
        "BEGIN; SELECT realtime.publish('trip:42', 'draft'); ROLLBACK;",
        "INSERT INTO realtime.messages (room, event, sender, created_at) \
         VALUES ('trip:42', 'later', 'alice', now() + interval '2 days')",
        // A day without a partition: the row waits in the default partition, then moves into
        // its day's new partition without any change being streamed.
        "INSERT INTO realtime.messages (room, event, created_at) \
         VALUES ('trip:42', 'far', now() + interval '8 days')",
        "SELECT realtime.ensure_message_partitions(8)",
        "SELECT realtime.publish('trip:42', 'after.move')",
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES ('trip:42', 'bob', 'reader')",
        "DELETE FROM realtime.room_members WHERE room = 'trip:42' AND user_id = 'bob'",
    ] {
        client.batch_execute(sql).await.unwrap();
    }

    let mut messages = Vec::new();
    let mut members = Vec::new();
    read_until(&mut stream, WAIT, |event| {
        match event {
            Event::Change(Change::Insert { relation, new }) if relation.name == "messages" => {
                messages.push((relation.clone(), new.clone()));
            }
            Event::Change(
                change @ (Change::Insert { relation, .. } | Change::Delete { relation, .. }),
            ) if relation.name == "room_members" => {
                members.push(change.clone());
            }
            Event::Change(other) => panic!("unexpected change {other:?}"),
            _ => {}
        }
        members.len() == 2
    })
    .await;

    assert_eq!(
        messages.len(),
        4,
        "the rolled-back publish never arrives: {messages:?} {members:?}"
    );
    let mut got = BTreeMap::new();
    for (relation, new) in &messages {
        assert_eq!(
            (relation.namespace.as_str(), relation.name.as_str()),
            ("realtime", "messages"),
            "changes arrive as the root table, not a partition"
        );
        let names: Vec<_> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "room",
                "seq",
                "event",
                "payload",
                "sender",
                "idempotency_key",
                "created_at"
            ]
        );
        let keys: Vec<_> = relation
            .columns
            .iter()
            .filter(|c| c.is_key)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(keys, ["room", "seq", "created_at"]);
        assert_eq!(column(relation, new, "room"), Some("trip:42"));
        got.insert(
            column(relation, new, "seq").unwrap().to_owned(),
            (
                column(relation, new, "event").unwrap().to_owned(),
                column(relation, new, "sender").map(str::to_owned),
            ),
        );
    }
    assert_eq!(
        got,
        BTreeMap::from([
            ("1".to_owned(), ("itinerary.updated".to_owned(), None)),
            (
                "2".to_owned(),
                ("later".to_owned(), Some("alice".to_owned()))
            ),
            ("3".to_owned(), ("far".to_owned(), None)),
            ("4".to_owned(), ("after.move".to_owned(), None)),
        ])
    );
    let Change::Delete {
        relation,
        key: Some(key),
        ..
    } = &members[1]
    else {
        panic!("expected a delete with its key, got {:?}", members[1]);
    };
    assert_eq!(
        (relation.namespace.as_str(), relation.name.as_str()),
        ("realtime", "room_members")
    );
    assert_eq!(column(relation, key, "room"), Some("trip:42"));
    assert_eq!(column(relation, key, "user_id"), Some("bob"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_sql_examples_rerun_cleanly_and_restore_the_default_rules() {
    let (cluster, client) = migrated().await;
    let definitions = || async {
        client
            .query_one(
                "SELECT pg_get_functiondef('realtime.can_join(text, text)'::regprocedure) \
                     || pg_get_functiondef('realtime.can_publish(text, text)'::regprocedure)",
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    let before = definitions().await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/sql");
    for _ in 0..2 {
        for file in ["history.sql", "membership.sql", "rooms.sql"] {
            let sql = std::fs::read_to_string(format!("{dir}/{file}")).unwrap();
            let out = tokio::task::block_in_place(|| cluster.psql("postgres", &sql))
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            if file == "rooms.sql" {
                // retry_returned_same_seq, one_message_for_the_key, counter_unchanged
                assert_eq!(out.lines().filter(|l| *l == "t").count(), 3, "{out}");
                assert!(!out.lines().any(|l| l == "f"), "{out}");
            }
        }
    }
    assert_eq!(
        definitions().await,
        before,
        "membership.sql restores the defaults"
    );
    // Gap-free after two runs with a rolled-back publish in each.
    let n = last_seq(&client, "trip:42").await.unwrap();
    assert_eq!(seqs(&client, "trip:42").await, (1..=n).collect::<Vec<_>>());
    assert_eq!(
        count(
            &client,
            "SELECT count(*) FROM realtime.messages \
             WHERE idempotency_key = 'booking-B-1001-confirmed'"
        )
        .await,
        1
    );
}
