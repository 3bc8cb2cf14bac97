//! Collaborative documents end to end: real server, real PostgreSQL, Yjs replicas (yrs)
//! speaking y-websocket over `/yjs/{doc}`.

mod common;

use std::time::Duration;

use common::server::{http, setup, token, TestServer, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Array, Doc, GetString, Map, MapPrelim, ReadTxn, Text, Transact, Update, WriteTxn};

/// A y-websocket editor: a yrs replica that applies everything the server sends.
struct Editor {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    doc: Doc,
    /// Close code, once the server closed the connection.
    closed: Option<u16>,
    denied: bool,
}

impl Editor {
    async fn connect(server: &TestServer, doc: &str, token: &str) -> Editor {
        let url = format!("ws://127.0.0.1:{}/yjs/{doc}?token={token}", server.port);
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut editor = Editor {
            ws,
            doc: Doc::new(),
            closed: None,
            denied: false,
        };
        let sv = editor.doc.transact().state_vector();
        editor
            .send(YMessage::Sync(SyncMessage::SyncStep1(sv)))
            .await;
        editor
    }

    /// Sends a message; a connection the server already closed counts as closed.
    async fn send(&mut self, message: YMessage) {
        let sent = self
            .ws
            .send(Message::Binary(message.encode_v1().into()))
            .await;
        if sent.is_err() && self.closed.is_none() {
            self.closed = Some(1006);
        }
    }

    /// Edits the local replica and sends the change as an update.
    async fn edit(&mut self, f: impl FnOnce(&mut yrs::TransactionMut)) {
        let update = {
            let mut txn = self.doc.transact_mut();
            f(&mut txn);
            txn.encode_update_v1()
        };
        self.send(YMessage::Sync(SyncMessage::Update(update))).await;
    }

    /// Reads and applies messages for `within`, or until the connection closes.
    async fn pump(&mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.closed.is_none() {
            let Ok(next) = tokio::time::timeout_at(deadline, self.ws.next()).await else {
                return;
            };
            match next {
                Some(Ok(Message::Binary(data))) => self.apply(&data).await,
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame.map_or(1005, |f| f.code.into()));
                }
                Some(Ok(_)) => {}
                _ => self.closed = Some(1006),
            }
        }
    }

    async fn apply(&mut self, data: &[u8]) {
        let message = YMessage::decode_v1(data).expect("server messages decode");
        match message {
            YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                let diff = self.doc.transact().encode_diff_v1(&sv);
                self.send(YMessage::Sync(SyncMessage::SyncStep2(diff)))
                    .await;
            }
            YMessage::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                let update = Update::decode_v1(&u).unwrap();
                self.doc.transact_mut().apply_update(update).unwrap();
            }
            YMessage::Auth(Some(_)) => self.denied = true,
            _ => {}
        }
    }

    /// Pumps until `check` holds on the replica.
    async fn until(&mut self, check: impl Fn(&Doc) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check(&self.doc) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached"
            );
            assert!(self.closed.is_none(), "closed with {:?}", self.closed);
            self.pump(Duration::from_millis(50)).await;
        }
    }

    fn text(&self, name: &str) -> String {
        let text = self.doc.get_or_insert_text(name);
        text.get_string(&self.doc.transact())
    }
}

fn append(name: &'static str, s: &'static str) -> impl FnOnce(&mut yrs::TransactionMut) {
    move |txn| {
        let text = txn.get_or_insert_text(name);
        let len = text.len(txn);
        text.insert(txn, len, s);
    }
}

