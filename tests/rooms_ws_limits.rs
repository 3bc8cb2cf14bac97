//! Client limits and their error codes, against a real server process and a real PostgreSQL:
//! rooms per connection, connections per user, publish rate, origin allow-list, replay
//! retention (`resume:failed`), repeated joins, and what `/metrics` reports.

mod common;

use std::time::{Duration, Instant};

use common::server::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

fn error_code(ack: &Value) -> Option<&str> {
    (ack["status"] == "error").then(|| ack["error"]["code"].as_str().unwrap_or("?"))
}

/// The HTTP refusal of a handshake: status and the error envelope's code.
fn refusal(err: tokio_tungstenite::tungstenite::Error) -> (u16, String) {
    let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err}");
    };
    let body: Value =
        serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
    (
        response.status().as_u16(),
        body["data"]["code"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_past_the_rooms_per_connection_limit_is_refused_and_leaving_frees_a_slot() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_MAX_ROOMS_PER_CONNECTION", "3")]).await;
    let mut client = server.connect("rhea", &["r:*"]).await;
    for room in ["r:1", "r:2", "r:3"] {
        let ack = client.join(room, None).await;
        assert_eq!(ack["status"], "success", "{room}: {ack}");
    }
    let ack = client.join("r:4", None).await;
    assert_eq!(error_code(&ack), Some("too_many_rooms"), "{ack}");

    // The refused join subscribed to nothing.
    sql.execute("SELECT realtime.publish('r:4', 'e', '{\"n\": 4}')", &[])
        .await
        .unwrap();
    sql.execute("SELECT realtime.publish('r:3', 'e', '{\"n\": 3}')", &[])
        .await
        .unwrap();
    assert_eq!(
        client.messages(1).await,
        [("r:3".to_owned(), 1, json!({"n": 3}))],
        "nothing from the refused room"
    );

    let id = client.request("room:leave", json!({"room": "r:1"})).await;
    assert_eq!(client.ack(&id).await["status"], "success");
    let ack = client.join("r:4", Some(0)).await;
    assert_eq!(ack["status"], "success", "a slot was freed: {ack}");
    assert_eq!(
        client.messages(1).await,
        [("r:4".to_owned(), 1, json!({"n": 4}))],
        "the fourth room works once joined"
    );
    let ack = client.join("r:5", None).await;
    assert_eq!(
        error_code(&ack),
        Some("too_many_rooms"),
        "full again: {ack}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_past_the_per_user_limit_is_closed_1013_and_closing_one_frees_a_slot() {
    let (_cluster, server, _sql) = setup(&[("TRIPTRIP_MAX_CONNECTIONS_PER_USER", "2")]).await;
    let mut first = server.connect("uma", &["u"]).await;
    let _second = server.connect("uma", &["u"]).await;

    let (ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(Some(&token("uma", &["u"], 3600))))
            .await
            .expect("the handshake itself succeeds");
    let mut third = Client::from_ws(ws);
    let (frames, close) = third.until_close().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["data"]["code"], "too_many_connections");
    assert_eq!(close, Some(Some(1013)), "try again later");

    let mut other = server.connect("vic", &["u"]).await;
    assert_eq!(
        other.join("u", None).await["status"],
        "success",
        "another user is unaffected"
    );
    let m = metrics(server.port).await;
    assert!(m["triptrip_connections_rejected_total"] >= 1.0, "{m:?}");

    // Closing one connection frees its slot: once the server has dropped the socket, a new
    // connection of the same user is admitted.
    first.ws.close(None).await.unwrap();
    let (_, _) = first.until_close().await;
    let mut again = server.connect("uma", &["u"]).await;
    assert_eq!(again.join("u", None).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_burst_past_the_rate_is_partly_rate_limited_and_only_accepted_ones_are_stored() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_PUBLISH_RATE", "5")]).await;
    let mut client = server.connect("pia", &["p"]).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(
            client
                .request(
                    "room:message",
                    json!({"room": "p", "event": "e", "payload": {"i": i}}),
                )
                .await,
        );
    }
    let mut accepted = Vec::new();
    let mut limited = 0;
    for (i, id) in ids.iter().enumerate() {
        let ack = client.ack(id).await;
        match ack["status"].as_str() {
            Some("success") => accepted.push((ack["result"]["seq"].as_i64().unwrap(), i as i32)),
            _ => {
                assert_eq!(error_code(&ack), Some("rate_limited"), "{ack}");
                limited += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A burst of twice the rate, plus what refilled meanwhile.
    let most = 10 + (elapsed * 5.0).ceil() as usize;
    assert!(
        accepted.len() >= 10 && accepted.len() <= most,
        "{} accepted in {elapsed:.2} s (burst 10, 5/s)",
        accepted.len()
    );
    assert_eq!(accepted.len() + limited, 30);
    assert!(limited > 0);
    let stored: Vec<(i64, i32)> = sql
        .query(
            "SELECT seq, (payload->>'i')::int FROM realtime.messages WHERE room = 'p' ORDER BY seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stored, accepted,
        "exactly the acknowledged publishes are stored"
    );
    let m = metrics(server.port).await;
    assert_eq!(m["triptrip_publishes_total"], accepted.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_from_origins_outside_the_allow_list_are_refused_with_403() {
    let (_cluster, server, _sql) =
        setup(&[("TRIPTRIP_ALLOWED_ORIGINS", "https://app.example")]).await;
    let url = server.ws_url(Some(&token("ola", &["o"], 3600)));
    let with_origin = |origin: &str| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Origin", HeaderValue::from_str(origin).unwrap());
        request
    };

    let err = Client::handshake(with_origin("https://evil.example"))
        .await
        .err()
        .expect("a foreign origin is refused");
    assert_eq!(refusal(err), (403, "origin_not_allowed".to_owned()));
    let err = Client::handshake(with_origin("https://app.example.evil.example"))
        .await
        .err()
        .expect("only exact origins match");
    assert_eq!(refusal(err), (403, "origin_not_allowed".to_owned()));

    let mut allowed = Client::handshake(with_origin("https://app.example"))
        .await
        .expect("the allowed origin connects");
    assert_eq!(allowed.join("o", None).await["status"], "success");
    let mut headless = Client::handshake(url.as_str())
        .await
        .expect("a client without Origin (not a browser) connects");
    assert_eq!(headless.join("o", None).await["status"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_since_outside_the_replayable_history_answers_resume_failed_then_goes_live() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_REPLAY_RETENTION_SECS", "1")]).await;
    // Three events from an hour ago: older than the 1 s replay retention.
    sql.execute(
        "INSERT INTO realtime.messages (room, event, payload, created_at) \
         SELECT 'old', 'e', jsonb_build_object('i', i), now() - interval '1 hour' \
         FROM generate_series(1, 3) i",
        &[],
    )
    .await
    .unwrap();
    let mut client = server.connect("ria", &["old", "new"]).await;
    let ack = client.join("old", Some(0)).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(ack["result"]["seq"], 3);
    let failed = client.expect("resume:failed").await;
    assert_eq!(failed["data"]["room"], "old", "{failed}");
    assert_eq!(failed["data"]["since"], 0);
    assert_eq!(failed["data"]["seq"], 3);
    sql.execute("SELECT realtime.publish('old', 'e', '{\"i\": 4}')", &[])
        .await
        .unwrap();
    let live = client.messages(1).await;
    assert_eq!(
        live,
        [("old".to_owned(), 4, json!({"i": 4}))],
        "live after resume:failed, nothing replayed"
    );

    // A `since` past the room's last seq: the client's state is from elsewhere.
    sql.execute("SELECT realtime.publish('new', 'e', '{\"i\": 1}')", &[])
        .await
        .unwrap();
    let ack = client.join("new", Some(50)).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(ack["result"]["seq"], 1);
    let failed = client.expect("resume:failed").await;
    assert_eq!(
        (
            &failed["data"]["room"],
            &failed["data"]["since"],
            &failed["data"]["seq"]
        ),
        (&json!("new"), &json!(50), &json!(1)),
        "{failed}"
    );
    sql.execute("SELECT realtime.publish('new', 'e', '{\"i\": 2}')", &[])
        .await
        .unwrap();
    assert_eq!(
        client.messages(1).await,
        [("new".to_owned(), 2, json!({"i": 2}))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_room_twice_is_acked_as_already_joined_and_leave_then_join_works() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut client = server.connect("jon", &["j"]).await;
    let first = client.join("j", None).await;
    assert_eq!(first["status"], "success", "{first}");
    assert!(first["result"].get("already_joined").is_none(), "{first}");
    let twice = client.join("j", None).await;
    assert_eq!(twice["status"], "success", "{twice}");
    assert_eq!(twice["result"]["already_joined"], true, "{twice}");

    sql.execute("SELECT realtime.publish('j', 'e', '{\"n\": 1}')", &[])
        .await
        .unwrap();
    assert_eq!(client.messages(1).await[0].1, 1);

    let id = client.request("room:leave", json!({"room": "j"})).await;
    let left = client.ack(&id).await;
    assert_eq!(left["status"], "success", "{left}");
    let id = client.request("room:leave", json!({"room": "j"})).await;
    assert_eq!(error_code(&client.ack(&id).await), Some("not_joined"));
    sql.execute("SELECT realtime.publish('j', 'e', '{\"n\": 2}')", &[])
        .await
        .unwrap();
    let again = client.join("j", Some(1)).await;
    assert_eq!(again["status"], "success", "{again}");
    assert!(again["result"].get("already_joined").is_none(), "{again}");
    assert_eq!(again["result"]["seq"], 2);
    sql.execute("SELECT realtime.publish('j', 'e', '{\"n\": 3}')", &[])
        .await
        .unwrap();
    let got = client.messages(2).await;
    assert_eq!(
        got,
        [
            ("j".to_owned(), 2, json!({"n": 2})),
            ("j".to_owned(), 3, json!({"n": 3}))
        ],
        "the missed event replayed once, then live, each once"
    );
    // Exactly those two: nothing duplicated from the first membership.
    sql.execute("SELECT realtime.publish('j', 'e', '{\"n\": 4}')", &[])
        .await
        .unwrap();
    assert_eq!(client.messages(1).await[0].1, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_connections_rooms_events_deliveries_publishes_and_replication() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut alice = server.connect("alice", &["m:*"]).await;
    let mut bob = server.connect("bob", &["m:*"]).await;
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.join("m:1", None).await["status"], "success");
    }
    for i in 0..3 {
        sql.execute(
            "SELECT realtime.publish('m:1', 'e', jsonb_build_object('i', $1::int))",
            &[&i],
        )
        .await
        .unwrap();
    }
    let id = alice
        .request(
            "room:message",
            json!({"room": "m:1", "event": "e", "payload": {}}),
        )
        .await;
    assert_eq!(alice.ack(&id).await["status"], "success");
    for client in [&mut alice, &mut bob] {
        assert_eq!(client.messages(4).await.len(), 4);
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let m = metrics(server.port).await;
        // Counters are updated before the frames go out; the commit-side gauges may lag a
        // status interval.
        if m.get("triptrip_replication_transactions_total") >= Some(&4.0)
            || Instant::now() > deadline
        {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_least = |name: &str, min: f64| {
        let value = m.get(name).copied();
        assert!(
            value >= Some(min),
            "{name} = {value:?}, want >= {min}: {m:?}"
        );
    };
    at_least("triptrip_connections", 2.0);
    at_least("triptrip_connections_total", 2.0);
    at_least("triptrip_rooms", 1.0);
    at_least("triptrip_events_in_total", 4.0);
    at_least("triptrip_deliveries_total", 8.0);
    at_least("triptrip_publishes_total", 1.0);
    at_least("triptrip_replication_streaming", 1.0);
    at_least("triptrip_replication_transactions_total", 4.0);
    at_least("triptrip_replication_changes_total", 4.0);
    at_least("triptrip_replication_received_bytes_total", 1.0);
    at_least("triptrip_replication_acknowledged_lsn", 1.0);
    at_least("triptrip_replication_slot_active", 1.0);
    for gauge in [
        "triptrip_replication_lag_seconds",
        "triptrip_replication_lag_bytes",
        "triptrip_replication_retained_wal_bytes",
        "triptrip_slow_consumer_disconnects_total",
    ] {
        at_least(gauge, 0.0);
    }
    assert_eq!(m["triptrip_connections"], 2.0, "exactly the two clients");
    assert_eq!(
        m["triptrip_deliveries_total"], 8.0,
        "4 events x 2 subscribers"
    );
}
