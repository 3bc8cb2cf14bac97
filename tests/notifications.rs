//! Notifications, in-app side: from a SQL insert in a service's transaction to the user's
//! connected devices, offline catch-up, read/dismiss across devices, the REST API, routing by
//! type and preference, idempotency and bad input. Real server, real PostgreSQL.

mod common;

use std::time::Duration;

use common::server::{http, setup, token, Client, TestServer};
use serde_json::{json, Value};
use tokio_postgres::Client as Sql;

async fn add_users(sql: &Sql, users: &[&str]) {
    for user in users {
        sql.execute("INSERT INTO realtime.users (user_id) VALUES ($1)", &[user])
            .await
            .unwrap();
    }
}

async fn notify(sql: &Sql, user: &str, kind: &str, payload: Value) -> i64 {
    sql.query_one(
        "SELECT realtime.notify($1, $2, $3::text::jsonb)",
        &[&user, &kind, &payload.to_string()],
    )
    .await
    .unwrap()
    .get(0)
}

/// Connects as `user` and subscribes to their notifications; returns the client and the ack.
async fn subscribe(server: &TestServer, user: &str, since: Option<u64>) -> (Client, Value) {
    let mut client = server.connect(user, &[]).await;
    let data = since.map_or_else(|| json!({}), |since| json!({ "since": since }));
    let id = client.request("notification:subscribe", data).await;
    let ack = client.ack(&id).await;
    (client, ack)
}

/// The next `notification:new` frames, `n` of them.
async fn notifications(client: &mut Client, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let frame = client.expect("notification:new").await;
        out.push(frame);
    }
    out
}

