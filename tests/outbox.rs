//! The transactional outbox: events services commit to `realtime.outbox` reach the rooms and
//! webhooks subscribed to their topic, in order per topic, at least once, also across a
//! `kill -9` of the relay mid-batch. Real server, real PostgreSQL, a webhook receiver on
//! loopback that checks signatures.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::server::{metrics, setup};
use serde_json::Value;
use standins::webhook::WebhookStandIn;
use tokio_postgres::Client as Sql;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn subscribe_webhook(sql: &Sql, pattern: &str, receiver: &WebhookStandIn) {
    sql.execute(
        "INSERT INTO realtime.outbox_subscriptions (topic_pattern, webhook_url, webhook_secret) VALUES ($1, $2, $3)",
        &[&pattern, &receiver.url(), &SECRET],
    )
    .await
    .unwrap();
}

/// Waits until every cursor of the subscriptions has caught up with its topic.
async fn drained(sql: &Sql) {
    for _ in 0..400 {
        let pending: i64 = sql
            .query_one(
                "SELECT coalesce(sum(pending), 0)::bigint FROM realtime.outbox_backlog",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the outbox did not drain");
}

/// (topic, seq) of each request in arrival order, checking every signature.
fn received(receiver: &WebhookStandIn) -> Vec<(String, i64)> {
    receiver
        .requests()
        .iter()
        .map(|r| {
            assert!(r.verified, "signed with the subscription's secret");
            let body = r.json().unwrap();
            assert_eq!(
                r.id.as_deref(),
                Some(
                    format!("outbox:{}:{}", body["topic"].as_str().unwrap(), body["seq"]).as_str()
                )
            );
            (
                body["topic"].as_str().unwrap().to_owned(),
                body["seq"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_events_reach_rooms_and_webhooks_in_order_per_topic() {
    let receiver = WebhookStandIn::start(SECRET).await.unwrap();
    let (cluster, server, sql) = setup(&[]).await;
    // Events committed before a subscription existed are not its business.
    sql.batch_execute("SELECT realtime.outbox_publish('orders:0', 'created', '{}')")
        .await
        .unwrap();
    sql.batch_execute(
        "INSERT INTO realtime.outbox_subscriptions (topic_pattern, room) VALUES ('orders:*', 'ops:orders')",
    )
    .await
    .unwrap();
    subscribe_webhook(&sql, "orders:*", &receiver).await;
    let mut client = server.connect("ops", &["ops:*"]).await;
    client.join("ops:orders", None).await;

    // Four services write concurrently, each in its own transactions; one rolls back.
    let mut writers = Vec::new();
    for w in 1..=4 {
        let url = cluster.url("postgres");
        let w: i32 = w;
        writers.push(tokio::spawn(async move {
            let sql = common::sql_client(&url).await;
            for n in 1..=25i32 {
                sql.execute(
                    "INSERT INTO realtime.outbox (topic, event, payload) VALUES ($1, 'order.changed', jsonb_build_object('w', $2::int, 'n', $3::int))",
                    &[&format!("orders:{w}"), &w, &n],
                )
                .await
                .unwrap();
            }
            sql.batch_execute(
                "BEGIN; SELECT realtime.outbox_publish('orders:1', 'never', '{}'); ROLLBACK;",
            )
            .await
            .unwrap();
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    drained(&sql).await;

    let messages = client.messages(100).await;
    let mut next: HashMap<i64, i64> = HashMap::new();
    for (room, _, payload) in &messages {
        assert_eq!(room, "ops:orders");
        let (w, n) = (
            payload["w"].as_i64().unwrap(),
            payload["n"].as_i64().unwrap(),
        );
        let expected = next.entry(w).or_insert(1);
        assert_eq!(n, *expected, "writer {w}'s events reach the room in order");
        *expected += 1;
    }
    assert_eq!(next.len(), 4);
    let hooks = received(&receiver);
    assert_eq!(hooks.len(), 100, "{hooks:?}");
    let mut last: HashMap<String, i64> = HashMap::new();
    for (topic, seq) in &hooks {
        let previous = last.insert(topic.clone(), *seq).unwrap_or(0);
        assert_eq!(*seq, previous + 1, "{topic} in order with no gap");
    }
    assert_eq!(last.len(), 4);
    assert!(!last.contains_key("orders:0"));
    let bodies: Vec<Value> = receiver
        .requests()
        .iter()
        .map(|r| r.json().unwrap())
        .collect();
    assert!(bodies
        .iter()
        .all(|b| b["event"] == "order.changed" && b["type"] == "outbox"));
    let m = metrics(server.port).await;
    assert_eq!(m.get("triptrip_outbox_to_rooms_total"), Some(&100.0));
    assert_eq!(m.get("triptrip_outbox_to_webhooks_total"), Some(&100.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_loses_nothing() {
    let receiver = WebhookStandIn::start(SECRET).await.unwrap();
    let (_cluster, mut server, sql) = setup(&[]).await;
    subscribe_webhook(&sql, "trips:9", &receiver).await;
    receiver.hold(Duration::from_secs(3));
    sql.batch_execute(
        "SELECT realtime.outbox_publish('trips:9', 'step', jsonb_build_object('n', n)) FROM generate_series(1, 20) n",
    )
    .await
    .unwrap();
    for _ in 0..200 {
        if receiver.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(receiver.request_count() > 0, "the relay started sending");
    server.kill9();
    receiver.hold(Duration::ZERO);
    server.restart().await;
    drained(&sql).await;
    let hooks = received(&receiver);
    let mut first_seen = Vec::new();
    for (_, seq) in &hooks {
        if !first_seen.contains(seq) {
            first_seen.push(*seq);
        }
    }
    assert_eq!(
        first_seen,
        (1..=20).collect::<Vec<i64>>(),
        "every event, in order"
    );
    assert!(hooks.len() > 20, "the interrupted batch was sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_waits_without_holding_up_other_topics() {
    let receiver = WebhookStandIn::start(SECRET).await.unwrap();
    let (_cluster, _server, sql) = setup(&[]).await;
    subscribe_webhook(&sql, "a:1", &receiver).await;
    sql.batch_execute(
        "INSERT INTO realtime.outbox_subscriptions (topic_pattern, room) VALUES ('*', 'audit:all')",
    )
    .await
    .unwrap();
    receiver.fail_next(1, 503);
    sql.batch_execute(
        "SELECT realtime.outbox_publish('a:1', 'x', '{}'); SELECT realtime.outbox_publish('b:1', 'y', '{}');",
    )
    .await
    .unwrap();
    let mut row = None;
    for _ in 0..200 {
        let r = sql
            .query_opt(
                "SELECT failures, last_error, next_attempt_at - now() > interval '50 seconds' \
                 FROM realtime.outbox_backlog WHERE topic = 'a:1' AND target LIKE 'http%' AND failures > 0",
                &[],
            )
            .await
            .unwrap();
        if r.is_some() {
            row = r;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = row.expect("the failure is recorded");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(
        row.get::<_, String>(1).contains("503"),
        "{}",
        row.get::<_, String>(1)
    );
    assert!(row.get::<_, bool>(2), "the next attempt waits a minute");
    // The room subscription of every topic went on meanwhile.
    for _ in 0..200 {
        let relayed: i64 = sql
            .query_one(
                "SELECT count(*) FROM realtime.messages WHERE room = 'audit:all'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if relayed == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the room subscription did not get both events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_outbox_input_gets_a_clear_error_and_changes_nothing() {
    let (_cluster, _server, sql) = setup(&[]).await;
    let count = |table: &'static str| {
        let sql = &sql;
        async move {
            sql.query_one(&format!("SELECT count(*) FROM realtime.{table}"), &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        }
    };
    let before = (
        count("outbox").await,
        count("outbox_topics").await,
        count("outbox_subscriptions").await,
    );
    let big = format!("'{{\"x\": \"{}\"}}'", "y".repeat(70_000));
    common::assert_refused(
        &sql,
        &[
        ("SELECT realtime.outbox_publish('bad topic', 'e', '{}')", "invalid topic"),
        ("SELECT realtime.outbox_publish('', 'e', '{}')", "invalid topic"),
        ("SELECT realtime.outbox_publish('t', 'bad event', '{}')", "invalid event"),
        ("SELECT realtime.outbox_publish('t', 'e', NULL)", "payload must not be NULL"),
        (&format!("SELECT realtime.outbox_publish('t', 'e', {big})"), "the limit is 65536"),
        ("INSERT INTO realtime.outbox_subscriptions (topic_pattern, room, webhook_url, webhook_secret) VALUES ('t', 'r', 'http://x', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')", "outbox_subscriptions_one_target"),
        ("INSERT INTO realtime.outbox_subscriptions (topic_pattern) VALUES ('t')", "outbox_subscriptions_one_target"),
        ("INSERT INTO realtime.outbox_subscriptions (topic_pattern, room) VALUES ('a*b', 'r')", "outbox_subscriptions_pattern"),
        ("INSERT INTO realtime.outbox_subscriptions (topic_pattern, room) VALUES ('t', 'bad room')", "outbox_subscriptions_room"),
        ("INSERT INTO realtime.outbox_subscriptions (topic_pattern, webhook_url, webhook_secret) VALUES ('t', 'ftp://x', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw')", "outbox_subscriptions_webhook"),
        ("INSERT INTO realtime.outbox_subscriptions (topic_pattern, webhook_url, webhook_secret) VALUES ('t', 'http://x', 'short')", "outbox_subscriptions_webhook"),
        ("SELECT * FROM realtime.claim_outbox_cursors(0)", "limit must be 1-10000"),
        ("SELECT realtime.prune_outbox('-1 day')", "older_than must be a positive interval"),
    ],
    )
    .await;
    let after = (
        count("outbox").await,
        count("outbox_topics").await,
        count("outbox_subscriptions").await,
    );
    assert_eq!(after, before);
}
