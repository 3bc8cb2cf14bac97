//! The activity feed: activities recorded with SQL reach, live, exactly the users allowed to see
//! them (private, collaborators, public), and the feed pages stably over HTTP while activities
//! arrive. Real server, real PostgreSQL, real WebSocket clients.

mod common;

use common::server::{http, setup, token, Client, TestServer};
use serde_json::{json, Value};
use tokio_postgres::Client as Sql;

async fn record(sql: &Sql, kind: &str, actor: &str, room: Option<&str>, visibility: &str) -> i64 {
    sql.query_one(
        "SELECT realtime.record_activity($1, $2, $3, $4, target_type => 'item', target_id => 'i-1', \
         target_name => 'Kinkaku-ji', context => '{\"day\": 2}', actor => '{\"name\": \"A\"}')",
        &[&kind, &actor, &room, &visibility],
    )
    .await
    .unwrap()
    .get(0)
}

async fn subscribe(server: &TestServer, user: &str, rooms: &[&str]) -> (Client, Value) {
    let mut client = server.connect(user, &[]).await;
    let id = client
        .request("activity:subscribe", json!({ "rooms": rooms }))
        .await;
    let ack = client.ack(&id).await;
    (client, ack)
}

/// The ids of `activity:new` frames until (and without) the one with id `marker`, duplicates
/// dropped as clients do (one activity can arrive through two of a connection's streams).
async fn until(client: &mut Client, marker: i64) -> Vec<i64> {
    let mut ids = Vec::new();
    loop {
        let frame = client.expect("activity:new").await;
        let id = frame["data"]["id"].as_i64().unwrap();
        if id == marker {
            return ids;
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activities_reach_exactly_those_allowed_to_see_them() {
    let (_cluster, server, sql) = setup(&[]).await;
    sql.batch_execute(
        "INSERT INTO realtime.room_members (room, user_id) VALUES ('trip:42', 'alice'), ('trip:42', 'bob');
         INSERT INTO realtime.follows (follower_id, followee_id) VALUES ('carol', 'alice');",
    )
    .await
    .unwrap();
    let (mut alice, ack) = subscribe(&server, "alice", &["trip:42"]).await;
    assert_eq!(ack["status"], "success", "{ack}");
    let (mut bob, _) = subscribe(&server, "bob", &["trip:42"]).await;
    let (mut carol, ack) = subscribe(&server, "carol", &[]).await;
    assert_eq!(ack["result"]["following"], json!(["alice"]));
    // Dave may not follow the trip's activities.
    let (mut dave, ack) = subscribe(&server, "dave", &["trip:42"]).await;
    assert_eq!(ack["status"], "error");
    assert_eq!(ack["error"]["code"], "forbidden", "{ack}");
    let id = dave.request("activity:subscribe", json!({})).await;
    dave.ack(&id).await;

    let collaborators = record(
        &sql,
        "trip.item_added",
        "alice",
        Some("trip:42"),
        "collaborators",
    )
    .await;
    let private = record(&sql, "trip.created", "alice", Some("trip:42"), "private").await;
    let public = record(&sql, "review.posted", "alice", None, "public").await;
    // Rolled back: never delivered.
    sql.batch_execute(
        "BEGIN; SELECT realtime.record_activity('trip.updated', 'alice', 'trip:42'); ROLLBACK;",
    )
    .await
    .unwrap();
    let bobs = record(
        &sql,
        "trip.comment_added",
        "bob",
        Some("trip:42"),
        "collaborators",
    )
    .await;
    // Everyone's marker: a public activity in the trip by alice; dave's own private one.
    let marker = record(&sql, "trip.updated", "alice", Some("trip:42"), "public").await;
    let dave_marker = record(&sql, "user.followed", "dave", None, "private").await;

    assert_eq!(
        until(&mut alice, marker).await,
        [collaborators, private, public, bobs]
    );
    assert_eq!(until(&mut bob, marker).await, [collaborators, bobs]);
    assert_eq!(until(&mut carol, marker).await, [public]);
    assert_eq!(until(&mut dave, dave_marker).await, Vec::<i64>::new());

    // Removing Bob from the trip ends his stream of its activities.
    sql.batch_execute(
        "DELETE FROM realtime.room_members WHERE room = 'trip:42' AND user_id = 'bob'",
    )
    .await
    .unwrap();
    bob.expect("room:leave").await;
    let later = record(
        &sql,
        "trip.item_removed",
        "alice",
        Some("trip:42"),
        "collaborators",
    )
    .await;
    let bob_marker = record(&sql, "trip.created", "bob", None, "private").await;
    assert_eq!(until(&mut bob, bob_marker).await, Vec::<i64>::new());
    assert_eq!(
        until(&mut alice, later).await,
        [marker],
        "the marker's duplicate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activity_frame_carries_actor_target_and_context() {
    let (_cluster, server, sql) = setup(&[]).await;
    let (mut alice, _) = subscribe(&server, "alice", &[]).await;
    let id = record(&sql, "trip.item_added", "alice", None, "private").await;
    let frame = alice.expect("activity:new").await;
    assert_eq!(frame["id"], format!("activity:{id}"));
    let data = &frame["data"];
    assert_eq!(data["type"], "trip.item_added");
    assert_eq!(data["actor"], json!({"id": "alice", "name": "A"}));
    assert_eq!(
        data["target"],
        json!({"type": "item", "id": "i-1", "name": "Kinkaku-ji"})
    );
    assert_eq!(data["context"]["day"], 2);
    assert_eq!(data["visibility"], "private");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_pages_stably_while_activities_arrive() {
    let (cluster, server, sql) = setup(&[]).await;
    sql.batch_execute(
        "INSERT INTO realtime.room_members (room, user_id) VALUES ('trip:7', 'bob');
         INSERT INTO realtime.follows (follower_id, followee_id) VALUES ('bob', 'erin');",
    )
    .await
    .unwrap();
    let mut expected = Vec::new();
    for n in 0..60 {
        let id = match n % 3 {
            0 => {
                record(
                    &sql,
                    "trip.item_added",
                    "alice",
                    Some("trip:7"),
                    "collaborators",
                )
                .await
            }
            1 => record(&sql, "review.posted", "erin", None, "public").await,
            _ => record(&sql, "trip.updated", "bob", None, "private").await,
        };
        expected.push(id);
        // Invisible to Bob: another trip, someone else's private activity.
        record(
            &sql,
            "trip.updated",
            "alice",
            Some("trip:8"),
            "collaborators",
        )
        .await;
        record(&sql, "trip.updated", "erin", None, "private").await;
    }
    expected.reverse();
    let bob = token("bob", &[], 3600);
    let writer = common::sql_client(&cluster.url("postgres")).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        record(
            &writer,
            "trip.item_added",
            "alice",
            Some("trip:7"),
            "collaborators",
        )
        .await;
        let path = match &cursor {
            Some(c) => format!("/api/activity?limit=25&cursor={c}"),
            None => "/api/activity?limit=25".to_owned(),
        };
        let (status, body) = http(server.port, "GET", &path, Some(&bob), "")
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let page: Value = serde_json::from_str(&body).unwrap();
        for a in page["activities"].as_array().unwrap() {
            seen.push(a["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    let originals: Vec<i64> = seen
        .iter()
        .copied()
        .filter(|id| expected.contains(id))
        .collect();
    assert_eq!(
        originals, expected,
        "every visible activity once, newest first"
    );
    let mut unique = seen.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no duplicates across pages");

    // A room's feed, for whoever may join the room.
    let (status, body) = http(
        server.port,
        "GET",
        "/api/activity?room=trip:7&limit=50",
        Some(&bob),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let activities = page["activities"].as_array().unwrap();
    let in_room: i64 = sql
        .query_one(
            "SELECT count(*) FROM realtime.activities WHERE room = 'trip:7'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(activities.len() as i64, in_room);
    assert!(activities.iter().all(|a| a["room"] == "trip:7"));
    assert!(page["next_cursor"].is_null());

    let (status, _) = http(
        server.port,
        "GET",
        "/api/activity?room=trip:8",
        Some(&bob),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 403);
    for path in [
        "/api/activity?limit=0",
        "/api/activity?limit=51",
        "/api/activity?cursor=nope",
        "/api/activity?room=bad%20room",
    ] {
        let (status, body) = http(server.port, "GET", path, Some(&bob), "")
            .await
            .unwrap();
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _) = http(server.port, "GET", "/api/activity", None, "")
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_activity_input_gets_a_clear_error_and_changes_nothing() {
    let (_cluster, server, sql) = setup(&[]).await;
    let count = || async {
        sql.query_one(
            "SELECT (SELECT count(*) FROM realtime.activities) + (SELECT count(*) FROM realtime.follows)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    let before = count().await;
    let big = format!("'{{\"x\": \"{}\"}}'", "y".repeat(17_000));
    common::assert_refused(
        &sql,
        &[
        ("SELECT realtime.record_activity('Trip Created', 'alice', 'trip:1')", "activities_type_format"),
        ("SELECT realtime.record_activity('trip.created', 'alice')", "activities_collaborators_need_a_room"),
        ("SELECT realtime.record_activity('trip.created', 'alice', 'trip:1', 'secret')", "activities_visibility"),
        ("SELECT realtime.record_activity('trip.created', 'alice', 'bad room', 'public')", "activities_room"),
        ("SELECT realtime.record_activity('trip.created', '', 'trip:1')", "activities_actor_id"),
        ("SELECT realtime.record_activity('trip.created', 'alice', 'trip:1', context => '[1]')", "activities_context_object"),
        (&format!("SELECT realtime.record_activity('trip.created', 'alice', 'trip:1', context => {big})"), "activities_context_object"),
        ("INSERT INTO realtime.follows (follower_id, followee_id) VALUES ('alice', 'alice')", "follows_not_self"),
        ("SELECT * FROM realtime.activity_feed('alice', page_size => 0)", "page_size must be 1-100"),
        ("SELECT * FROM realtime.activity_feed('alice', before_at => now())", "give both before_at and before_id"),
        ("SELECT realtime.prune_activities('-1 day')", "older_than must be a positive interval"),
    ],
    )
    .await;
    assert_eq!(count().await, before);

    // Malformed subscriptions over the wire: a clear error, the connection stays.
    let mut client = server.connect("alice", &[]).await;
    for bad in [
        json!({ "rooms": "trip:1" }),
        json!({ "rooms": ["bad room"] }),
        json!({ "rooms": (0..51).map(|n| format!("trip:{n}")).collect::<Vec<_>>() }),
    ] {
        client.request("activity:subscribe", bad.clone()).await;
        let error = client.expect("error").await;
        assert_eq!(error["data"]["code"], "invalid_field", "{bad}: {error}");
    }
    let id = client.request("activity:subscribe", json!({})).await;
    assert_eq!(client.ack(&id).await["status"], "success");
}
