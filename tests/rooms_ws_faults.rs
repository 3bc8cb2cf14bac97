//! Rooms over WebSocket under faults, against a real server process and a real PostgreSQL:
//! `kill -9` during writes, slow consumers, heartbeats, draining on SIGTERM, token expiry and
//! refresh, first-message authentication.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::server::*;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Waits until `done` holds, polling; fails after `limit`.
async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `(room, seq, payload)` of a `room:message` frame.
fn message(frame: &Value) -> Option<(String, u64, Value)> {
    (frame["type"] == "room:message").then(|| {
        (
            frame["room"].as_str().unwrap().to_owned(),
            frame["seq"].as_u64().unwrap(),
            frame["data"]["payload"].clone(),
        )
    })
}

/// Checks that one connection's messages are, per room, exactly `since + 1, since + 2, …` (in
/// order, no gap, no duplicate) and returns the last seq per room (`since` if none came).
fn check_consecutive(
    who: &str,
    messages: &[(String, u64, Value)],
    since: &HashMap<String, u64>,
) -> HashMap<String, u64> {
    let mut last = since.clone();
    for (room, seq, _) in messages {
        let previous = last.get(room).copied().unwrap_or(0);
        assert_eq!(
            *seq,
            previous + 1,
            "{who}, room {room}: seq {seq} after {previous} (in order, no gap, no duplicate)"
        );
        last.insert(room.clone(), *seq);
    }
    last
}

const KILL_ROOMS: [&str; 2] = ["k:a", "k:b"];
const KILL_WRITES: i32 = 1000;

/// Reads a connection's frames until the socket dies (the server was killed).
async fn record_until_gone(mut client: Client) -> Vec<Value> {
    let mut frames = Vec::new();
    while let Some(frame) = client.recv().await {
        frames.push(frame);
    }
    frames
}

/// Reads a resumed connection's frames until, per room, its last seq reaches the target sent
/// on `targets` (known once the writer is done).
async fn record_until(
    mut client: Client,
    since: HashMap<String, u64>,
    mut targets: tokio::sync::watch::Receiver<Option<HashMap<String, u64>>>,
) -> Vec<Value> {
    let mut frames = Vec::new();
    let mut last = since;
    loop {
        if let Some(targets) = &*targets.borrow() {
            if targets.iter().all(|(room, n)| last.get(room) == Some(n)) {
                return frames;
            }
        }
        tokio::select! {
            frame = client.recv() => {
                let frame = frame.expect("the resumed connection stays open");
                if let Some((room, seq, _)) = message(&frame) {
                    last.insert(room, seq);
                }
                frames.push(frame);
            }
            changed = targets.changed() => changed.unwrap(),
        }
    }
}