/// Polls `query` (one bigint) until it returns `want`, for up to 10 s.
async fn eventually(sql: &Sql, query: &str, want: i64) {
    let mut last = -1;
    for _ in 0..200 {
        last = sql.query_one(query, &[]).await.unwrap().get(0);
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{query}: {last}, wanted {want}");
}

async fn count(sql: &Sql, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_notification_reaches_every_device_of_its_user_only() {
    let (_cluster, server, sql) = setup(&[]).await;
    add_users(&sql, &["alice", "bob"]).await;
    let (mut phone, ack) = subscribe(&server, "alice", None).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(
        phone.expect("notification:badge").await["data"]["unread"],
        0
    );
    let (mut laptop, _) = subscribe(&server, "alice", None).await;
    laptop.expect("notification:badge").await;
    let (mut bob, _) = subscribe(&server, "bob", None).await;
    bob.expect("notification:badge").await;

    // A rolled-back notification is never delivered.
    sql.batch_execute(
        "BEGIN; SELECT realtime.notify('alice', 'trip_update', '{\"message\": \"never\"}'); ROLLBACK;",
    )
    .await
    .unwrap();
    let id = notify(
        &sql,
        "alice",
        "booking_confirmed",
        json!({"booking_id": "B-1"}),
    )
    .await;

    for device in [&mut phone, &mut laptop] {
        let frame = device.expect("notification:new").await;
        let data = &frame["data"];
        assert_eq!(data["id"], id);
        assert_eq!(data["seq"], 1, "the rolled-back one took no seq: {frame}");
        assert_eq!(data["type"], "booking_confirmed");
        assert_eq!(data["priority"], "high");
        assert_eq!(data["title"], "Booking confirmed");
        assert_eq!(data["body"], "Your booking B-1 is confirmed.");
        assert_eq!(data["payload"]["booking_id"], "B-1");
        assert_eq!(frame["seq"], 1);
        let badge = device.expect("notification:badge").await;
        assert_eq!(badge["data"]["unread"], 1);
    }
    // Bob's first notification is his own: nothing of Alice's reached him.
    notify(&sql, "bob", "trip_update", json!({"message": "hi bob"})).await;
    let frame = bob.expect("notification:new").await;
    assert_eq!(frame["data"]["body"], "hi bob");
    assert_eq!(frame["data"]["seq"], 1);

    // The in-app delivery is recorded as delivered once it reached a device.
    eventually(
        &sql,
        &format!(
            "SELECT count(*) FROM realtime.notification_deliveries \
             WHERE notification_id = {id} AND channel = 'in_app' AND state = 'delivered'"
        ),
        1,
    )
    .await;
    let history = count(
        &sql,
        &format!(
            "SELECT count(*) FROM realtime.notification_delivery_events \
             WHERE notification_id = {id} AND channel = 'in_app' AND event IN ('pending', 'delivered')"
        ),
    )
    .await;
    assert_eq!(history, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_device_catches_up_without_gap_or_duplicate() {
    let (_cluster, server, sql) = setup(&[]).await;
    add_users(&sql, &["alice"]).await;
    let (mut device, _) = subscribe(&server, "alice", None).await;
    notify(&sql, "alice", "trip_update", json!({"message": "one"})).await;
    let seen = notifications(&mut device, 1).await;
    assert_eq!(seen[0]["data"]["seq"], 1);
    drop(device);

    let mut missed = Vec::new();
    for n in 2..=4 {
        missed.push(notify(&sql, "alice", "trip_update", json!({ "message": n })).await);
    }
    // Writers keep going while the device comes back: the seam must hold.
    let writer = {
        let url = _cluster.url("postgres");
        tokio::spawn(async move {
            let sql = common::sql_client(&url).await;
            for n in 5..=20 {
                notify(&sql, "alice", "trip_update", json!({ "message": n })).await;
            }
        })
    };
    let (mut device, ack) = subscribe(&server, "alice", Some(1)).await;
    assert_eq!(ack["status"], "success", "{ack}");
    let frames = notifications(&mut device, 19).await;
    writer.await.unwrap();
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (2..=20).collect::<Vec<u64>>());
    for (frame, id) in frames.iter().zip(&missed) {
        assert_eq!(frame["data"]["id"], *id);
    }
    assert_eq!(frames[0]["data"]["body"], "2");

    // What the replay sent counts as delivered too.
    eventually(
        &sql,
        "SELECT count(*) FROM realtime.notification_deliveries \
         WHERE channel = 'in_app' AND state = 'delivered'",
        20,
    )
    .await;

    // A since beyond the user's log is answered with resume:failed, then live.
    let (mut ahead, _) = subscribe(&server, "alice", Some(500)).await;
    let failed = ahead.expect("resume:failed").await;
    assert_eq!(failed["data"]["seq"], 20, "{failed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_and_dismiss_follow_the_user_to_every_device() {
    let (_cluster, server, sql) = setup(&[]).await;
    add_users(&sql, &["alice", "bob"]).await;
    let first = notify(&sql, "alice", "trip_update", json!({"message": "a"})).await;
    let second = notify(&sql, "alice", "trip_update", json!({"message": "b"})).await;
    let bobs = notify(&sql, "bob", "trip_update", json!({"message": "b"})).await;

    let (mut phone, _) = subscribe(&server, "alice", None).await;
    assert_eq!(
        phone.expect("notification:badge").await["data"]["unread"],
        2
    );
    let (mut laptop, _) = subscribe(&server, "alice", None).await;
    laptop.expect("notification:badge").await;

    // Bob's id changes nothing for Alice (and nothing for Bob).
    let id = phone
        .request("notification:read", json!({ "ids": [first, bobs] }))
        .await;
    let ack = phone.ack(&id).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(ack["result"]["changed"], json!([first]));
    let read = laptop.expect("notification:read").await;
    assert_eq!(read["data"]["ids"], json!([first]));
    assert_eq!(
        laptop.expect("notification:badge").await["data"]["unread"],
        1
    );
    assert_eq!(
        phone.expect("notification:badge").await["data"]["unread"],
        1
    );
    let state: String = sql
        .query_one(
            "SELECT state FROM realtime.notification_deliveries WHERE notification_id = $1 AND channel = 'in_app'",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "read");
    assert_eq!(
        count(
            &sql,
            &format!(
                "SELECT count(*) FROM realtime.notifications WHERE id = {bobs} AND read_at IS NULL"
            )
        )
        .await,
        1
    );

    // Dismiss over REST; the devices hear of it.
    let alice = token("alice", &[], 3600);
    let (status, body) = http(
        server.port,
        "POST",
        "/api/notifications/dismiss",
        Some(&alice),
        &json!({ "ids": [second] }).to_string(),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let dismissed = phone.expect("notification:dismiss").await;
    assert_eq!(dismissed["data"]["ids"], json!([second]));
    assert_eq!(
        phone.expect("notification:badge").await["data"]["unread"],
        0
    );
    let (_, body) = http(server.port, "GET", "/api/notifications", Some(&alice), "")
        .await
        .unwrap();
    let list: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<i64> = list["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![first], "dismissed notifications are not listed");
    assert_eq!(list["unread"], 0);

    // Malformed marks are refused with a clear code and change nothing.
    for bad in [
        json!({ "ids": [] }),
        json!({ "ids": ["x"] }),
        json!({ "nope": 1 }),
    ] {
        phone.request("notification:read", bad.clone()).await;
        let error = phone.expect("error").await;
        assert_eq!(error["data"]["code"], "invalid_field", "{bad}: {error}");
        let (status, _) = http(
            server.port,
            "POST",
            "/api/notifications/read",
            Some(&alice),
            &bad.to_string(),
        )
        .await
        .unwrap();
        assert_eq!(status, 400, "{bad}");
    }
    let (status, _) = http(
        server.port,
        "POST",
        "/api/notifications/read",
        None,
        "{\"ids\":[1]}",
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_feed_pages_stably_while_notifications_arrive() {
    let (cluster, server, sql) = setup(&[]).await;
    add_users(&sql, &["alice"]).await;
    let mut expected = Vec::new();
    for n in 0..45 {
        expected.push(notify(&sql, "alice", "trip_update", json!({ "message": n })).await);
    }
    expected.reverse();
    let alice = token("alice", &[], 3600);
    let writer_url = cluster.url("postgres");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        // New notifications keep arriving between pages.
        let writer = common::sql_client(&writer_url).await;
        notify(&writer, "alice", "trip_update", json!({ "message": "new" })).await;
        let path = match &cursor {
            Some(c) => format!("/api/notifications?limit=20&cursor={c}"),
            None => "/api/notifications?limit=20".to_owned(),
        };
        let (status, body) = http(server.port, "GET", &path, Some(&alice), "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        for n in page["notifications"].as_array().unwrap() {
            seen.push(n["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    // The first page also holds the one inserted just before it; after it, exactly the
    // originals in order, no duplicate, nothing skipped.
    let originals: Vec<i64> = seen
        .iter()
        .copied()
        .filter(|id| expected.contains(id))
        .collect();
    assert_eq!(originals, expected);
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no duplicates across pages");

    let (status, body) = http(
        server.port,
        "GET",
        "/api/notifications?unread=true&limit=5",
        Some(&alice),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["notifications"].as_array().unwrap().len(), 5);
    assert_eq!(page["unread"], 48);

    for path in [
        "/api/notifications?limit=0",
        "/api/notifications?limit=101",
        "/api/notifications?cursor=garbage",
        "/api/notifications?cursor=bm90IGEgY3Vyc29y",
    ] {
        let (status, body) = http(server.port, "GET", path, Some(&alice), "")
            .await
            .unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("invalid_field"), "{body}");
    }
    let (status, _) = http(
        server.port,
        "GET",
        "/api/notifications",
        Some("not.a.jwt"),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_follows_types_preferences_and_the_critical_override() {
    let (_cluster, _server, sql) = setup(&[]).await;
    sql.batch_execute(
        "INSERT INTO realtime.users (user_id, email, phone) VALUES ('carol', 'carol@example.com', '+14155550100');
         INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('carol', 'fcm', 'tok-a'), ('carol', 'apns', 'ab12');
         INSERT INTO realtime.notification_webhooks (user_id, url, secret) VALUES ('carol', 'http://127.0.0.1:9/hook', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw');
         UPDATE realtime.notification_types SET channels = channels || '{webhook}' WHERE type = 'price_alert';",
    )
    .await
    .unwrap();
    let channels = |id: i64| {
        let sql = &sql;
        async move {
            let rows = sql
                .query(
                    "SELECT channel FROM realtime.notification_deliveries WHERE notification_id = $1 ORDER BY channel",
                    &[&id],
                )
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    // Without preferences: every channel of the type, one push delivery per device.
    let id = notify(
        &sql,
        "carol",
        "booking_confirmed",
        json!({"booking_id": "B"}),
    )
    .await;
    assert_eq!(channels(id).await, ["email", "in_app", "push", "push"]);
    let id = notify(&sql, "carol", "price_alert", json!({})).await;
    assert_eq!(channels(id).await, ["in_app", "push", "push", "webhook"]);

    // Push off for every type, email off for bookings; a type-specific row wins.
    sql.batch_execute(
        "INSERT INTO realtime.notification_preferences (user_id, channel, type, enabled) VALUES
             ('carol', 'push', NULL, false), ('carol', 'email', 'booking_confirmed', false),
             ('carol', 'push', 'price_alert', true);",
    )
    .await
    .unwrap();
    let id = notify(&sql, "carol", "booking_confirmed", json!({})).await;
    assert_eq!(channels(id).await, ["in_app"]);
    let id = notify(&sql, "carol", "price_alert", json!({})).await;
    assert_eq!(channels(id).await, ["in_app", "push", "push", "webhook"]);
    let id = notify(&sql, "carol", "trip_update", json!({})).await;
    assert_eq!(channels(id).await, ["in_app"]);

    // Critical ignores opt-outs, but not a channel the operator disabled.
    sql.batch_execute(
        "INSERT INTO realtime.notification_preferences (user_id, channel, type, enabled) VALUES
             ('carol', 'sms', NULL, false), ('carol', 'email', NULL, false);",
    )
    .await
    .unwrap();
    let id = notify(&sql, "carol", "payment_failed", json!({"booking_id": "B"})).await;
    assert_eq!(
        channels(id).await,
        ["email", "in_app", "push", "push", "sms"]
    );
    sql.batch_execute(
        "UPDATE realtime.notification_channels SET enabled = false WHERE channel = 'sms'",
    )
    .await
    .unwrap();
    let id = notify(&sql, "carol", "payment_failed", json!({})).await;
    assert_eq!(channels(id).await, ["email", "in_app", "push", "push"]);

    // A disabled type is not stored at all.
    sql.batch_execute(
        "UPDATE realtime.notification_types SET enabled = false WHERE type = 'trip_update'",
    )
    .await
    .unwrap();
    let before = count(&sql, "SELECT count(*) FROM realtime.notifications").await;
    let none: Option<i64> = sql
        .query_one("SELECT realtime.notify('carol', 'trip_update', '{}')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, None);
    assert_eq!(
        count(&sql, "SELECT count(*) FROM realtime.notifications").await,
        before
    );

    // An address the provider refused is not used again until it changes.
    sql.batch_execute("UPDATE realtime.users SET email_invalid_at = now() WHERE user_id = 'carol'")
        .await
        .unwrap();
    let id = notify(&sql, "carol", "payment_failed", json!({})).await;
    assert_eq!(channels(id).await, ["in_app", "push", "push"]);
    sql.batch_execute(
        "UPDATE realtime.users SET email = 'carol@example.org' WHERE user_id = 'carol'",
    )
    .await
    .unwrap();
    let id = notify(&sql, "carol", "payment_failed", json!({})).await;
    assert_eq!(channels(id).await, ["email", "in_app", "push", "push"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_make_a_repeat_a_no_op() {
    let (cluster, _server, sql) = setup(&[]).await;
    add_users(&sql, &["alice", "bob"]).await;
    let first: i64 = sql
        .query_one(
            "SELECT realtime.notify('alice', 'booking_confirmed', '{}', 'booking-7')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let again: i64 = sql
        .query_one(
            "SELECT realtime.notify('alice', 'booking_confirmed', '{\"other\": 1}', 'booking-7')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(first, again);
    // A plain INSERT with a used key inserts nothing.
    let inserted = sql
        .execute(
            "INSERT INTO realtime.notifications (user_id, type, idempotency_key) VALUES ('alice', 'booking_confirmed', 'booking-7')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 0);
    // Keys are per user.
    let bobs: i64 = sql
        .query_one(
            "SELECT realtime.notify('bob', 'booking_confirmed', '{}', 'booking-7')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(bobs, first);
    // Concurrent writers with one key: exactly one notification.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = cluster.url("postgres");
        tasks.push(tokio::spawn(async move {
            let sql = common::sql_client(&url).await;
            let id: i64 = sql
                .query_one(
                    "SELECT realtime.notify('alice', 'trip_update', '{}', 'race')",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            id
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM realtime.notifications WHERE user_id = 'alice'"
        )
        .await,
        2
    );
    // After 24 hours the key is free again.
    sql.batch_execute("UPDATE realtime.notification_keys SET created_at = now() - interval '25 hours' WHERE key = 'booking-7' AND user_id = 'alice'")
        .await
        .unwrap();
    let later: i64 = sql
        .query_one(
            "SELECT realtime.notify('alice', 'booking_confirmed', '{}', 'booking-7')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(later, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_input_gets_a_clear_error_and_changes_nothing() {
    let (_cluster, _server, sql) = setup(&[]).await;
    add_users(&sql, &["alice"]).await;
    let snapshot = || async {
        let mut counts = Vec::new();
        for table in [
            "notifications",
            "notification_deliveries",
            "notification_delivery_events",
            "notification_keys",
            "users",
        ] {
            counts.push(count(&sql, &format!("SELECT count(*) FROM realtime.{table}")).await);
        }
        let badge: Option<i64> = sql
            .query_opt(
                "SELECT last_seq FROM realtime.notification_badges WHERE user_id = 'alice'",
                &[],
            )
            .await
            .unwrap()
            .map(|r| r.get(0));
        (counts, badge)
    };
    let before = snapshot().await;
    let big = format!("'{{\"x\": \"{}\"}}'", "y".repeat(17_000));
    common::assert_refused(
        &sql,
        &[
        ("SELECT realtime.notify('nobody', 'trip_update', '{}')", "unknown user"),
        ("SELECT realtime.notify('alice', 'no_such_type', '{}')", "unknown notification type"),
        ("SELECT realtime.notify('alice', 'trip_update', '[1, 2]')", "payload must be a JSON object"),
        ("SELECT realtime.notify('alice', 'trip_update', 'null')", "payload must be a JSON object"),
        (&format!("SELECT realtime.notify('alice', 'trip_update', {big})"), "the limit is 16384"),
        ("SELECT realtime.notify('alice', 'trip_update', '{}', NULL, 'urgent')", "invalid priority"),
        ("SELECT realtime.notify('alice', 'trip_update', '{}', '')", "idempotency_key must be 1-200"),
        ("SELECT realtime.notify(NULL, 'trip_update', '{}')", "user_id must not be NULL"),
        ("INSERT INTO realtime.users (user_id, time_zone) VALUES ('zed', 'Mars/Olympus')", "unknown time zone"),
        ("INSERT INTO realtime.users (user_id, phone) VALUES ('zed', '555-1234')", "users_phone_format"),
        ("INSERT INTO realtime.users (user_id, email) VALUES ('zed', 'not an address')", "users_email_format"),
        ("INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('alice', 'webpush', 'https://push.example/x')", "push_tokens_webpush_keys"),
        ("INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('alice', 'pager', 't')", "push_tokens_platform"),
        ("INSERT INTO realtime.push_tokens (user_id, platform, token) VALUES ('ghost', 'fcm', 't')", "foreign key"),
        ("INSERT INTO realtime.notification_preferences (user_id, channel, enabled) VALUES ('alice', 'pigeon', false)", "foreign key"),
        ("INSERT INTO realtime.notification_types (type, channels, priority, template, title_template, body_template) VALUES ('x', '{fax}', 'low', 't', 't', 'b')", "notification_types_channels_known"),
        ("SELECT * FROM realtime.claim_deliveries(now(), 0)", "limit must be 1-10000"),
        ("SELECT realtime.record_delivery_attempts(now(), '{1}', '{}', '{}')", "arrays of different lengths"),
        ("SELECT realtime.mark_notifications('alice', '{1}', 'burn')", "action must be read or dismiss"),
        ("SELECT realtime.prune_notifications('-1 day')", "older_than must be a positive interval"),
    ],
    )
    .await;
    assert_eq!(snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_and_devices_over_rest() {
    let (_cluster, server, sql) = setup(&[]).await;
    let dave = token("dave", &[], 3600);
    let put = |body: Value| {
        let dave = dave.clone();
        let port = server.port;
        async move {
            http(
                port,
                "PUT",
                "/api/notifications/preferences",
                Some(&dave),
                &body.to_string(),
            )
            .await
            .unwrap()
        }
    };
    // A user who never had notifications gets the defaults.
    let (status, body) = http(
        server.port,
        "GET",
        "/api/notifications/preferences",
        Some(&dave),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let prefs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(prefs["time_zone"], "UTC");
    assert_eq!(prefs["dnd_start"], "22:00");

    let (status, body) = put(json!({
        "time_zone": "Asia/Tokyo",
        "dnd_start": "23:30",
        "dnd_end": "06:00",
        "preferences": [
            { "channel": "push", "enabled": false },
            { "channel": "push", "type": "price_alert", "enabled": true }
        ]
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    let prefs: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(prefs["time_zone"], "Asia/Tokyo");
    assert_eq!(prefs["dnd_start"], "23:30");
    assert_eq!(prefs["preferences"].as_array().unwrap().len(), 2);

    // Invalid input changes nothing, not even the valid parts of the same request.
    for bad in [
        json!({ "time_zone": "Nowhere/Land", "preferences": [{ "channel": "email", "enabled": false }] }),
        json!({ "dnd_start": "25:99" }),
        json!({ "preferences": [{ "channel": "pigeon", "enabled": false }] }),
        json!({ "preferences": [{ "channel": "push", "type": "no_such_type", "enabled": false }] }),
        json!({ "preferences": [{ "channel": "push" }] }),
        json!({ "colour": "blue" }),
        json!([1]),
    ] {
        let (status, body) = put(bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("invalid_field"), "{body}");
    }
    let (_, body) = http(
        server.port,
        "GET",
        "/api/notifications/preferences",
        Some(&dave),
        "",
    )
    .await
    .unwrap();
    let now: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(now, prefs);

    // Devices: a Web Push subscription needs its keys; tokens are per platform and unique.
    let post = |body: Value, method: &'static str| {
        let dave = dave.clone();
        let port = server.port;
        async move {
            http(
                port,
                method,
                "/api/push-tokens",
                Some(&dave),
                &body.to_string(),
            )
            .await
            .unwrap()
        }
    };
    let (status, _) = post(
        json!({ "platform": "webpush", "token": "https://push.example/1" }),
        "POST",
    )
    .await;
    assert_eq!(status, 400);
    let (status, body) = post(json!({ "platform": "fcm", "token": "device-1" }), "POST").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(
        json!({ "platform": "webpush", "token": "https://push.example/1", "p256dh": "BPk", "auth": "c2VjcmV0" }),
        "POST",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM realtime.push_tokens WHERE user_id = 'dave'"
        )
        .await,
        2
    );
    let (status, body) = post(json!({ "platform": "fcm", "token": "device-1" }), "DELETE").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["removed"], 1);
    assert_eq!(
        count(
            &sql,
            "SELECT count(*) FROM realtime.push_tokens WHERE user_id = 'dave'"
        )
        .await,
        1
    );
    let (status, body) = http(server.port, "GET", "/api/push/vapid-public-key", None, "")
        .await
        .unwrap();
    assert_eq!(status, 404, "no VAPID key configured: {body}");
    let (status, _) = http(server.port, "POST", "/api/push-tokens", None, "{}")
        .await
        .unwrap();
    assert_eq!(status, 401);
}
