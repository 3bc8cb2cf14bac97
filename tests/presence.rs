//! Presence and typing over real WebSocket clients, a real server and a real PostgreSQL: who
//! sees whom, transitions (away, grace, multi-device, dnd, invisible), blocks, typing, the
//! REST and SQL views, and bad input. Node death and write batching are in presence_nodes.rs.

mod common;

use std::time::Duration;

use common::server::{http, setup, token, Client, Received, TestServer};
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_postgres::Client as Sql;

/// A short grace, so that it passes within a test.
const SHORT_GRACE: &[(&str, &str)] = &[("TRIPTRIP_PRESENCE_GRACE_MS", "2000")];
/// A short time to away.
const SHORT_AWAY: &[(&str, &str)] = &[("TRIPTRIP_PRESENCE_AWAY_MS", "2500")];

async fn members(sql: &Sql, room: &str, users: &[&str]) {
    for user in users {
        sql.execute(
            "INSERT INTO realtime.room_members (room, user_id) VALUES ($1, $2)",
            &[&room, user],
        )
        .await
        .unwrap();
    }
}

/// Connects as `user` and subscribes to presence; returns the client and the ack's result.
async fn watch(server: &TestServer, user: &str) -> (Client, Value) {
    let mut client = server.connect(user, &[]).await;
    let result = subscribe(&mut client).await;
    (client, result)
}

async fn subscribe(client: &mut Client) -> Value {
    let id = client
        .request("presence:subscribe", json!({ "device": "test" }))
        .await;
    let ack = client.ack(&id).await;
    assert_eq!(ack["status"], "success", "{ack}");
    ack["result"].clone()
}

