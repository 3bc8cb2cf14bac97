//! The HTTP transports against a real server process and a real PostgreSQL: Server-Sent Events
//! (`/sse`), long-polling (`/poll`) and HTTP publishing (`POST /api/rooms/{room}/messages`)
//! carry the same envelopes as WebSocket, with the same auth and resume guarantees.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use serde_json::{json, Value};

async fn publish(sql: &tokio_postgres::Client, room: &str, i: i32) {
    sql.execute(
        "SELECT realtime.publish($1, 'e', jsonb_build_object('i', $2::int))",
        &[&room, &i],
    )
    .await
    .unwrap();
}

/// Reads SSE events until the join acks of `rooms` arrived; each must succeed.
async fn joined(sse: &mut HttpStream, rooms: &[&str]) {
    for _ in rooms {
        let ack = sse.expect("ack").await.json();
        assert_eq!(ack["data"]["status"], "success", "{ack}");
        let room = ack["data"]["result"]["room"].as_str().unwrap();
        assert_eq!(ack["data"]["original_id"], format!("join:{room}"));
    }
}

/// Events by (room, seq); panics on a duplicate.
fn by_room_and_seq(events: impl IntoIterator<Item = Value>) -> BTreeMap<(String, u64), Value> {
    let mut out = BTreeMap::new();
    for event in events {
        let key = (
            event["room"].as_str().unwrap().to_owned(),
            event["seq"].as_u64().unwrap(),
        );
        assert!(
            out.insert(key.clone(), event).is_none(),
            "duplicate {key:?}"
        );
    }
    out
}