fn join_acks_succeeded(who: &str, frames: &[Value], ids: &[String]) {
    for id in ids {
        let ack = frames
            .iter()
            .find(|f| f["type"] == "ack" && f["data"]["original_id"] == id.as_str())
            .unwrap_or_else(|| panic!("{who}: no ack for join {id}"));
        assert_eq!(ack["data"]["status"], "success", "{who}: {ack}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_reaches_every_client_exactly_once_across_a_kill_9_restart() {
    let (cluster, mut server, sql) = setup(&[]).await;
    let mut clients = Vec::new();
    for user in ["ann", "ben"] {
        let mut client = server.connect(user, &["k:*"]).await;
        for room in KILL_ROOMS {
            let ack = client.join(room, None).await;
            assert_eq!(ack["status"], "success", "{ack}");
        }
        clients.push((user, client, Vec::new()));
    }

    let committed = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (url, committed) = (cluster.url("postgres"), committed.clone());
        tokio::spawn(async move {
            let sql = sql_client(&url).await;
            for i in 0..KILL_WRITES {
                let room = KILL_ROOMS[i as usize % 2];
                sql.execute(
                    "SELECT realtime.publish($1, 'e', jsonb_build_object('i', $2::int))",
                    &[&room, &i],
                )
                .await
                .expect("PostgreSQL stays up: every publish commits");
                committed.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // A third client joins mid-stream from the beginning: replay and live meet under writes.
    wait_for("150 commits", WAIT, || {
        committed.load(Ordering::Relaxed) >= 150
    })
    .await;
    let mut cat = server.connect("cat", &["k:*"]).await;
    let mut ids = Vec::new();
    for room in KILL_ROOMS {
        ids.push(
            cat.request("room:join", json!({"room": room, "since": 0}))
                .await,
        );
    }
    clients.push(("cat", cat, ids));

    let readers: Vec<_> = clients
        .into_iter()
        .map(|(user, client, ids)| (user, ids, tokio::spawn(record_until_gone(client))))
        .collect();
    wait_for("400 commits", WAIT, || {
        committed.load(Ordering::Relaxed) >= 400
    })
    .await;
    server.kill9();
    // Read at the kill: on a busy machine the writer may well finish during the restart.
    let at_kill = committed.load(Ordering::Relaxed);
    server.restart().await;

    let (targets_tx, targets_rx) = tokio::sync::watch::channel(None);
    let mut before = Vec::new();
    let mut resumed = Vec::new();
    for (user, ids, reader) in readers {
        let frames = reader.await.unwrap();
        join_acks_succeeded(user, &frames, &ids);
        let seen: Vec<_> = frames.iter().filter_map(message).collect();
        let last = check_consecutive(&format!("{user} before the kill"), &seen, &HashMap::new());
        let since: HashMap<String, u64> = KILL_ROOMS
            .iter()
            .map(|r| (r.to_string(), last.get(*r).copied().unwrap_or(0)))
            .collect();
        let mut client = server.connect(user, &["k:*"]).await;
        let mut ids = Vec::new();
        for room in KILL_ROOMS {
            ids.push(
                client
                    .request("room:join", json!({"room": room, "since": since[room]}))
                    .await,
            );
        }
        let reader = tokio::spawn(record_until(client, since.clone(), targets_rx.clone()));
        before.push((user, seen));
        resumed.push((user, since, ids, reader));
    }

    writer.await.unwrap();
    assert!(
        at_kill < KILL_WRITES as usize,
        "the kill happened during the writes"
    );
    let stored: Vec<(String, i64, i32)> = sql
        .query(
            "SELECT room, seq, (payload->>'i')::int FROM realtime.messages ORDER BY room, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut targets = HashMap::new();
    for room in KILL_ROOMS {
        let n: i64 = sql
            .query_one(
                "SELECT last_seq FROM realtime.rooms WHERE room = $1",
                &[&room],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            n,
            i64::from(KILL_WRITES / 2),
            "room {room}: every write committed"
        );
        targets.insert(room.to_owned(), n as u64);
    }
    targets_tx.send(Some(targets.clone())).unwrap();

    for ((user, seen), (_, since, ids, reader)) in before.into_iter().zip(resumed) {
        let frames = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .unwrap_or_else(|_| panic!("{user}: resumed to the last seq in time"))
            .unwrap();
        join_acks_succeeded(user, &frames, &ids);
        let after: Vec<_> = frames.iter().filter_map(message).collect();
        let last = check_consecutive(&format!("{user} after the restart"), &after, &since);
        assert_eq!(last, targets, "{user}");
        let mut union: BTreeMap<(String, u64), Value> = BTreeMap::new();
        for (room, seq, payload) in seen.into_iter().chain(after) {
            union.insert((room, seq), payload);
        }
        let got: Vec<(String, i64, i32)> = union
            .into_iter()
            .map(|((room, seq), payload)| (room, seq as i64, payload["i"].as_i64().unwrap() as i32))
            .collect();
        assert_eq!(
            got, stored,
            "{user}: every committed event exactly once per (room, seq), with its payload"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_cut_with_4008_while_others_receive_everything_and_it_can_resume() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut fast = server.connect("fast", &["big"]).await;
    assert_eq!(fast.join("big", None).await["status"], "success");
    let mut slow = server.connect("slow", &["big"]).await;
    assert_eq!(slow.join("big", None).await["status"], "success");
    let fast_reader = tokio::spawn(async move {
        let mut n = Vec::new();
        loop {
            match fast.receive(WAIT).await {
                Received::Frame(f) => {
                    if let Some(m) = message(&f) {
                        n.push(m);
                        if n.len() == 3000 {
                            return n;
                        }
                    }
                }
                other => panic!("fast: {other:?} after {}", n.len()),
            }
        }
    });
    // 3,000 events of ~4 KB in transactions of 50: ~12 MB, far more than the 1 MiB queue plus
    // the loopback socket buffers hold for a client that does not read.
    for batch in 0..60 {
        sql.execute(
            "SELECT count(realtime.publish('big', 'e', jsonb_build_object('i', i, 'pad', repeat('x', 4000)))) \
             FROM generate_series($1::int * 50 + 1, $1::int * 50 + 50) i",
            &[&batch],
        )
        .await
        .unwrap();
    }

    let got = fast_reader.await.unwrap();
    for (i, (room, seq, payload)) in got.iter().enumerate() {
        assert_eq!((room.as_str(), *seq), ("big", i as u64 + 1), "in order");
        assert_eq!(payload["i"], i + 1);
        assert_eq!(payload["pad"].as_str().unwrap().len(), 4000);
    }

    let (frames, close) = slow.until_close().await;
    let seen: Vec<_> = frames.iter().filter_map(message).collect();
    let last = check_consecutive("slow", &seen, &HashMap::new());
    let k = last.get("big").copied().unwrap_or(0);
    assert!(k < 3000, "the slow consumer was cut before the end");
    let others: Vec<_> = frames
        .iter()
        .filter(|f| f["type"] != "room:message")
        .collect();
    assert!(
        others
            .iter()
            .all(|f| f["type"] == "error" && f["data"]["code"] == "slow_consumer"),
        "only an optional slow_consumer error after the messages: {others:?}"
    );
    assert_eq!(close, Some(Some(4008)), "closed with 4008");
    let m = metrics(server.port).await;
    assert!(
        m["triptrip_slow_consumer_disconnects_total"] >= 1.0,
        "{m:?}"
    );

    let mut again = server.connect("slow", &["big"]).await;
    let ack = again.join("big", Some(k)).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(ack["result"]["seq"], 3000);
    let rest = again.messages(3000 - k as usize).await;
    let seqs: Vec<u64> = rest.iter().map(|m| m.1).collect();
    assert_eq!(
        seqs,
        ((k + 1)..=3000).collect::<Vec<_>>(),
        "resumed without gap"
    );
}

/// The kernel's state (`/proc/net/tcp`, hex) of the server's end of the connection from
/// `client_port` to `server_port`, if the socket still exists.
fn server_socket_state(server_port: u16, client_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields[3].to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stops_reading_entirely_is_disconnected_by_the_server() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_CONNECTION_QUEUE_BYTES", "65536")]).await;
    let mut slow = server.connect("slow", &["big"]).await;
    assert_eq!(slow.join("big", None).await["status"], "success");
    let client_port = match slow.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.local_addr().unwrap().port(),
        _ => unreachable!("plain ws"),
    };
    assert_eq!(
        server_socket_state(server.port, client_port).as_deref(),
        Some("01"),
        "ESTABLISHED"
    );
    sql.execute(
        "SELECT count(realtime.publish('big', 'e', jsonb_build_object('pad', repeat('x', 4000)))) \
         FROM generate_series(1, 3000)",
        &[],
    )
    .await
    .unwrap();
    // The client never reads. Within a bounded time the server must count the disconnect and
    // let go of the socket (FIN_WAIT or gone, not ESTABLISHED).
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let counted = metrics(server.port).await["triptrip_slow_consumer_disconnects_total"];
        let state = server_socket_state(server.port, client_port);
        if counted >= 1.0 && state.as_deref() != Some("01") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 15 s: slow_consumer_disconnects_total = {counted}, server socket state {state:?} \
             (01 = ESTABLISHED)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(slow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_answering_clients_open_and_close_silent_ones_with_4000() {
    let (_cluster, server, _sql) = setup(&[
        ("TRIPTRIP_HEARTBEAT_INTERVAL_MS", "200"),
        ("TRIPTRIP_HEARTBEAT_TIMEOUT_MS", "1000"),
    ])
    .await;
    let mut answering = server.connect("ann", &["hb"]).await;
    let mut silent = server.connect("sid", &["hb"]).await;
    let started = Instant::now();

    let answer = async {
        let mut pings = 0;
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            match answering.receive(Duration::from_millis(100)).await {
                Received::Frame(f) if f["type"] == "ping" => {
                    pings += 1;
                    answering.send(json!({"type": "pong"})).await;
                }
                Received::Frame(f) => panic!("unexpected frame {f}"),
                Received::Silent => {}
                other => panic!("the answering client was closed: {other:?}"),
            }
        }
        pings
    };
    let stay_silent = async {
        let mut pings = 0;
        let mut frames = Vec::new();
        loop {
            match silent.receive(WAIT).await {
                Received::Frame(f) if f["type"] == "ping" => pings += 1,
                Received::Frame(f) => frames.push(f),
                Received::Close(code, reason) => {
                    return (pings, frames, code, reason, started.elapsed())
                }
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    };
    let (answered, (silent_pings, frames, code, reason, closed_after)) =
        tokio::join!(answer, stay_silent);
    assert!(answered >= 10, "pings every 200 ms for 3 s, got {answered}");
    assert!(
        silent_pings >= 2,
        "the silent client was pinged too: {silent_pings}"
    );
    assert_eq!(code, Some(4000), "{reason}");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["data"]["code"], "heartbeat_timeout");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_millis(2500),
        "closed about 1 s after its last frame: {closed_after:?}"
    );
    // Still usable after 3 s of answering pings.
    let ack = answering.join("hb", None).await;
    assert_eq!(ack["status"], "success", "{ack}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_system_reconnect_refuses_new_clients_closes_1012_and_exits_0() {
    let (_cluster, mut server, _sql) = setup(&[]).await;
    let port = server.port;
    let url = server.ws_url(Some(&token("dan", &["d"], 3600)));
    let mut client = server.connect("dan", &["d"]).await;
    assert_eq!(client.join("d", None).await["status"], "success");

    let terminated = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    let notice = client.expect("system:reconnect").await;
    assert_eq!(notice["data"]["reason"], "draining", "{notice}");
    assert!(
        notice["data"]["retry_after_ms"].as_u64().is_some(),
        "{notice}"
    );

    // Our client is still connected, so the drain lasts TRIPTRIP_DRAIN_MS (500 ms): a new
    // connection now is refused.
    match tokio_tungstenite::connect_async(url.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            let body: Value =
                serde_json::from_slice(response.body().as_deref().unwrap_or_default()).unwrap();
            assert_eq!(body["data"]["code"], "draining", "{body}");
        }
        Err(e) => panic!("expected an HTTP 503 refusal, got {e}"),
        Ok(_) => panic!("a new connection was accepted while draining"),
    }
    let (ready, body) = http(port, "GET", "/ready", None, "").await.unwrap();
    assert_eq!(ready, 503, "not ready while draining: {body}");

    let (frames, close) = client.until_close().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(close, Some(Some(1012)), "closed as service restart");
    let (_server, status) = terminated.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_refresh_keeps_a_connection_past_its_old_expiry_and_an_expired_one_closes_4003() {
    let (_cluster, server, sql) = setup(&[]).await;
    let now = unix_now();
    let short = |user: &str| {
        token_with_claims(&json!({"sub": user, "rooms": ["t:*"], "exp": now + 3, "iat": now}))
    };
    let mut expiring = Client::connect(&server.ws_url(Some(&short("tia")))).await;
    let mut refreshed = Client::connect(&server.ws_url(Some(&short("tia")))).await;
    assert_eq!(refreshed.join("t:1", None).await["status"], "success");

    let longer = now + 3600;
    let fresh =
        token_with_claims(&json!({"sub": "tia", "rooms": ["t:*"], "exp": longer, "iat": now}));
    let id = refreshed
        .request("auth:refresh", json!({"token": fresh}))
        .await;
    let ack = refreshed.ack(&id).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert_eq!(ack["result"]["expires_at"], longer);

    let other = token_with_claims(&json!({"sub": "mallory", "rooms": ["*"], "exp": longer}));
    let id = refreshed
        .request("auth:refresh", json!({"token": other}))
        .await;
    let ack = refreshed.ack(&id).await;
    assert_eq!(ack["status"], "error", "{ack}");
    assert_eq!(ack["error"]["code"], "unauthorized");
    let id = refreshed
        .request(
            "auth:refresh",
            json!({"token": token("tia", &["t:*"], -120)}),
        )
        .await;
    let ack = refreshed.ack(&id).await;
    assert_eq!(ack["error"]["code"], "token_expired", "{ack}");

    let (frames, close) = expiring.until_close().await;
    let waited = unix_now() - now;
    assert!(waited >= 2, "closed only at expiry, after {waited} s");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["data"]["code"], "token_expired");
    assert_eq!(close, Some(Some(4003)));

    // Past the old expiry the refreshed connection still receives events.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sql.execute("SELECT realtime.publish('t:1', 'after', '{\"n\": 1}')", &[])
        .await
        .unwrap();
    let got = refreshed.messages(1).await;
    assert_eq!(got, [("t:1".to_owned(), 1, json!({"n": 1}))]);
    assert!(unix_now() > now + 3, "checked past the old expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_first_message_authenticates_and_anything_else_first_is_refused_4001() {
    let (_cluster, server, sql) = setup(&[]).await;
    let (mut client, hello) =
        Client::connect_with_auth_message(&server.ws_url(None), &token("fay", &["f:*"], 3600))
            .await;
    assert_eq!(hello["data"]["user"], "fay", "{hello}");
    assert_eq!(client.join("f:1", None).await["status"], "success");
    sql.execute("SELECT realtime.publish('f:1', 'e', '{\"x\": 1}')", &[])
        .await
        .unwrap();
    assert_eq!(
        client.messages(1).await,
        [("f:1".to_owned(), 1, json!({"x": 1}))]
    );

    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url(None))
        .await
        .unwrap();
    let mut early = Client::from_ws(ws);
    early
        .ws
        .send(Message::Text(
            json!({"type": "room:join", "id": "j", "data": {"room": "f:1"}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let (frames, close) = early.until_close().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["data"]["code"], "unauthorized");
    assert_eq!(close, Some(Some(4001)));
}

/// A client that reads as fast as it can receives one large transaction whole: the replication
/// worker lets writers drain when queues fill, so only clients that really fall behind are cut.
async fn reader_gets_one_burst(queue_bytes: &str, rows: i32) {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_CONNECTION_QUEUE_BYTES", queue_bytes)]).await;
    let mut reader = server.connect("reader", &["burst"]).await;
    assert_eq!(reader.join("burst", None).await["status"], "success");
    sql.execute(
        "SELECT realtime.publish('burst', 'e', jsonb_build_object('i', g, 'pad', repeat('x', 4000))) \
         FROM generate_series(1, $1) g",
        &[&rows],
    )
    .await
    .unwrap();
    let got = reader.messages(rows as usize).await;
    let seqs: Vec<u64> = got.iter().map(|m| m.1).collect();
    assert_eq!(seqs, (1..=rows as u64).collect::<Vec<_>>());
    assert_eq!(
        metrics(server.port).await["triptrip_slow_consumer_disconnects_total"],
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_is_not_cut_by_a_burst_its_socket_buffers_absorb_64_kib_queue() {
    reader_gets_one_burst("65536", 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_client_is_not_cut_by_a_burst_its_socket_buffers_absorb_default_queue() {
    reader_gets_one_burst("1048576", 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_that_no_longer_grants_a_joined_room_stops_its_events() {
    let (_cluster, server, sql) = setup(&[]).await;
    let mut client = server.connect("nina", &["n:*"]).await;
    client.join("n:1", None).await;
    client.join("n:2", None).await;
    let id = client
        .request(
            "auth:refresh",
            json!({ "token": token("nina", &["n:2"], 3600) }),
        )
        .await;
    assert_eq!(client.ack(&id).await["status"], "success");
    let left = client.expect("room:leave").await;
    assert_eq!(left["data"]["room"], "n:1");
    assert_eq!(left["data"]["reason"], "access_revoked");
    sql.execute("SELECT realtime.publish('n:1', 'e', '{}')", &[])
        .await
        .unwrap();
    sql.execute("SELECT realtime.publish('n:2', 'e', '{}')", &[])
        .await
        .unwrap();
    let next = client.messages(1).await;
    assert_eq!(
        next[0].0, "n:2",
        "nothing from n:1 after the narrower token"
    );
}
