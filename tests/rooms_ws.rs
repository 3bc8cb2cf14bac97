//! Rooms over WebSocket against a real server process and a real PostgreSQL: committed SQL rows
//! reach every authorized client, at least once, in order, resumable without gaps.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::server::*;
use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_sql_rows_reach_every_joined_client_and_rolled_back_rows_never_do() {
    let (_cluster, server, mut sql) = setup(&[]).await;
    let mut alice = server.connect("alice", &["trip:*"]).await;
    let mut bob = server.connect("bob", &["trip:42"]).await;
    for client in [&mut alice, &mut bob] {
        let ack = client.join("trip:42", None).await;
        assert_eq!(ack["status"], "success", "{ack}");
        assert_eq!(ack["result"]["seq"], 0);
    }
    sql.execute(
        "INSERT INTO realtime.messages (room, event, payload) VALUES ('trip:42', 'itinerary.updated', '{\"day\": 1}')",
        &[],
    )
    .await
    .unwrap();
    let tx = sql.transaction().await.unwrap();
    tx.execute("SELECT realtime.publish('trip:42', 'never', '{}')", &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    sql.execute(
        "SELECT realtime.publish('trip:42', 'itinerary.updated', '{\"day\": 2}')",
        &[],
    )
    .await
    .unwrap();
    for client in [&mut alice, &mut bob] {
        let got = client.messages(2).await;
        assert_eq!(
            got,
            [
                ("trip:42".to_owned(), 1, json!({"day": 1})),
                ("trip:42".to_owned(), 2, json!({"day": 2}))
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_room_order_holds_with_many_concurrent_writers() {
    let (cluster, server, _sql) = setup(&[]).await;
    let mut client = server.connect("alice", &["*"]).await;
    client.join("a", None).await;
    client.join("b", None).await;
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let url = cluster.url("postgres");
            tokio::spawn(async move {
                let sql = sql_client(&url).await;
                for i in 0..50 {
                    let room = if (w + i) % 2 == 0 { "a" } else { "b" };
                    sql.execute(
                        "SELECT realtime.publish($1, 'e', jsonb_build_object('w', $2::int, 'i', $3::int))",
                        &[&room, &w, &i],
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
    let mut last: HashMap<String, u64> = HashMap::new();
    for (room, seq, _) in client.messages(200).await {
        let previous = last.insert(room.clone(), seq).unwrap_or(0);
        assert_eq!(seq, previous + 1, "room {room}: gap-free and in order");
    }
    assert_eq!(last["a"] + last["b"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_disconnect_loses_nothing_and_duplicates_nothing() {
    let (cluster, server, sql) = setup(&[]).await;
    let mut client = server.connect("alice", &["trip:*"]).await;
    client.join("trip:1", None).await;
    for i in 1..=5 {
        sql.execute(
            "SELECT realtime.publish('trip:1', 'e', jsonb_build_object('i', $1::int))",
            &[&i],
        )
        .await
        .unwrap();
    }
    let seen = client.messages(3).await;
    let last_seen = seen.last().unwrap().1;
    drop(client);

    let writer = {
        let url = cluster.url("postgres");
        tokio::spawn(async move {
            let sql = sql_client(&url).await;
            for i in 6..=400 {
                sql.execute(
                    "SELECT realtime.publish('trip:1', 'e', jsonb_build_object('i', $1::int))",
                    &[&i],
                )
                .await
                .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut client = server.connect("alice", &["trip:*"]).await;
    let ack = client.join("trip:1", Some(last_seen)).await;
    assert_eq!(ack["status"], "success");
    writer.await.unwrap();
    let rest = client.messages(400 - last_seen as usize).await;
    let seqs: Vec<u64> = rest.iter().map(|m| m.1).collect();
    assert_eq!(
        seqs,
        ((last_seen + 1)..=400).collect::<Vec<_>>(),
        "replay then live, seamless"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_publish_is_acknowledged_after_commit_and_a_retry_applies_once() {
    let (_cluster, server, sql) = setup(&[]).await;
    sql.execute("INSERT INTO realtime.room_members (room, user_id, role) VALUES ('trip:9', 'carol', 'writer')", &[])
        .await
        .unwrap();
    let mut carol = server.connect("carol", &[]).await;
    assert_eq!(carol.join("trip:9", None).await["status"], "success");
    let frame = json!({"type": "room:message", "id": "pub-1", "data": {"room": "trip:9", "event": "chat", "payload": {"text": "hi"}}});
    carol.send(frame.clone()).await;
    let first = carol.ack("pub-1").await;
    assert_eq!(first["status"], "success", "{first}");
    let messages = carol.messages(1).await;
    assert_eq!(
        messages[0].2,
        json!({"text": "hi"}),
        "the publisher gets its event too"
    );
    carol.send(frame).await;
    let second = carol.ack("pub-1").await;
    assert_eq!(first["result"]["seq"], second["result"]["seq"]);
    let count: i64 = sql
        .query_one(
            "SELECT count(*) FROM realtime.messages WHERE room = 'trip:9'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "applied once");
    let sender: Option<String> = sql
        .query_one(
            "SELECT sender FROM realtime.messages WHERE room = 'trip:9'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sender.as_deref(), Some("carol"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_joins_and_publishes_are_refused_and_revoked_members_leave_live() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut dave = server.connect("dave", &["public:*"]).await;
    let ack = dave.join("trip:7", None).await;
    assert_eq!(
        (ack["status"].as_str(), ack["error"]["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );
    sql.execute("INSERT INTO realtime.room_members (room, user_id, role) VALUES ('trip:7', 'dave', 'reader')", &[])
        .await
        .unwrap();
    assert_eq!(dave.join("trip:7", None).await["status"], "success");
    let id = dave
        .request(
            "room:message",
            json!({"room": "trip:7", "event": "e", "payload": {}}),
        )
        .await;
    assert_eq!(
        dave.ack(&id).await["error"]["code"],
        "forbidden",
        "readers may not publish"
    );
    sql.execute(
        "DELETE FROM realtime.room_members WHERE room = 'trip:7' AND user_id = 'dave'",
        &[],
    )
    .await
    .unwrap();
    let left = dave.expect("room:leave").await;
    assert_eq!(left["data"]["room"], "trip:7");
    assert_eq!(left["data"]["reason"], "membership_revoked");
    sql.execute("SELECT realtime.publish('trip:7', 'after', '{}')", &[])
        .await
        .unwrap();
    sql.execute("SELECT realtime.publish('public:1', 'x', '{}')", &[])
        .await
        .unwrap();
    assert_eq!(dave.join("public:1", Some(0)).await["status"], "success");
    let next = dave.messages(1).await;
    assert_eq!(
        next[0].0, "public:1",
        "nothing from trip:7 after revocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_unknown_and_oversized_frames_get_errors_without_hurting_anyone() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_MAX_FRAME_BYTES", "4096")]).await;
    let mut good = server.connect("good", &["r"]).await;
    good.join("r", None).await;
    let mut bad = server.connect("bad", &["r"]).await;
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    for (raw, code) in [
        ("not json", "bad_frame"),
        ("{\"type\":\"room:explode\",\"id\":\"x\"}", "unknown_event"),
        (
            "{\"type\":\"room:join\",\"data\":{\"room\":\"bad room\"}}",
            "invalid_field",
        ),
        ("[1,2,3]", "bad_frame"),
    ] {
        bad.ws.send(Message::Text(raw.into())).await.unwrap();
        let error = bad.expect("error").await;
        assert_eq!(error["data"]["code"], code, "{raw}");
    }
    bad.ws
        .send(Message::Binary(vec![0u8; 10].into()))
        .await
        .unwrap();
    assert_eq!(bad.expect("error").await["data"]["code"], "bad_frame");
    let id = bad
        .request("room:leave", json!({"room": "never-joined"}))
        .await;
    assert_eq!(bad.ack(&id).await["error"]["code"], "not_joined");
    bad.ws
        .send(Message::Text("x".repeat(10_000).into()))
        .await
        .unwrap();
    let error = bad.expect("error").await;
    assert_eq!(error["data"]["code"], "frame_too_large");
    assert!(
        bad.recv().await.is_none(),
        "closed after an oversized frame"
    );

    sql.execute("SELECT realtime.publish('r', 'still', '{}')", &[])
        .await
        .unwrap();
    assert_eq!(good.messages(1).await[0].1, 1, "other clients unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_expired_and_unsigned_tokens_are_refused_at_the_handshake() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let alg_none = {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "JWT"})),
            b64(json!({"sub": "eve", "exp": 4_000_000_000u64, "rooms": ["*"]}))
        )
    };
    let cases = [
        ("garbage".to_owned(), "unauthorized"),
        (token("eve", &["*"], -120), "token_expired"),
        (alg_none, "unauthorized"),
        (token("eve", &["*"], 3600) + "x", "unauthorized"),
    ];
    for (bad, code) in cases {
        let err = tokio_tungstenite::connect_async(server.ws_url(Some(&bad)))
            .await
            .expect_err("refused");
        let tokio_tungstenite::tungstenite::Error::Http(response) = err else {
            panic!("expected an HTTP refusal, got {err}");
        };
        assert_eq!(response.status(), 401);
        let body: serde_json::Value =
            serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
        assert_eq!(body["data"]["code"], code);
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(None))
        .await
        .unwrap();
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::Text(
        json!({"type": "auth", "data": {"token": "nope"}})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let Some(Ok(Message::Text(text))) = ws.next().await else {
        panic!("an error frame")
    };
    let error: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(error["data"]["code"], "unauthorized");
    let Some(Ok(Message::Close(Some(close)))) = ws.next().await else {
        panic!("a close frame")
    };
    assert_eq!(u16::from(close.code), 4001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_are_relayed_to_other_members_and_never_stored() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut alice = server.connect("alice", &["doc:*"]).await;
    let mut bob = server.connect("bob", &["doc:*"]).await;
    alice.join("doc:1", None).await;
    bob.join("doc:1", None).await;
    let id = alice
        .request(
            "room:broadcast",
            json!({"room": "doc:1", "event": "typing", "payload": {"on": true}}),
        )
        .await;
    let ack = alice.ack(&id).await;
    assert_eq!(ack["result"]["delivered"], 1, "{ack}");
    let signal = bob.expect("room:broadcast").await;
    assert_eq!(signal["data"]["sender"], "alice");
    assert_eq!(signal["data"]["payload"]["on"], true);
    assert!(signal.get("seq").is_none());
    let id = alice
        .request(
            "room:broadcast",
            json!({"room": "doc:2", "event": "typing", "payload": {}}),
        )
        .await;
    assert_eq!(alice.ack(&id).await["error"]["code"], "not_joined");
    let stored: i64 = sql
        .query_one("SELECT count(*) FROM realtime.messages", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_slot_was_lost_are_recovered_from_the_tables() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut client = server.connect("alice", &["r"]).await;
    client.join("r", None).await;
    for _ in 0..3 {
        sql.execute("SELECT realtime.publish('r', 'e', '{}')", &[])
            .await
            .unwrap();
    }
    assert_eq!(client.messages(3).await.last().unwrap().1, 3);
    drop_slot_under_its_consumer(&sql, "triptrip_realtime").await;
    for _ in 0..7 {
        sql.execute("SELECT realtime.publish('r', 'e', '{}')", &[])
            .await
            .unwrap();
    }
    let seqs: Vec<u64> = client.messages(7).await.iter().map(|m| m.1).collect();
    assert_eq!(
        seqs,
        (4..=10).collect::<Vec<_>>(),
        "every event, in order, once"
    );
}
