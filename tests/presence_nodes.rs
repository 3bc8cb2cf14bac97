//! Presence across nodes and its cost in PostgreSQL: a node that is killed has its users go
//! offline on the others, and a node writes one statement per flush interval whatever its
//! client count. Real servers, real PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::server::{metrics, setup, Client, TestServer};
use serde_json::{json, Value};

/// Nodes heartbeat every 300 ms and are dead after 1.5 s of silence.
const FAST_NODES: &[(&str, &str)] = &[
    ("TRIPTRIP_PRESENCE_NODE_HEARTBEAT_MS", "300"),
    ("TRIPTRIP_PRESENCE_NODE_EXPIRY_MS", "1500"),
];

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

async fn subscribe(client: &mut Client) -> Value {
    let id = client.request("presence:subscribe", json!({})).await;
    let ack = client.ack(&id).await;
    assert_eq!(ack["status"], "success", "{ack}");
    ack["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_users_go_offline_on_the_other_node() {
    let (cluster, mut a, sql) = setup(FAST_NODES).await;
    let mut envs = FAST_NODES.to_vec();
    envs.push(("TRIPTRIP_SLOT", "second_node"));
    let b = TestServer::start(&cluster, &envs).await;
    sql.batch_execute(
        "INSERT INTO realtime.room_members (room, user_id) \
         VALUES ('trip:1', 'alice'), ('trip:1', 'bob'), ('trip:1', 'carol')",
    )
    .await
    .unwrap();
    let mut bob = b.connect("bob", &[]).await;
    subscribe(&mut bob).await;
    let _alice_phone = a.connect("alice", &[]).await;
    let _carol = a.connect("carol", &[]).await;
    // Alice on both nodes: only her session on the dead node ends.
    becomes(&mut bob, "alice", "online").await;
    becomes(&mut bob, "carol", "online").await;
    let _alice_laptop = b.connect("alice", &[]).await;
    let nodes: i64 = sql
        .query_one("SELECT count(*) FROM realtime.presence_nodes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 2);

    let killed = Instant::now();
    a.kill9();
    let offline = becomes(&mut bob, "carol", "offline").await;
    println!(
        "carol offline on the other node {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert!(offline["last_seen"].is_string());
    let reaped: Vec<(String, String)> = sql
        .query(
            "SELECT user_id, end_reason FROM realtime.presence_session_history ORDER BY user_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        reaped,
        [
            ("alice".to_owned(), "node_expired".to_owned()),
            ("carol".to_owned(), "node_expired".to_owned())
        ]
    );
    let states: Vec<(String, String)> = sql
        .query(
            "SELECT user_id, status FROM realtime.presence ORDER BY user_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        states,
        [
            ("alice".to_owned(), "online".to_owned()),
            ("bob".to_owned(), "online".to_owned()),
            ("carol".to_owned(), "offline".to_owned())
        ],
        "alice is still connected to the live node"
    );
    let nodes: i64 = sql
        .query_one("SELECT count(*) FROM realtime.presence_nodes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(nodes, 1, "the dead node's row is gone");
    assert!(metrics(b.port).await["triptrip_presence_reaped_sessions_total"] >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_writes_one_statement_per_interval_whatever_its_client_count() {
    let (_cluster, server, sql) = setup(&[("TRIPTRIP_PRESENCE_FLUSH_MS", "200")]).await;
    let before = metrics(server.port).await;
    let started = Instant::now();
    let users: Vec<String> = (0..100).map(|i| format!("user-{i}")).collect();
    let connects = users.iter().map(|user| server.connect(user, &[]));
    let mut clients = futures_util::future::join_all(connects).await;
    // Wait until every session is stored.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored: i64 = sql
            .query_one("SELECT count(*) FROM realtime.presence_sessions", &[])
            .await
            .unwrap()
            .get(0);
        if stored == 100 {
            break;
        }
        assert!(Instant::now() < deadline, "{stored} sessions stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let after = metrics(server.port).await;
    let delta = |name: &str| after[name] - before[name];
    let flushes = delta("triptrip_presence_flushes_total");
    let intervals = elapsed.as_millis() as f64 / 200.0;
    println!(
        "100 sessions in {flushes} statements over {:.1} s ({:.0} rows)",
        elapsed.as_secs_f64(),
        delta("triptrip_presence_rows_written_total")
    );
    assert!(delta("triptrip_presence_ops_total") >= 100.0);
    assert!(
        flushes <= intervals + 1.0,
        "{flushes} statements in {intervals:.1} intervals"
    );
    assert_eq!(after["triptrip_presence_sessions"], 100.0);

    // Activity of live sessions writes nothing: the node's heartbeat vouches for them.
    let quiet = metrics(server.port).await;
    for _ in 0..5 {
        for client in &mut clients {
            client.send(json!({ "type": "presence:activity" })).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let later = metrics(server.port).await;
    assert_eq!(
        later["triptrip_presence_flushes_total"], quiet["triptrip_presence_flushes_total"],
        "activity alone wrote something"
    );
}