/// The users an ack lists, with their status.
fn listed(result: &Value) -> Vec<(String, String)> {
    result["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user"].as_str().unwrap().to_owned(),
                u["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Waits for a `presence:update` of `user` with `status`, skipping others; returns its data.
async fn becomes(client: &mut Client, user: &str, status: &str) -> Value {
    loop {
        let frame = client
            .find(|f| f["type"] == "presence:update" && f["data"]["user"] == user)
            .await
            .expect("socket open while waiting for presence");
        if frame["data"]["status"] == status {
            return frame["data"].clone();
        }
    }
}

/// The frames `wanted` accepts among those arriving within `within` (others are dropped).
async fn arriving(
    client: &mut Client,
    within: Duration,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.receive(left).await {
            Received::Frame(frame) if wanted(&frame) => seen.push(frame),
            Received::Frame(_) => {}
            Received::Silent | Received::Gone | Received::Close(..) => return seen,
        }
    }
}

fn update_of(user: &'static str) -> impl Fn(&Value) -> bool {
    move |f: &Value| f["type"] == "presence:update" && f["data"]["user"] == user
}

async fn request_ack(client: &mut Client, kind: &str, data: Value) -> Value {
    let id = client.request(kind, data).await;
    client.ack(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reaches_co_members_and_friends_only() {
    let (_cluster, server, sql) = setup(&[]).await;
    members(&sql, "trip:1", &["alice", "bob"]).await;
    members(&sql, "trip:2", &["dave", "erin"]).await;
    sql.execute(
        "INSERT INTO realtime.friends VALUES ('carol', 'alice')",
        &[],
    )
    .await
    .unwrap();
    let (mut bob, bobs) = watch(&server, "bob").await;
    assert_eq!(listed(&bobs), [("alice".to_owned(), "offline".to_owned())]);
    assert_eq!(bobs["mode"], "auto");
    let (mut carol, carols) = watch(&server, "carol").await;
    assert_eq!(
        listed(&carols),
        [("alice".to_owned(), "offline".to_owned())]
    );
    let (mut dave, daves) = watch(&server, "dave").await;
    assert_eq!(listed(&daves), [("erin".to_owned(), "offline".to_owned())]);

    let _alice = server.connect("alice", &[]).await;
    for viewer in [&mut bob, &mut carol] {
        let seen = becomes(viewer, "alice", "online").await;
        assert_eq!(seen["version"], 1, "{seen}");
        assert!(seen["last_seen"].is_string(), "{seen}");
    }
    assert!(
        arriving(&mut dave, Duration::from_millis(1500), update_of("alice"))
            .await
            .is_empty(),
        "dave shares nothing with alice"
    );

    // The state channel: a later subscriber starts from the current state.
    let (_erin, erins) = watch(&server, "erin").await;
    assert_eq!(listed(&erins), [("dave".to_owned(), "online".to_owned())]);
    let (_bob2, bobs) = watch(&server, "bob").await;
    assert_eq!(listed(&bobs), [("alice".to_owned(), "online".to_owned())]);
    assert_eq!(bobs["users"][0]["version"], 1);

    // REST and SQL list the room's members with status and last_seen.
    let (status, body) = http(
        server.port,
        "GET",
        "/api/rooms/trip:1/presence",
        Some(&token("bob", &[], 60)),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["room"], "trip:1");
    let members = body["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{body}");
    assert_eq!(members[0]["user"], "alice");
    assert_eq!(members[0]["status"], "online");
    assert!(members[0]["last_seen"].is_string());
    assert_eq!(members[1]["status"], "online", "bob himself");
    let online: i64 = sql
        .query_one(
            "SELECT count(*) FROM realtime.room_presence('trip:1') WHERE status = 'online'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(online, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_and_reconnects_within_the_grace_are_invisible_to_others() {
    let (_cluster, server, sql) = setup(SHORT_GRACE).await;
    members(&sql, "trip:1", &["alice", "bob"]).await;
    let (mut bob, _) = watch(&server, "bob").await;
    let mut phone = server.connect("alice", &[]).await;
    let laptop = server.connect("alice", &[]).await;
    becomes(&mut bob, "alice", "online").await;

    // One device closes: alice is still online through the other.
    phone.ws.close(None).await.unwrap();
    drop(phone);
    let seen = arriving(&mut bob, Duration::from_millis(3500), update_of("alice")).await;
    assert!(seen.is_empty(), "{seen:?}");

    // The last one closes and reconnects within the grace: nothing shows.
    drop(laptop);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = server.connect("alice", &[]).await;
    let seen = arriving(&mut bob, Duration::from_millis(3500), update_of("alice")).await;
    assert!(seen.is_empty(), "{seen:?}");

    // Gone for good: offline once the grace has passed, last seen when the socket closed.
    let closed_at = time::OffsetDateTime::now_utc();
    drop(again);
    assert!(
        arriving(&mut bob, Duration::from_millis(1200), update_of("alice"))
            .await
            .is_empty(),
        "not before the grace"
    );
    let offline = becomes(&mut bob, "alice", "offline").await;
    let last_seen = time::OffsetDateTime::parse(
        offline["last_seen"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        (last_seen - closed_at).abs() < time::Duration::milliseconds(900),
        "{last_seen} vs {closed_at}"
    );
    let reasons: Vec<String> = sql
        .query(
            "SELECT end_reason FROM realtime.presence_session_history \
             WHERE user_id = 'alice' ORDER BY ended_at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons, ["disconnect", "replaced", "disconnect"]);
    let transitions: Vec<(String, String)> = sql
        .query(
            "SELECT from_state, to_state FROM realtime.presence_transitions \
             WHERE user_id = 'alice' ORDER BY at",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        transitions,
        [
            ("offline".to_owned(), "online".to_owned()),
            ("online".to_owned(), "offline".to_owned())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_user_turns_away_and_activity_brings_them_back() {
    let (_cluster, server, sql) = setup(SHORT_AWAY).await;
    members(&sql, "trip:1", &["alice", "bob"]).await;
    let (mut bob, _) = watch(&server, "bob").await;
    let mut alice = server.connect("alice", &[]).await;
    becomes(&mut bob, "alice", "online").await;
    // Heartbeats are not activity: alice answers pings, sends nothing else.
    alice.send(json!({ "type": "pong" })).await;
    let away = becomes(&mut bob, "alice", "away").await;
    assert!(away["last_seen"].is_string());
    let ack = request_ack(&mut alice, "presence:activity", json!({})).await;
    assert_eq!(ack["status"], "success", "{ack}");
    becomes(&mut bob, "alice", "online").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnd_shows_and_invisible_users_appear_offline_everywhere() {
    let (_cluster, server, sql) = setup(&[]).await;
    members(&sql, "trip:1", &["alice", "bob"]).await;
    let (mut bob, _) = watch(&server, "bob").await;
    let bob_token = token("bob", &[], 60);
    let mut alice = server.connect("alice", &[]).await;
    assert_eq!(alice.join("trip:1", None).await["status"], "success");
    assert_eq!(bob.join("trip:1", None).await["status"], "success");
    becomes(&mut bob, "alice", "online").await;

    let ack = request_ack(&mut alice, "presence:set", json!({ "status": "dnd" })).await;
    assert_eq!(ack["result"]["mode"], "dnd", "{ack}");
    becomes(&mut bob, "alice", "dnd").await;

    request_ack(&mut alice, "presence:set", json!({ "status": "invisible" })).await;
    becomes(&mut bob, "alice", "offline").await;
    // Nowhere to be seen: REST, a new subscriber, typing.
    let (_, body) = http(
        server.port,
        "GET",
        "/api/rooms/trip:1/presence",
        Some(&bob_token),
        "",
    )
    .await
    .unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["members"][0]["user"], "alice", "{body}");
    assert_eq!(body["members"][0]["status"], "offline", "{body}");
    let (_, bobs) = watch(&server, "bob").await;
    assert_eq!(listed(&bobs), [("alice".to_owned(), "offline".to_owned())]);
    let typed = request_ack(&mut alice, "presence:typing", json!({ "room": "trip:1" })).await;
    assert_eq!(typed["result"]["relayed"], false, "{typed}");
    assert!(arriving(&mut bob, Duration::from_millis(800), |f| f["type"]
        == "presence:typing")
    .await
    .is_empty());
    // Her own devices know; operators see the real state.
    let (_, mine) = watch(&server, "alice").await;
    assert_eq!(mine["mode"], "invisible");
    let state: String = sql
        .query_one(
            "SELECT state FROM realtime.presence_overview WHERE user_id = 'alice'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "invisible");

    request_ack(&mut alice, "presence:set", json!({ "status": "online" })).await;
    becomes(&mut bob, "alice", "online").await;
    // A service can set it too, in SQL.
    let status: String = sql
        .query_one("SELECT realtime.set_presence_mode('alice', 'dnd')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "dnd");
    becomes(&mut bob, "alice", "dnd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_users_get_nothing_from_the_moment_the_block_commits() {
    let (_cluster, server, sql) = setup(&[]).await;
    members(&sql, "trip:1", &["alice", "bob", "carol"]).await;
    let (mut bob, _) = watch(&server, "bob").await;
    let (mut carol, _) = watch(&server, "carol").await;
    let (mut alice, seen) = watch(&server, "alice").await;
    for viewer in [&mut bob, &mut carol] {
        becomes(viewer, "alice", "online").await;
    }
    // Bob's online may have been written before alice subscribed: then it is in her ack.
    if !listed(&seen).contains(&("bob".to_owned(), "online".to_owned())) {
        becomes(&mut alice, "bob", "online").await;
    }

    sql.execute(
        "INSERT INTO realtime.blocks (user_id, blocked_id) VALUES ('alice', 'bob')",
        &[],
    )
    .await
    .unwrap();
    // Bob is told alice is out of sight (no version: not a change of hers), and so is alice.
    let gone = becomes(&mut bob, "alice", "offline").await;
    assert_eq!(gone["version"], Value::Null, "{gone}");
    assert_eq!(gone["last_seen"], Value::Null);
    let gone = becomes(&mut alice, "bob", "offline").await;
    assert_eq!(gone["version"], Value::Null);

    request_ack(&mut alice, "presence:set", json!({ "status": "dnd" })).await;
    becomes(&mut carol, "alice", "dnd").await;
    assert!(
        arriving(&mut bob, Duration::from_millis(1500), update_of("alice"))
            .await
            .is_empty(),
        "bob gets nothing"
    );
    let (_, bobs) = watch(&server, "bob").await;
    assert_eq!(listed(&bobs), [("carol".to_owned(), "online".to_owned())]);
    let (_, body) = http(
        server.port,
        "GET",
        "/api/rooms/trip:1/presence",
        Some(&token("bob", &[], 60)),
        "",
    )
    .await
    .unwrap();
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["members"][0]["user"], "alice");
    assert_eq!(body["members"][0]["status"], "offline", "{body}");
    assert_eq!(body["members"][0]["last_seen"], Value::Null);

    // Nor her typing, in a room they share.
    for client in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(client.join("trip:1", None).await["status"], "success");
    }
    let typed = request_ack(&mut alice, "presence:typing", json!({ "room": "trip:1" })).await;
    assert_eq!(typed["result"]["relayed"], false, "{typed}");
    assert!(arriving(&mut bob, Duration::from_millis(800), |f| f["type"]
        == "presence:typing")
    .await
    .is_empty());

    // Unblocked: typing flows again, and the next subscribe sees her.
    sql.execute("DELETE FROM realtime.blocks", &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let typed = request_ack(&mut alice, "presence:typing", json!({ "room": "trip:1" })).await;
    assert_eq!(typed["result"]["relayed"], true, "{typed}");
    let frame = bob.expect("presence:typing").await;
    assert_eq!(
        frame["data"],
        json!({"room": "trip:1", "user": "alice", "typing": true})
    );
    let (_, bobs) = watch(&server, "bob").await;
    assert_eq!(listed(&bobs)[0], ("alice".to_owned(), "dnd".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_relayed_at_2_hz_and_stops_after_3_s_of_silence() {
    let (_cluster, server, sql) = setup(&[]).await;
    members(&sql, "trip:1", &["alice", "bob"]).await;
    let mut alice = server.connect("alice", &[]).await;
    let mut bob = server.connect("bob", &[]).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.join("trip:1", None).await["status"], "success");
    }
    let is_typing = |f: &Value| f["type"] == "presence:typing";
    // A keystroke every 100 ms for 1.5 s: at most 4 relays, then one stop 3 s after the last.
    for _ in 0..15 {
        alice
            .send(json!({ "type": "presence:typing", "data": { "room": "trip:1" } }))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = arriving(&mut bob, Duration::from_millis(2500), is_typing).await;
    assert!(
        (2..=4).contains(&seen.len()) && seen.iter().all(|f| f["data"]["typing"] == true),
        "{seen:?}"
    );
    let stop = bob.expect("presence:typing").await;
    assert_eq!(stop["data"]["typing"], false, "{stop}");

    // An explicit stop, and leaving the room, stop at once.
    request_ack(&mut alice, "presence:typing", json!({ "room": "trip:1" })).await;
    assert_eq!(bob.expect("presence:typing").await["data"]["typing"], true);
    let ack = request_ack(
        &mut alice,
        "presence:typing",
        json!({ "room": "trip:1", "typing": false }),
    )
    .await;
    assert_eq!(ack["result"]["relayed"], true);
    assert_eq!(bob.expect("presence:typing").await["data"]["typing"], false);
    request_ack(&mut alice, "presence:typing", json!({ "room": "trip:1" })).await;
    assert_eq!(bob.expect("presence:typing").await["data"]["typing"], true);
    request_ack(&mut alice, "room:leave", json!({ "room": "trip:1" })).await;
    assert_eq!(bob.expect("presence:typing").await["data"]["typing"], false);
    assert!(
        arriving(&mut bob, Duration::from_millis(3500), is_typing)
            .await
            .is_empty(),
        "never stored, never repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (_cluster, server, sql) = setup(&[]).await;
    members(&sql, "trip:1", &["alice", "bob"]).await;
    let (mut bob, _) = watch(&server, "bob").await;
    let mut alice = server.connect("alice", &[]).await;
    becomes(&mut bob, "alice", "online").await;
    // Refused by the parser: an error frame each, nothing else.
    for (kind, data) in [
        ("presence:set", json!({ "status": "away" })),
        ("presence:set", json!({ "status": "offline" })),
        ("presence:set", json!({ "status": "bogus" })),
        ("presence:set", json!({ "status": 1 })),
        ("presence:set", json!({})),
        ("presence:set", json!("dnd")),
        ("presence:set", json!({ "status": "dnd", "until": "never" })),
        ("presence:typing", json!({ "room": "bad room" })),
        ("presence:typing", json!({ "room": "@presence:bob" })),
        ("presence:typing", json!({})),
        ("presence:subscribe", json!({ "device": "" })),
        ("presence:subscribe", json!({ "device": "x".repeat(65) })),
    ] {
        alice.request(kind, data.clone()).await;
        let error = alice.expect("error").await;
        assert_eq!(
            error["data"]["code"], "invalid_field",
            "{kind} {data}: {error}"
        );
    }
    alice.send(json!({ "type": "presence:set" })).await;
    assert_eq!(alice.expect("error").await["data"]["code"], "invalid_field");
    alice.send(json!({ "type": "presence:explode" })).await;
    assert_eq!(alice.expect("error").await["data"]["code"], "unknown_event");
    // Refused by the session: typing in a room not joined.
    let ack = request_ack(&mut alice, "presence:typing", json!({ "room": "trip:1" })).await;
    assert_eq!(ack["error"]["code"], "not_joined", "{ack}");
    alice
        .ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"presence:set","data":{"status":"dnd""#.into(),
        ))
        .await
        .unwrap();
    assert_eq!(alice.expect("error").await["data"]["code"], "bad_frame");

    // Nothing changed: no mode stored, nothing sent, the connection still works.
    assert!(
        arriving(&mut bob, Duration::from_millis(1500), update_of("alice"))
            .await
            .is_empty()
    );
    let modes: i64 = sql
        .query_one("SELECT count(*) FROM realtime.presence_settings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(modes, 0);
    let ack = request_ack(&mut alice, "presence:set", json!({ "status": "dnd" })).await;
    assert_eq!(ack["status"], "success");
    becomes(&mut bob, "alice", "dnd").await;

    // REST: no token, a bad token, a room not joinable, a bad room name.
    let port = server.port;
    let outsider = token("mallory", &[], 60);
    for (path, bearer, status) in [
        ("/api/rooms/trip:1/presence", None, 401),
        ("/api/rooms/trip:1/presence", Some("not-a-jwt"), 401),
        ("/api/rooms/trip:1/presence", Some(outsider.as_str()), 403),
        (
            "/api/rooms/bad%20room/presence",
            Some(outsider.as_str()),
            400,
        ),
    ] {
        let (got, body) = http(port, "GET", path, bearer, "").await.unwrap();
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(r#""code""#), "{body}");
    }
    // A token pattern grants the room like a join does.
    let granted = token("mallory", &["trip:*"], 60);
    let (got, _) = http(
        port,
        "GET",
        "/api/rooms/trip:1/presence",
        Some(&granted),
        "",
    )
    .await
    .unwrap();
    assert_eq!(got, 200);
    common::assert_refused(
        &sql,
        &[
            (
                "SELECT realtime.set_presence_mode('alice', 'away')",
                "invalid mode",
            ),
            (
                "SELECT realtime.set_presence_mode('', 'dnd')",
                "must not be empty",
            ),
            (
                "INSERT INTO realtime.blocks VALUES ('bob', 'bob')",
                "blocks_not_self",
            ),
            (
                "INSERT INTO realtime.friends VALUES ('bob', 'bob')",
                "friends_not_self",
            ),
            (
                "SELECT realtime.presence_apply(gen_random_uuid(), '{}')",
                "JSON array",
            ),
        ],
    )
    .await;
}