async fn metric(port: u16, name: &str) -> f64 {
    let (_, body) = http(port, "GET", "/metrics", None, "").await.unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_and_long_poll_clients_get_the_same_events_as_websocket_clients() {
    let (_cluster, server, sql) = setup(&[]).await;
    let token = token("alice", &["trip:*"], 3600);
    let mut ws = server.connect("alice", &["trip:*"]).await;
    for room in ["trip:42", "trip:43"] {
        assert_eq!(ws.join(room, None).await["status"], "success");
    }
    let mut sse = server.sse("trip:42,trip:43", &token, &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    let hello = sse.next_event().await.unwrap();
    assert_eq!(hello.event, "system:connected");
    assert_eq!(hello.json()["data"]["user"], "alice");
    joined(&mut sse, &["trip:42", "trip:43"]).await;

    for i in 0..6 {
        let room = if i % 2 == 0 { "trip:42" } else { "trip:43" };
        publish(&sql, room, i).await;
    }

    let mut over_ws = Vec::new();
    while over_ws.len() < 6 {
        let frame = ws.recv().await.unwrap();
        if frame["type"] == "room:message" {
            over_ws.push(frame);
        }
    }
    let over_sse = sse.messages(6).await;
    for event in &over_sse {
        assert_eq!(event.json()["type"], "room:message");
    }
    assert_eq!(
        over_sse.last().unwrap().id.as_deref(),
        Some("trip:42@3,trip:43@3"),
        "the id is the stream's cursor over all its rooms"
    );
    let mut over_poll = Vec::new();
    let mut cursor = "trip:42@0,trip:43@0".to_owned();
    while over_poll.len() < 6 {
        let (status, body) = server.poll(&cursor, &token, 5_000).await;
        assert_eq!(status, 200, "{body}");
        over_poll.extend(body["events"].as_array().unwrap().iter().cloned());
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    assert_eq!(cursor, "trip:42@3,trip:43@3");

    let over_ws = by_room_and_seq(over_ws);
    assert_eq!(over_ws.len(), 6);
    assert_eq!(
        over_ws,
        by_room_and_seq(over_sse.iter().map(SseEvent::json)),
        "SSE data is the WebSocket envelope"
    );
    assert_eq!(
        over_ws,
        by_room_and_seq(over_poll),
        "long-poll events are the WebSocket envelopes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_with_last_event_id_or_since_loses_nothing_and_duplicates_nothing() {
    let (cluster, server, sql) = setup(&[]).await;
    let token = token("alice", &["r:*"], 3600);
    let mut sse = server.sse("r:a,r:b", &token, &[]).await;
    joined(&mut sse, &["r:a", "r:b"]).await;
    for i in 1..=3 {
        publish(&sql, "r:a", i).await;
    }
    for i in 1..=2 {
        publish(&sql, "r:b", i).await;
    }
    let seen = sse.messages(5).await;
    let last_id = seen.last().unwrap().id.clone().unwrap();
    assert_eq!(last_id, "r:a@3,r:b@2");
    drop(sse);

    // Commits keep coming while the client is away and while it reconnects.
    let writer = {
        let url = cluster.url("postgres");
        tokio::spawn(async move {
            let sql = sql_client(&url).await;
            for i in 0..200 {
                publish(&sql, if i % 2 == 0 { "r:a" } else { "r:b" }, i).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut sse = server
        .sse("r:a,r:b", &token, &[("Last-Event-ID", &last_id)])
        .await;
    assert_eq!(sse.status, 200);
    writer.await.unwrap();
    let rest = sse.messages(200).await;
    let mut seqs: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for event in &rest {
        let v = event.json();
        seqs.entry(v["room"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(
        seqs["r:a"],
        (4..=103).collect::<Vec<_>>(),
        "replay then live"
    );
    assert_eq!(
        seqs["r:b"],
        (3..=102).collect::<Vec<_>>(),
        "replay then live"
    );
    assert_eq!(rest.last().unwrap().id.as_deref(), Some("r:a@103,r:b@102"));
    drop(sse);

    // `@since` in the URL resumes too, and Last-Event-ID wins for the rooms it names.
    let mut sse = server
        .sse("r:a@100,r:b@0", &token, &[("Last-Event-ID", "r:b@101")])
        .await;
    let got: Vec<(String, u64)> = sse
        .messages(4)
        .await
        .iter()
        .map(|e| {
            let v = e.json();
            (
                v["room"].as_str().unwrap().to_owned(),
                v["seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        [
            ("r:a".into(), 101),
            ("r:a".into(), 102),
            ("r:a".into(), 103),
            ("r:b".into(), 102)
        ]
    );
    publish(&sql, "r:a", 999).await;
    let next = sse.messages(1).await[0].json();
    assert_eq!(
        (next["room"].clone(), next["seq"].clone()),
        (json!("r:a"), json!(104))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_chained_by_cursor_across_inserts_loses_nothing_and_duplicates_nothing() {
    let (cluster, server, sql) = setup(&[]).await;
    let token = token("bob", &["p:*"], 3600);

    let started = Instant::now();
    let (status, idle) = server.poll("p:1,p:2", &token, 600).await;
    let waited = started.elapsed();
    assert_eq!(status, 200, "{idle}");
    assert_eq!(idle["events"], json!([]), "an idle poll returns empty");
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(10),
        "after its timeout: {waited:?}"
    );
    assert_eq!(idle["cursor"], "p:1@0,p:2@0", "rooms joined from now");
    let mut cursor = idle["cursor"].as_str().unwrap().to_owned();

    // A backlog larger than one response, then commits between and during polls.
    sql.execute(
        "SELECT realtime.publish('p:1', 'e', jsonb_build_object('i', g)) FROM generate_series(1, 300) g",
        &[],
    )
    .await
    .unwrap();
    let writer = {
        let url = cluster.url("postgres");
        tokio::spawn(async move {
            let sql = sql_client(&url).await;
            for i in 0..100 {
                publish(&sql, if i % 2 == 0 { "p:1" } else { "p:2" }, i).await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    let mut events = Vec::new();
    let mut sizes = Vec::new();
    while events.len() < 400 {
        let (status, body) = server.poll(&cursor, &token, 5_000).await;
        assert_eq!(status, 200, "{body}");
        let batch = body["events"].as_array().unwrap();
        assert!(!batch.is_empty(), "a poll returns as soon as events exist");
        for event in batch {
            assert_eq!(event["type"], "room:message", "{event}");
        }
        sizes.push(batch.len());
        events.extend(batch.iter().cloned());
        cursor = body["cursor"].as_str().unwrap().to_owned();
    }
    writer.await.unwrap();
    assert_eq!(sizes[0], 256, "one response carries at most 256 events");
    assert!(sizes.iter().all(|&n| n <= 256));
    let events = by_room_and_seq(events);
    let seqs = |room: &str| -> Vec<u64> {
        events
            .keys()
            .filter(|(r, _)| r == room)
            .map(|(_, s)| *s)
            .collect()
    };
    assert_eq!(seqs("p:1"), (1..=350).collect::<Vec<_>>());
    assert_eq!(seqs("p:2"), (1..=50).collect::<Vec<_>>());
    assert_eq!(cursor, "p:1@350,p:2@50");
    assert!(events.values().all(|e| e["type"] == "room:message"));

    let (_, last) = server.poll(&cursor, &token, 300).await;
    assert_eq!(last["events"], json!([]), "nothing twice");
    assert_eq!(last["cursor"], cursor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bad_and_expired_tokens_get_401_with_the_error_envelope() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let good = token("eve", &["*"], 3600);
    let cases = [
        (None, "unauthorized"),
        (Some("garbage".to_owned()), "unauthorized"),
        (Some(token("eve", &["*"], -120)), "token_expired"),
        (Some(good.clone() + "x"), "unauthorized"),
    ];
    for (bad, code) in cases {
        let query = bad
            .as_ref()
            .map(|t| format!("&token={t}"))
            .unwrap_or_default();
        let sse = http_stream(server.port, &format!("/sse?rooms=r{query}"), &[]).await;
        assert_eq!(sse.status, 401, "sse {code}");
        let body: Value = serde_json::from_str(&sse.body().await).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["data"]["code"], code, "sse");

        let (status, body) = http(server.port, "GET", "/poll?rooms=r", bad.as_deref(), "")
            .await
            .unwrap();
        assert_eq!(status, 401, "poll {code}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["data"]["code"], code, "poll");

        let (status, body) = http(
            server.port,
            "POST",
            "/api/rooms/r/messages",
            bad.as_deref(),
            r#"{"id":"m1","event":"e","payload":{}}"#,
        )
        .await
        .unwrap();
        assert_eq!(status, 401, "publish {code}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["data"]["code"], code, "publish");
    }
    let bearer = format!("Bearer {good}");
    let mut sse = http_stream(server.port, "/sse?rooms=r", &[("Authorization", &bearer)]).await;
    assert_eq!(sse.status, 200, "a bearer header works too");
    joined(&mut sse, &["r"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_room_is_refused_403_and_a_partly_forbidden_request_reports_it_in_an_ack() {
    let (_cluster, server, sql) = setup(&[]).await;
    let dave = token("dave", &["public:*"], 3600);
    let sse = server.sse("trip:7", &dave, &[]).await;
    assert_eq!(sse.status, 403);
    let body: Value = serde_json::from_str(&sse.body().await).unwrap();
    assert_eq!(body["data"]["code"], "forbidden");
    let (status, body) = server.poll("trip:7@0", &dave, 1_000).await;
    assert_eq!(
        (status, body["data"]["code"].clone()),
        (403, json!("forbidden"))
    );

    let mut sse = server.sse("public:1,trip:7", &dave, &[]).await;
    assert_eq!(sse.status, 200);
    let mut acks = BTreeMap::new();
    while acks.len() < 2 {
        let ack = sse.expect("ack").await.json();
        acks.insert(ack["data"]["original_id"].as_str().unwrap().to_owned(), ack);
    }
    assert_eq!(acks["join:public:1"]["data"]["status"], "success");
    assert_eq!(acks["join:trip:7"]["data"]["status"], "error");
    assert_eq!(acks["join:trip:7"]["data"]["error"]["code"], "forbidden");

    let started = Instant::now();
    let (status, body) = server.poll("public:1@0,trip:7@0", &dave, 10_000).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a refusal is news"
    );
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["data"]["original_id"], "join:trip:7");
    assert_eq!(events[0]["data"]["error"]["code"], "forbidden");
    assert_eq!(
        body["cursor"], "public:1@0",
        "the refused room leaves the cursor"
    );

    sql.execute(
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES ('trip:7', 'dave', 'reader')",
        &[],
    )
    .await
    .unwrap();
    let mut sse = server.sse("trip:7", &dave, &[]).await;
    assert_eq!(sse.status, 200, "membership rows authorize too");
    joined(&mut sse, &["trip:7"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_rooms_and_parameters_are_refused_400_with_a_clear_code() {
    let (_cluster, server, _sql) = setup(&[("TRIPTRIP_MAX_ROOMS_PER_CONNECTION", "3")]).await;
    let token = token("alice", &["*"], 3600);
    let cases = [
        ("rooms=bad%20room", "invalid_field"),
        ("rooms=r@x", "invalid_field"),
        ("rooms=r@-1", "invalid_field"),
        ("rooms=", "invalid_field"),
        ("", "invalid_field"),
        ("rooms=a,,b", "invalid_field"),
        ("rooms=a,a@1", "invalid_field"),
        ("rooms=a,b,c,d", "too_many_rooms"),
    ];
    for (query, code) in cases {
        let sse = http_stream(server.port, &format!("/sse?{query}&token={token}"), &[]).await;
        assert_eq!(sse.status, 400, "sse {query}");
        let body: Value = serde_json::from_str(&sse.body().await).unwrap();
        assert_eq!(body["data"]["code"], code, "sse {query}");
        let message = body["data"]["message"].as_str().unwrap();
        assert!(message.contains("rooms"), "{query}: {message}");

        let (status, body) = http(
            server.port,
            "GET",
            &format!("/poll?{query}"),
            Some(&token),
            "",
        )
        .await
        .unwrap();
        assert_eq!(status, 400, "poll {query}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["data"]["code"], code, "poll {query}");
    }
    for query in [
        "rooms=a&timeout_ms=soon",
        "rooms=a&timeout_ms=1&timeout_ms=2",
    ] {
        let path = format!("/poll?{query}&token={token}");
        let (status, body) = http(server.port, "GET", &path, None, "").await.unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["data"]["code"], "invalid_field");
        let message = body["data"]["message"].as_str().unwrap();
        assert!(message.contains("timeout_ms"), "{message}");
    }
    let sse = server.sse("a", &token, &[("Last-Event-ID", "a@x")]).await;
    assert_eq!(sse.status, 400, "a malformed Last-Event-ID");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_publish_acks_after_commit_applies_a_retry_once_and_refuses_with_clear_codes() {
    let (_cluster, server, sql) = setup(&[
        ("TRIPTRIP_MAX_FRAME_BYTES", "4096"),
        ("TRIPTRIP_PUBLISH_RATE", "2"),
    ])
    .await;
    sql.batch_execute(
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES
             ('trip:9', 'carol', 'writer'), ('trip:9', 'dave', 'reader')",
    )
    .await
    .unwrap();
    let carol = token("carol", &[], 3600);
    let mut sse = server.sse("trip:9", &carol, &[]).await;
    joined(&mut sse, &["trip:9"]).await;

    let body = r#"{"id":"pub-1","event":"chat","payload":{"text":"hi"}}"#;
    let (status, ack) = server.publish_http("trip:9", &carol, body).await;
    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["data"]["original_id"], "pub-1");
    assert_eq!(ack["data"]["status"], "success");
    assert_eq!(ack["data"]["result"], json!({"room": "trip:9", "seq": 1}));
    let event = sse.messages(1).await[0].json();
    assert_eq!(event["seq"], 1);
    assert_eq!(event["data"]["payload"], json!({"text": "hi"}));
    assert_eq!(event["data"]["sender"], "carol");

    let (status, again) = server.publish_http("trip:9", &carol, body).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["data"]["result"]["seq"], 1,
        "a retry answers the first seq"
    );
    let count: i64 = sql
        .query_one(
            "SELECT count(*) FROM realtime.messages WHERE room = 'trip:9'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "applied once");

    let dave = token("dave", &[], 3600);
    let (status, refused) = server.publish_http("trip:9", &dave, body).await;
    assert_eq!(
        (status, refused["data"]["code"].clone()),
        (403, json!("forbidden"))
    );
    assert_eq!(refused["type"], "error");

    let big = format!(
        r#"{{"id":"big","event":"e","payload":{{"x":"{}"}}}}"#,
        "y".repeat(5000)
    );
    for (body, want_status, code) in [
        (big.as_str(), 413, "frame_too_large"),
        ("{not json", 400, "bad_frame"),
        (r#"{"event":"e"}"#, 400, "invalid_field"),
        (r#"{"id":"m","event":"bad event"}"#, 400, "invalid_field"),
    ] {
        let (status, refused) = server.publish_http("trip:9", &carol, body).await;
        assert_eq!(status, want_status, "{refused}");
        assert_eq!(refused["data"]["code"], code);
    }
    let (status, refused) = server.publish_http("bad%20room", &carol, body).await;
    assert_eq!(
        (status, refused["data"]["code"].clone()),
        (400, json!("invalid_field"))
    );

    let mut statuses = Vec::new();
    for i in 0..8 {
        let body = format!(r#"{{"id":"burst-{i}","event":"e"}}"#);
        let (status, answer) = server.publish_http("trip:9", &carol, &body).await;
        if status == 429 {
            assert_eq!(answer["data"]["code"], "rate_limited");
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_sends_system_reconnect_ends_streams_and_refuses_new_requests_with_503() {
    let (_cluster, mut server, _sql) = setup(&[("TRIPTRIP_DRAIN_MS", "3000")]).await;
    let token = token("alice", &["d:*"], 3600);
    let port = server.port;
    let mut ws = server.connect("alice", &["d:*"]).await;
    ws.join("d:1", None).await;
    let mut sse = server.sse("d:1", &token, &[]).await;
    joined(&mut sse, &["d:1"]).await;
    let pending = {
        let token = token.clone();
        tokio::spawn(async move {
            let path = "/poll?rooms=d:1@0&timeout_ms=30000";
            http(port, "GET", path, Some(&token), "").await.unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let terminated = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });

    let reconnect = sse.expect("system:reconnect").await;
    assert_eq!(reconnect.json()["data"]["reason"], "draining");
    assert_eq!(reconnect.retry, Some(1_000));
    assert!(sse.next_event().await.is_none(), "then the stream ends");

    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["events"][0]["type"], "system:reconnect", "{body}");

    let refused = http_stream(port, &format!("/sse?rooms=d:1&token={token}"), &[]).await;
    assert_eq!(refused.status, 503);
    let (status, body) = http(port, "GET", "/poll?rooms=d:1", Some(&token), "")
        .await
        .unwrap();
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["data"]["code"], "draining");
    drop(ws);
    let (_server, status) = terminated.await.unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_goes_away_leaves_its_rooms_and_frees_its_connection() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_HEARTBEAT_INTERVAL_MS", "200")]).await;
    let token = token("alice", &["g:*"], 3600);
    let mut sse = server.sse("g:1,g:2", &token, &[]).await;
    joined(&mut sse, &["g:1", "g:2"]).await;
    assert_eq!(metric(server.port, "triptrip_connections").await, 1.0);
    assert_eq!(metric(server.port, "triptrip_rooms").await, 2.0);
    tokio::time::sleep(Duration::from_millis(700)).await;
    publish(&sql, "g:1", 1).await;
    sse.messages(1).await;
    assert!(
        sse.comments >= 2,
        "keep-alive comments every heartbeat interval"
    );
    drop(sse);
    let deadline = Instant::now() + WAIT;
    while metric(server.port, "triptrip_connections").await > 0.0
        || metric(server.port, "triptrip_rooms").await > 0.0
    {
        assert!(Instant::now() < deadline, "the session closed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sse_consumer_is_cut_while_the_others_keep_receiving() {
    let (cluster, server, _sql) = setup(&[("TRIPTRIP_CONNECTION_QUEUE_BYTES", "262144")]).await;
    let token = token("alice", &["s:*"], 3600);
    let path = format!("/sse?rooms=s:1&token={token}");
    let mut slow = http_stream_with(server.port, &path, &[], Some(4096)).await;
    joined(&mut slow, &["s:1"]).await;
    let mut fast = server.sse("s:1", &token, &[]).await;
    joined(&mut fast, &["s:1"]).await;

    // About 6 MB in small transactions: more than the slow reader's kernel buffers and queue
    // can hold, at a pace a reading client keeps up with.
    const ROWS: u64 = 1500;
    let writer = {
        let url = cluster.url("postgres");
        tokio::spawn(async move {
            let sql = sql_client(&url).await;
            for batch in 0..(ROWS / 10) as i32 {
                sql.execute(
                    "SELECT realtime.publish('s:1', 'e', jsonb_build_object('i', g, 'pad', repeat('x', 4000))) \
                     FROM generate_series($1::int * 10 + 1, $1::int * 10 + 10) g",
                    &[&batch],
                )
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let seqs: Vec<u64> = fast
        .messages(ROWS as usize)
        .await
        .iter()
        .map(|e| e.json()["seq"].as_u64().unwrap())
        .collect();
    writer.await.unwrap();
    assert_eq!(
        seqs,
        (1..=ROWS).collect::<Vec<_>>(),
        "others keep receiving"
    );

    let mut received = 0;
    let cut = loop {
        match slow.next_event().await {
            Some(e) if e.event == "room:message" => received += 1,
            Some(e) if e.event == "error" => break e.json(),
            Some(_) => {}
            None => panic!("the stream ended without saying why"),
        }
    };
    assert_eq!(cut["data"]["code"], "slow_consumer");
    assert!(received < ROWS, "{received}");
    assert!(slow.next_event().await.is_none(), "then the stream ends");
    assert!(metric(server.port, "triptrip_slow_consumer_disconnects_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_stream_ends_with_token_expired_when_its_token_expires() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let short = token("alice", &["x:*"], 2);
    let mut sse = server.sse("x:1", &short, &[]).await;
    assert_eq!(sse.status, 200);
    joined(&mut sse, &["x:1"]).await;
    let error = sse.expect("error").await.json();
    assert_eq!(error["data"]["code"], "token_expired");
    assert!(sse.next_event().await.is_none(), "then the stream ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_from_allowed_origins_get_cors_headers_and_other_origins_get_403() {
    let (_cluster, server, _sql) =
        setup(&[("TRIPTRIP_ALLOWED_ORIGINS", "https://app.example")]).await;
    let token = token("alice", &["c:*"], 3600);
    let app = [("Origin", "https://app.example")];
    for path in ["/sse", "/poll", "/api/rooms/c:1/messages"] {
        let preflight = http_request(server.port, "OPTIONS", path, &app, None).await;
        assert_eq!(preflight.status, 204, "{path}");
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        let headers = preflight.header("access-control-allow-headers").unwrap();
        assert!(headers.contains("authorization") && headers.contains("last-event-id"));
    }
    let mut sse = server.sse("c:1", &token, &app).await;
    assert_eq!(sse.status, 200);
    assert_eq!(
        sse.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    joined(&mut sse, &["c:1"]).await;

    let evil = [("Origin", "https://evil.example")];
    let refused = server.sse("c:1", &token, &evil).await;
    assert_eq!(refused.status, 403);
    let body: Value = serde_json::from_str(&refused.body().await).unwrap();
    assert_eq!(body["data"]["code"], "origin_not_allowed");
    let path = format!("/poll?rooms=c:1&token={token}");
    let refused = http_request(server.port, "GET", &path, &evil, None).await;
    assert_eq!(refused.status, 403);
}