async fn get_json(server: &TestServer, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = http(server.port, "GET", path, Some(token), "")
        .await
        .unwrap();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn stored_updates(sql: &tokio_postgres::Client, doc: &str) -> i64 {
    sql.query_one("SELECT last_seq FROM realtime.docs WHERE doc = $1", &[&doc])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test]
async fn edits_are_stored_before_they_reach_other_editors_and_late_joiners_get_everything() {
    let (_cluster, server, sql) = setup(&[]).await;
    let t = token("alice", &["trip:*"], 3600);
    let mut a = Editor::connect(&server, "trip:1", &t).await;
    let mut b = Editor::connect(&server, "trip:1", &t).await;
    a.pump(Duration::from_millis(200)).await;
    b.pump(Duration::from_millis(200)).await;

    a.edit(append("title", "Kyoto ")).await;
    b.edit(append("notes", "bring umbrella")).await;
    a.edit(|txn| {
        let itinerary = txn.get_or_insert_array("itinerary");
        itinerary.push_back(
            txn,
            MapPrelim::from([("title", "Fushimi Inari"), ("day", "1")]),
        );
    })
    .await;
    b.until(|d| d.get_or_insert_text("title").get_string(&d.transact()) == "Kyoto ")
        .await;
    a.until(|d| d.get_or_insert_text("notes").get_string(&d.transact()) == "bring umbrella")
        .await;
    b.until(|d| d.get_or_insert_array("itinerary").len(&d.transact()) == 1)
        .await;
    // The echo is the acknowledgement: what a replica received is in the database.
    assert!(stored_updates(&sql, "trip:1").await >= 3);

    let mut late = Editor::connect(&server, "trip:1", &t).await;
    late.until(|d| d.get_or_insert_text("notes").get_string(&d.transact()) == "bring umbrella")
        .await;
    assert_eq!(late.text("title"), "Kyoto ");

    // The JSON projection over HTTP.
    let (status, body) = get_json(&server, "/api/docs/trip:1", &t).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["content"]["title"], "Kyoto ");
    assert_eq!(body["content"]["notes"], "bring umbrella");
    assert_eq!(body["content"]["itinerary"][0]["title"], "Fushimi Inari");

    // And in SQL, kept current by the server within about a second.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let row = sql
            .query_one(
                "SELECT content::text FROM realtime.docs WHERE doc = 'trip:1'",
                &[],
            )
            .await
            .unwrap();
        let content: Value = serde_json::from_str(row.get(0)).unwrap();
        if content["notes"] == "bring umbrella" && content["title"] == "Kyoto " {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projection: {content}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_update_written_with_sql_reaches_connected_editors() {
    let (_cluster, server, sql) = setup(&[]).await;
    let t = token("alice", &["trip:*"], 3600);
    let mut editor = Editor::connect(&server, "trip:2", &t).await;
    editor.pump(Duration::from_millis(200)).await;

    let service = Doc::new();
    let update = {
        let text = service.get_or_insert_text("description");
        let mut txn = service.transact_mut();
        text.insert(&mut txn, 0, "written by a service");
        txn.encode_update_v1()
    };
    sql.execute(
        "INSERT INTO realtime.doc_updates (doc, update) VALUES ('trip:2', $1)",
        &[&update],
    )
    .await
    .unwrap();
    editor
        .until(|d| {
            d.get_or_insert_text("description")
                .get_string(&d.transact())
                == "written by a service"
        })
        .await;
}

#[tokio::test]
async fn viewers_updates_are_refused_and_bad_updates_close_only_their_connection() {
    let (_cluster, server, sql) = setup(&[]).await;
    sql.execute(
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES ('trip:3', 'viv', 'reader')",
        &[],
    )
    .await
    .unwrap();
    let writer_token = token("alice", &["trip:*"], 3600);
    let mut writer = Editor::connect(&server, "trip:3", &writer_token).await;
    writer.edit(append("title", "Osaka")).await;
    writer
        .until(|d| d.get_or_insert_text("title").get_string(&d.transact()) == "Osaka")
        .await;

    // A viewer receives edits but its own are refused.
    let mut viewer = Editor::connect(&server, "trip:3", &token("viv", &[], 3600)).await;
    viewer
        .until(|d| d.get_or_insert_text("title").get_string(&d.transact()) == "Osaka")
        .await;
    viewer.edit(append("title", " (hacked)")).await;
    viewer.pump(Duration::from_millis(500)).await;
    assert!(viewer.denied, "the viewer is told its changes are refused");
    assert!(viewer.closed.is_none());

    // No access at all: the upgrade is refused.
    let url = format!(
        "ws://127.0.0.1:{}/yjs/trip:3?token={}",
        server.port,
        token("mallory", &[], 3600)
    );
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    // Garbage, a truncated update and an update depending on missing changes: each closes
    // its own connection with a protocol error.
    let mut garbage = Editor::connect(&server, "trip:3", &writer_token).await;
    garbage
        .ws
        .send(Message::Binary(vec![0, 2, 200, 1, 2].into()))
        .await
        .unwrap();
    garbage.pump(Duration::from_secs(5)).await;
    assert_eq!(garbage.closed, Some(1008));

    let mut gap = Editor::connect(&server, "trip:3", &writer_token).await;
    let other = Doc::new();
    let text = other.get_or_insert_text("title");
    text.insert(&mut other.transact_mut(), 0, "first ");
    let sv = other.transact().state_vector();
    text.insert(&mut other.transact_mut(), 6, "second");
    let second_only = other.transact().encode_diff_v1(&sv);
    gap.send(YMessage::Sync(SyncMessage::Update(second_only)))
        .await;
    gap.pump(Duration::from_secs(5)).await;
    assert_eq!(gap.closed, Some(1008));

    let mut huge = Editor::connect(&server, "trip:3", &writer_token).await;
    let big = Doc::new();
    let update = {
        let text = big.get_or_insert_text("notes");
        let mut txn = big.transact_mut();
        text.insert(&mut txn, 0, &"x".repeat(1_200_000));
        txn.encode_update_v1()
    };
    let _ = huge
        .ws
        .send(Message::Binary(
            YMessage::Sync(SyncMessage::Update(update))
                .encode_v1()
                .into(),
        ))
        .await;
    huge.pump(Duration::from_secs(5)).await;
    assert!(huge.closed.is_some());

    // The document is unharmed and the first editor never noticed.
    writer.edit(append("title", "!")).await;
    writer
        .until(|d| d.get_or_insert_text("title").get_string(&d.transact()) == "Osaka!")
        .await;
    let (_, body) = get_json(&server, "/api/docs/trip:3", &writer_token).await;
    assert_eq!(body["content"]["title"], "Osaka!");
    assert!(body["content"].get("notes").is_none(), "{body}");
}

#[tokio::test]
async fn acknowledged_updates_survive_kill_9() {
    let (_cluster, mut server, _sql) = setup(&[]).await;
    let t = token("alice", &["trip:*"], 3600);
    let mut a = Editor::connect(&server, "trip:4", &t).await;
    for i in 0..50 {
        a.edit(move |txn| {
            let budget = txn.get_or_insert_map("budget");
            budget.insert(txn, format!("item{i}"), i as i64);
        })
        .await;
    }
    // Another replica saw all 50: each was stored before it was relayed.
    let mut b = Editor::connect(&server, "trip:4", &t).await;
    b.until(|d| d.get_or_insert_map("budget").len(&d.transact()) == 50)
        .await;
    server.kill_and_restart().await;
    let mut fresh = Editor::connect(&server, "trip:4", &t).await;
    fresh
        .until(|d| d.get_or_insert_map("budget").len(&d.transact()) == 50)
        .await;
}

#[tokio::test]
async fn versions_diff_and_restore_as_a_forward_change() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_DOC_VERSION_INTERVAL_MS", "0")]).await;
    let t = token("alice", &["trip:*"], 3600);
    let mut a = Editor::connect(&server, "trip:5", &t).await;
    a.edit(append("title", "Draft")).await;
    for i in 0..10 {
        a.edit(move |txn| {
            let budget = txn.get_or_insert_map("budget");
            budget.insert(txn, "hotel", 100 + i as i64);
        })
        .await;
    }
    // Ten updates make a version.
    let deadline = tokio::time::Instant::now() + WAIT;
    let first = loop {
        let (status, body) = get_json(&server, "/api/docs/trip:5/versions", &t).await;
        assert_eq!(status, 200, "{body}");
        if let Some(v) = body["versions"].as_array().and_then(|v| v.first()) {
            break v["version"].as_i64().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no version");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (_, v1) = get_json(&server, &format!("/api/docs/trip:5/versions/{first}"), &t).await;
    assert_eq!(v1["content"]["title"], "Draft");
    assert_eq!(v1["content"]["budget"]["hotel"], 109);

    a.edit(append("title", " final")).await;
    a.edit(|txn| {
        let budget = txn.get_or_insert_map("budget");
        budget.remove(txn, "hotel");
    })
    .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while get_json(&server, "/api/docs/trip:5", &t).await.1["content"]["title"] != "Draft final"
        || get_json(&server, "/api/docs/trip:5", &t).await.1["content"]
            .get("budget")
            .is_some()
    {
        assert!(tokio::time::Instant::now() < deadline, "edits not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (status, diff) = get_json(
        &server,
        &format!("/api/docs/trip:5/diff?from={first}&to=current"),
        &t,
    )
    .await;
    assert_eq!(status, 200, "{diff}");
    let changes = diff["changes"].as_array().unwrap();
    // An emptied root leaves the projection.
    assert!(
        changes.contains(&json!({"path": "/budget", "op": "removed", "from": {"hotel": 109}})),
        "{diff}"
    );
    assert!(
        changes.contains(
            &json!({"path": "/title", "op": "changed", "from": "Draft", "to": "Draft final"})
        ),
        "{diff}"
    );

    // Restore: a forward change the connected editor receives; history keeps growing.
    let (status, body) = http(
        server.port,
        "POST",
        &format!("/api/docs/trip:5/versions/{first}/restore"),
        Some(&t),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let restored: Value = serde_json::from_str(&body).unwrap();
    assert!(restored["version"].as_i64().unwrap() > first);
    a.until(|d| {
        let (title, budget) = (d.get_or_insert_text("title"), d.get_or_insert_map("budget"));
        let txn = d.transact();
        title.get_string(&txn) == "Draft" && budget.len(&txn) == 1
    })
    .await;
    let reasons: Vec<String> = sql
        .query(
            "SELECT reason FROM realtime.doc_history WHERE doc = 'trip:5' ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(reasons.last().map(String::as_str), Some("restore"));

    // Bad requests: unknown version, malformed version, no write access.
    let (status, _) = get_json(&server, "/api/docs/trip:5/versions/999999", &t).await;
    assert_eq!(status, 404);
    let (status, _) = get_json(&server, "/api/docs/trip:5/diff?from=abc", &t).await;
    assert_eq!(status, 400);
    let (status, _) = get_json(&server, "/api/docs/trip:5", &token("bob", &[], 3600)).await;
    assert_eq!(status, 403);
    let (status, _) = get_json(&server, "/api/docs/bad%20name", &t).await;
    assert_eq!(status, 400);
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &Value) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.as_str().unwrap())
        .unwrap()
}

#[tokio::test]
async fn documents_over_the_multiplexed_ws_connection() {
    let (_cluster, server, sql) = setup(&[]).await;
    sql.execute(
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES ('trip:6', 'viv', 'reader')",
        &[],
    )
    .await
    .unwrap();
    let t = token("alice", &["trip:*"], 3600);
    let mut yjs = Editor::connect(&server, "trip:6", &t).await;
    yjs.edit(append("title", "Nara")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while get_json(&server, "/api/docs/trip:6", &t).await.1["content"]["title"] != "Nara" {
        assert!(tokio::time::Instant::now() < deadline, "edit not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut ws = server.connect("alice", &["trip:*"]).await;
    let id = ws.request("doc:open", json!({ "doc": "trip:6" })).await;
    let sync = ws.expect("doc:sync").await;
    assert_eq!(ws.ack(&id).await["status"], "success");
    let replica = Doc::new();
    replica
        .transact_mut()
        .apply_update(Update::decode_v1(&unb64(&sync["data"]["update"])).unwrap())
        .unwrap();
    assert_eq!(
        replica
            .get_or_insert_text("title")
            .get_string(&replica.transact()),
        "Nara"
    );

    // An update over /ws is acknowledged with its seq once stored, and reaches /yjs editors.
    let update = {
        let text = replica.get_or_insert_text("title");
        let mut txn = replica.transact_mut();
        text.insert(&mut txn, 4, " park");
        txn.encode_update_v1()
    };
    let id = ws
        .request(
            "doc:update",
            json!({ "doc": "trip:6", "update": b64(&update) }),
        )
        .await;
    let ack = ws.ack(&id).await;
    assert_eq!(ack["status"], "success", "{ack}");
    assert!(ack["result"]["seq"].as_i64().unwrap() >= 2, "{ack}");
    yjs.until(|d| d.get_or_insert_text("title").get_string(&d.transact()) == "Nara park")
        .await;

    // And /yjs edits arrive as doc:update events.
    yjs.edit(append("notes", "deer")).await;
    let event = ws.expect("doc:update").await;
    assert_eq!(event["data"]["doc"], "trip:6");

    // Bad input: garbage update, unknown document, viewer writes, malformed state vector.
    let mut viewer = server.connect("viv", &[]).await;
    let id = viewer.request("doc:open", json!({ "doc": "trip:6" })).await;
    assert_eq!(viewer.ack(&id).await["result"]["write"], false);
    let id = viewer
        .request(
            "doc:update",
            json!({ "doc": "trip:6", "update": b64(&update) }),
        )
        .await;
    assert_eq!(viewer.ack(&id).await["error"]["code"], "forbidden");
    let id = ws
        .request(
            "doc:update",
            json!({ "doc": "trip:6", "update": "/////w==" }),
        )
        .await;
    assert_eq!(ws.ack(&id).await["status"], "error");
    let id = ws
        .request(
            "doc:update",
            json!({ "doc": "trip:7", "update": b64(&update) }),
        )
        .await;
    assert_eq!(ws.ack(&id).await["error"]["code"], "not_open");
    let id = ws
        .request(
            "doc:open",
            json!({ "doc": "trip:6", "state_vector": "%%%" }),
        )
        .await;
    assert_eq!(ws.ack(&id).await["error"]["code"], "invalid_field");
    ws.request("doc:open", json!({ "doc": "no spaces allowed" }))
        .await;
    assert_eq!(ws.expect("error").await["data"]["code"], "invalid_field");
    let mut stranger = server.connect("mallory", &[]).await;
    let id = stranger
        .request("doc:open", json!({ "doc": "trip:6" }))
        .await;
    assert_eq!(stranger.ack(&id).await["error"]["code"], "forbidden");
}

#[tokio::test]
async fn bad_sql_input_is_refused_with_a_clear_error_and_changes_nothing() {
    let (_cluster, _server, sql) = setup(&[]).await;
    let ok = Doc::new();
    let update = {
        let text = ok.get_or_insert_text("notes");
        let mut txn = ok.transact_mut();
        text.insert(&mut txn, 0, "x");
        txn.encode_update_v1()
    };
    let cases: [(&str, Vec<u8>, Option<i64>, &str); 4] = [
        ("no spaces", update.clone(), None, "invalid doc"),
        ("trip:9", Vec::new(), None, "update must be 1-1048576 bytes"),
        (
            "trip:9",
            vec![0; 1_048_577],
            None,
            "update must be 1-1048576 bytes",
        ),
        ("trip:9", update.clone(), Some(5), "was not reserved"),
    ];
    for (doc, bytes, seq, wanted) in cases {
        let e = sql
            .execute(
                "INSERT INTO realtime.doc_updates (doc, seq, update) VALUES ($1, $2, $3)",
                &[&doc, &seq, &bytes],
            )
            .await
            .expect_err(wanted);
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap();
        assert!(message.contains(wanted), "{message}");
    }
    let e = sql
        .execute("SELECT realtime.prune_doc_versions(interval '-1 day')", &[])
        .await
        .unwrap_err();
    assert!(e.as_db_error().unwrap().message().contains("non-negative"));
    let rows: i64 = sql
        .query_one("SELECT count(*) FROM realtime.doc_updates", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    // Writers that omit seq get gap-free seqs.
    for expected in 1..=3_i64 {
        let seq: i64 = sql
            .query_one(
                "INSERT INTO realtime.doc_updates (doc, update) VALUES ('trip:9', $1) RETURNING seq",
                &[&update],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(seq, expected);
    }
}

#[tokio::test]
async fn deleting_a_membership_row_removes_the_editor_live() {
    let (_cluster, server, sql) = setup(&[]).await;
    sql.batch_execute(
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES \
         ('trip:8', 'mia', 'writer'), ('trip:8', 'max', 'writer')",
    )
    .await
    .unwrap();
    let mut yjs = Editor::connect(&server, "trip:8", &token("mia", &[], 3600)).await;
    let mut ws = server.connect("max", &[]).await;
    let id = ws.request("doc:open", json!({ "doc": "trip:8" })).await;
    assert_eq!(ws.ack(&id).await["status"], "success");
    // A token grant is not revoked by a membership row.
    let mut granted = Editor::connect(&server, "trip:8", &token("mia", &["trip:8"], 3600)).await;
    yjs.pump(Duration::from_millis(300)).await;

    sql.batch_execute("DELETE FROM realtime.room_members WHERE room = 'trip:8'")
        .await
        .unwrap();
    yjs.pump(WAIT).await;
    assert_eq!(yjs.closed, Some(4403));
    let closed = ws.expect("doc:closed").await;
    assert_eq!(closed["data"]["reason"], "access_revoked");
    let id = ws
        .request("doc:update", json!({ "doc": "trip:8", "update": "AAA=" }))
        .await;
    assert_eq!(ws.ack(&id).await["error"]["code"], "not_open");
    granted.edit(append("title", "still here")).await;
    granted.pump(Duration::from_millis(500)).await;
    assert!(granted.closed.is_none());
}

#[tokio::test]
async fn edits_reach_editors_on_another_node_through_the_wal() {
    let (cluster, a, _sql) = setup(&[]).await;
    let b = TestServer::start(&cluster, &[("TRIPTRIP_SLOT", "second_node")]).await;
    let t = token("alice", &["trip:*"], 3600);
    let mut on_a = Editor::connect(&a, "trip:10", &t).await;
    let mut on_b = Editor::connect(&b, "trip:10", &t).await;
    on_a.pump(Duration::from_millis(200)).await;
    on_b.pump(Duration::from_millis(200)).await;
    on_a.edit(append("title", "from node A")).await;
    on_b.edit(append("notes", "from node B")).await;
    on_b.until(|d| d.get_or_insert_text("title").get_string(&d.transact()) == "from node A")
        .await;
    on_a.until(|d| d.get_or_insert_text("notes").get_string(&d.transact()) == "from node B")
        .await;
}

#[tokio::test]
async fn awareness_is_relayed_throttled_and_expires_after_silence() {
    use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
    let (_cluster, server, _sql) = setup(&[("TRIPTRIP_DOC_AWARENESS_TIMEOUT_MS", "1000")]).await;
    let t = token("alice", &["trip:*"], 3600);
    let mut a = Editor::connect(&server, "trip:11", &t).await;
    let mut b = Editor::connect(&server, "trip:11", &t).await;
    a.pump(Duration::from_millis(200)).await;
    b.pump(Duration::from_millis(200)).await;
    let cursor = |clock: u32, x: u32| {
        YMessage::Awareness(AwarenessUpdate {
            clients: std::collections::HashMap::from([(
                yrs::block::ClientID::new(77),
                AwarenessUpdateEntry {
                    clock,
                    json: format!(r#"{{"cursor":{x}}}"#).into(),
                },
            )]),
        })
    };
    // A burst of 50 cursor moves: the last state arrives, but not 50 relays.
    for i in 1..=50 {
        a.send(cursor(i, i)).await;
    }
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.last().map(String::as_str) != Some(r#"{"cursor":50}"#) {
        assert!(tokio::time::Instant::now() < deadline, "{seen:?}");
        let Ok(Some(Ok(Message::Binary(data)))) =
            tokio::time::timeout(Duration::from_secs(5), b.ws.next()).await
        else {
            panic!("no awareness relayed: {seen:?}");
        };
        if let Ok(YMessage::Awareness(update)) = YMessage::decode_v1(&data) {
            seen.extend(update.clients.values().map(|e| e.json.to_string()));
        }
    }
    assert!(seen.len() < 25, "throttled to 20 Hz, got {}", seen.len());
    // Silence: the state expires and everyone is told (a null state).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "awareness never expired"
        );
        let Ok(Some(Ok(Message::Binary(data)))) =
            tokio::time::timeout(Duration::from_secs(5), b.ws.next()).await
        else {
            continue;
        };
        if let Ok(YMessage::Awareness(update)) = YMessage::decode_v1(&data) {
            if update.clients.values().any(|e| &*e.json == "null") {
                break;
            }
        }
    }
}
