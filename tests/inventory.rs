//! Live inventory and bookings: backend SQL changes reach exactly the resource's subscribers
//! (current state first), reservations never oversell under contention and tell every loser,
//! idempotency and release, price alerts through the notification feed, booking status
//! precedence with admin override and history, and bad input. Real server, real PostgreSQL,
//! real WebSocket clients.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use common::server::{http, token, Client, TestServer};
use futures_util::SinkExt;
use pgcluster::Cluster;
use serde_json::{json, Value};
use tokio_postgres::Client as Sql;

/// A private cluster allowing `max_connections`, a server on it (with `envs`) and a SQL client.
async fn setup_with(max_connections: &str, envs: &[(&str, &str)]) -> (Cluster, TestServer, Sql) {
    let settings = [("max_connections", max_connections.to_owned())];
    let cluster = tokio::task::spawn_blocking(move || {
        let settings: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Cluster::temporary_with(&settings)
    })
    .await
    .unwrap()
    .unwrap();
    let server = TestServer::start(&cluster, envs).await;
    let sql = common::sql_client(&cluster.url("postgres")).await;
    (cluster, server, sql)
}

/// Inserts resources: (resource_id, kind, available, total, price, currency).
async fn seed(sql: &Sql, rows: &[(&str, &str, i32, i32, &str, &str)]) {
    for (id, kind, available, total, price, currency) in rows {
        sql.execute(
            "INSERT INTO realtime.inventory (resource_id, kind, name, available, total, price, currency) \
             VALUES ($1, $2, 'Name of ' || $1, $3, $4, $5::text::numeric, $6)",
            &[id, kind, available, total, price, currency],
        )
        .await
        .unwrap();
    }
}

async fn one(sql: &Sql, query: &str) -> i64 {
    sql.query_one(query, &[]).await.unwrap().get(0)
}

/// Sends `inventory:subscribe` and returns the ack's data.
async fn subscribe(client: &mut Client, resources: &[&str]) -> Value {
    let id = client
        .request("inventory:subscribe", json!({ "resources": resources }))
        .await;
    client.ack(&id).await
}

/// The next `inventory:update` event's data.
async fn update(client: &mut Client) -> Value {
    client.expect("inventory:update").await["data"].clone()
}

/// Sends a request and returns the ack's data.
async fn ask(client: &mut Client, kind: &str, data: Value) -> Value {
    let id = client.request(kind, data).await;
    client.ack(&id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_update_reaches_every_subscriber_of_that_resource_and_no_one_else() {
    let (_cluster, server, sql) = setup_with("100", &[]).await;
    seed(
        &sql,
        &[
            ("hotel:1", "hotel_room", 5, 10, "120.00", "JPY"),
            ("hotel:2", "hotel_room", 7, 10, "90", "JPY"),
        ],
    )
    .await;
    let mut alice = server.connect("alice", &[]).await;
    let mut bob = server.connect("bob", &[]).await;
    let mut carol = server.connect("carol", &[]).await;
    for client in [&mut alice, &mut bob] {
        let ack = subscribe(client, &["hotel:1", "hotel:404", "hotel:1"]).await;
        assert_eq!(ack["status"], "success", "{ack}");
        assert_eq!(ack["result"]["resources"], json!(["hotel:1"]));
        assert_eq!(ack["result"]["unknown"], json!(["hotel:404"]));
        // Current state first.
        let state = update(client).await;
        assert_eq!(state["resource_id"], "hotel:1");
        assert_eq!(state["version"], 1);
        assert_eq!(state["available"], 5);
        assert_eq!(state["price"], "120.00");
        assert_eq!(state["currency"], "JPY");
        assert_eq!(state["kind"], "hotel_room");
    }
    subscribe(&mut carol, &["hotel:2"]).await;
    assert_eq!(update(&mut carol).await["resource_id"], "hotel:2");
    let metrics = common::server::metrics(server.port).await;
    assert_eq!(metrics["triptrip_inventory_watched_resources"], 2.0);

    // A rolled-back change is never delivered; a committed one reaches both subscribers.
    sql.batch_execute(
        "BEGIN; UPDATE realtime.inventory SET available = 0 WHERE resource_id = 'hotel:1'; ROLLBACK;",
    )
    .await
    .unwrap();
    sql.batch_execute(
        "UPDATE realtime.inventory SET available = 4, price = 99.5 WHERE resource_id = 'hotel:1'",
    )
    .await
    .unwrap();
    for client in [&mut alice, &mut bob] {
        let state = update(client).await;
        assert_eq!(
            (state["version"].clone(), state["available"].clone()),
            (json!(2), json!(4)),
            "{state}"
        );
        assert_eq!(state["price"], "99.5");
        assert!(state["updated_at"].as_str().unwrap().contains('T'));
    }
    // Carol's next event is her own resource's: nothing of hotel:1 reached her.
    sql.batch_execute("UPDATE realtime.inventory SET total = 11 WHERE resource_id = 'hotel:2'")
        .await
        .unwrap();
    let state = update(&mut carol).await;
    assert_eq!(
        (state["resource_id"].as_str(), state["version"].as_i64()),
        (Some("hotel:2"), Some(2))
    );

    // After unsubscribing, bob hears no more of hotel:1.
    let ack = ask(
        &mut bob,
        "inventory:unsubscribe",
        json!({ "resources": ["hotel:1", "hotel:2"] }),
    )
    .await;
    assert_eq!(ack["result"]["resources"], json!(["hotel:1"]));
    assert_eq!(ack["result"]["not_subscribed"], json!(["hotel:2"]));
    subscribe(&mut bob, &["hotel:2"]).await;
    assert_eq!(update(&mut bob).await["version"], 2);
    sql.batch_execute(
        "UPDATE realtime.inventory SET available = 3 WHERE resource_id = 'hotel:1';
         UPDATE realtime.inventory SET available = 6 WHERE resource_id = 'hotel:2';",
    )
    .await
    .unwrap();
    assert_eq!(update(&mut alice).await["available"], 3);
    let state = update(&mut bob).await;
    assert_eq!(state["resource_id"], "hotel:2", "{state}");

    // A deleted resource is announced to its subscribers.
    sql.batch_execute("DELETE FROM realtime.inventory WHERE resource_id = 'hotel:2'")
        .await
        .unwrap();
    let removed = bob.expect("inventory:removed").await;
    assert_eq!(removed["data"]["resource_id"], "hotel:2");

    // The same states over HTTP.
    let alice_token = token("alice", &[], 3600);
    let (status, body) = http(
        server.port,
        "GET",
        "/api/inventory/hotel:1",
        Some(&alice_token),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (state["available"].as_i64(), state["version"].as_i64()),
        (Some(3), Some(3))
    );
    for (path, want) in [
        ("/api/inventory/hotel:404", 404),
        ("/api/inventory/bad%20id", 400),
        ("/api/inventory?limit=0", 400),
        ("/api/inventory?available=maybe", 400),
        ("/api/inventory?kind=Hotel", 400),
    ] {
        let (status, body) = http(server.port, "GET", path, Some(&alice_token), "")
            .await
            .unwrap();
        assert_eq!(status, want, "{path}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["type"], "error", "{body}");
    }
    let (status, _) = http(server.port, "GET", "/api/inventory/hotel:1", None, "")
        .await
        .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_reservers_for_ten_units_exactly_ten_win_and_every_loser_is_told() {
    const RESERVERS: usize = 200;
    let (cluster, server, sql) = setup_with("300", &[]).await;
    seed(
        &sql,
        &[
            ("concert:A", "ticket", 10, 10, "100", "JPY"),
            ("concert:B", "ticket", 3, 50, "80", "JPY"),
            ("concert:C", "ticket", 0, 50, "10", "JPY"),
            ("concert:D", "ticket", 100, 100, "120", "JPY"),
            ("concert:E", "ticket", 100, 100, "60", "EUR"),
            ("hotel:1", "hotel_room", 100, 100, "1", "JPY"),
        ],
    )
    .await;
    let users: Vec<String> = (0..RESERVERS).map(|i| format!("fan-{i:03}")).collect();
    let mut clients = Vec::new();
    for user in &users {
        clients.push(server.connect(user, &[]).await);
    }
    let mut connections = Vec::new();
    for _ in 0..RESERVERS {
        connections.push(common::sql_client(&cluster.url("postgres")).await);
    }
    // Everyone asks at once.
    let start = Arc::new(tokio::sync::Barrier::new(RESERVERS));
    let tasks: Vec<_> = connections
        .into_iter()
        .zip(users.clone())
        .map(|(connection, user)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let row = connection
                    .query_one(
                        "SELECT realtime.reserve('concert:A', $1, 1, 'buy-' || $1)",
                        &[&user],
                    )
                    .await
                    .unwrap();
                (user, row.get::<_, Value>(0))
            })
        })
        .collect();
    let mut outcomes = HashMap::new();
    for task in tasks {
        let (user, outcome) = task.await.unwrap();
        outcomes.insert(user, outcome);
    }
    let winners: Vec<&String> = outcomes
        .iter()
        .filter(|(_, o)| o["status"] == "confirmed")
        .map(|(u, _)| u)
        .collect();
    assert_eq!(winners.len(), 10, "exactly the units there were");
    assert_eq!(
        one(
            &sql,
            "SELECT available::int8 FROM realtime.inventory WHERE resource_id = 'concert:A'"
        )
        .await,
        0
    );
    assert_eq!(
        one(&sql, "SELECT coalesce(sum(quantity), 0)::int8 FROM realtime.reservations WHERE resource_id = 'concert:A' AND status = 'confirmed'").await,
        10
    );
    assert_eq!(
        one(
            &sql,
            "SELECT count(*) FROM realtime.reservations WHERE status = 'rejected'"
        )
        .await,
        190
    );
    // Every loser is offered the same-kind resources with units left: same currency first, then
    // by price; the sold-out one and the other kind are not offered.
    let expected_alternatives = json!(["concert:B", "concert:D", "concert:E"]);
    for outcome in outcomes.values().filter(|o| o["status"] == "rejected") {
        assert_eq!(outcome["reason"], "sold_out", "{outcome}");
        let offered: Vec<&Value> = outcome["alternatives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| &a["resource_id"])
            .collect();
        assert_eq!(json!(offered), expected_alternatives, "{outcome}");
    }

    // Each user's WebSocket heard its own outcome, the losers with the alternatives.
    for (user, client) in users.iter().zip(clients.iter_mut()) {
        let outcome = &outcomes[user];
        let frame = client
            .find(|f| {
                f["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("reservation:"))
            })
            .await
            .expect("an outcome event");
        let data = &frame["data"];
        assert_eq!(
            data["reservation_id"], outcome["reservation_id"],
            "{user}: {frame}"
        );
        if outcome["status"] == "confirmed" {
            assert_eq!(frame["type"], "reservation:confirmed");
        } else {
            assert_eq!(frame["type"], "reservation:failed", "{frame}");
            assert_eq!(data["reason"], "sold_out");
            assert_eq!(data["alternatives"][0]["resource_id"], "concert:B");
            assert_eq!(data["alternatives"][0]["price"], "80");
            assert_eq!(data["alternatives"].as_array().unwrap().len(), 3);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_changed_while_the_slot_was_lost_is_read_again_and_sent() {
    let (_cluster, server, sql) = setup_with("100", &[]).await;
    seed(&sql, &[("r:1", "ticket", 50, 50, "10", "JPY")]).await;
    let mut client = server.connect("alice", &[]).await;
    subscribe(&mut client, &["r:1"]).await;
    assert_eq!(update(&mut client).await["version"], 1);
    // A change committed while no slot exists is never streamed (a new slot starts after
    // transactions running at its creation): only reading the table again can tell.
    let mut missed = None;
    for _ in 0..20 {
        common::drop_slot_under_its_consumer(&sql, "triptrip_realtime").await;
        let row = sql
            .query_one(
                "WITH changed AS (UPDATE realtime.inventory SET available = available - 1 \
                                  WHERE resource_id = 'r:1' RETURNING version) \
                 SELECT version, (SELECT count(*) FROM pg_replication_slots \
                                  WHERE slot_name = 'triptrip_realtime') FROM changed",
                &[],
            )
            .await
            .unwrap();
        let (version, slots): (i64, i64) = (row.get(0), row.get(1));
        if slots == 0 {
            missed = Some(version);
            break;
        }
    }
    let missed = missed.expect("a change while the slot was gone");
    loop {
        let state = update(&mut client).await;
        if state["version"] == missed {
            assert_eq!(state["available"], 50 - missed + 1, "{state}");
            break;
        }
    }
}

/// Waits until `n` backends wait for a lock while calling `realtime.reserve`.
async fn lock_waiters(sql: &Sql, n: i64) {
    for _ in 0..400 {
        let waiting = one(
            sql,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%realtime.reserve(%'",
        )
        .await;
        if waiting == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{n} reservers never queued on the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservers_are_served_in_the_order_they_reached_the_lock() {
    let (cluster, _server, sql) = setup_with("100", &[]).await;
    seed(&sql, &[("seat:1", "ticket", 2, 2, "50", "EUR")]).await;
    // A reservation holds the row until its transaction ends.
    let holder = common::sql_client(&cluster.url("postgres")).await;
    holder
        .batch_execute("BEGIN; SELECT realtime.reserve('seat:1', 'first', 1);")
        .await
        .unwrap();
    let mut queued = Vec::new();
    for (n, user) in ["second", "third", "fourth"].into_iter().enumerate() {
        let connection = common::sql_client(&cluster.url("postgres")).await;
        queued.push(tokio::spawn(async move {
            let outcome: Value = connection
                .query_one("SELECT realtime.reserve('seat:1', $1, 1)", &[&user])
                .await
                .unwrap()
                .get(0);
            (user, outcome["status"].as_str().unwrap().to_owned())
        }));
        lock_waiters(&sql, n as i64 + 1).await;
    }
    holder.batch_execute("COMMIT").await.unwrap();
    let mut outcomes = Vec::new();
    for task in queued {
        outcomes.push(task.await.unwrap());
    }
    assert_eq!(
        outcomes,
        [
            ("second", "confirmed".to_owned()),
            ("third", "rejected".to_owned()),
            ("fourth", "rejected".to_owned())
        ],
        "the one unit left goes to the first in line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_key_reserves_once_even_when_the_repeats_race() {
    let (cluster, server, sql) = setup_with("100", &[]).await;
    seed(&sql, &[("room:9", "hotel_room", 5, 5, "70", "EUR")]).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let connection = common::sql_client(&cluster.url("postgres")).await;
        tasks.push(tokio::spawn(async move {
            connection
                .query_one(
                    "SELECT realtime.reserve('room:9', 'alice', 2, 'checkout-7')",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, Value>(0)
        }));
    }
    let mut ids = Vec::new();
    let mut first = 0;
    for task in tasks {
        let outcome = task.await.unwrap();
        assert_eq!(outcome["status"], "confirmed", "{outcome}");
        if outcome.get("replayed").is_none() {
            first += 1;
        }
        ids.push(outcome["reservation_id"].clone());
    }
    assert_eq!(first, 1, "one call reserved, the others replayed it");
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert_eq!(
        one(&sql, "SELECT available::int8 FROM realtime.inventory").await,
        3
    );
    assert_eq!(
        one(&sql, "SELECT count(*) FROM realtime.reservations").await,
        1
    );
    common::assert_refused(
        &sql,
        &[(
            "SELECT realtime.reserve('room:9', 'alice', 1, 'checkout-7')",
            "was used for another reservation",
        )],
    )
    .await;
    // The same key for another user is another reservation.
    let other: Value = sql
        .query_one(
            "SELECT realtime.reserve('room:9', 'bob', 2, 'checkout-7')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(other["reservation_id"], ids[0]);

    // Over the WebSocket, a retried frame id is the key.
    let mut carol = server.connect("carol", &[]).await;
    let frame =
        json!({ "type": "inventory:reserve", "id": "pay-1", "data": { "resource_id": "room:9" } });
    carol.send(frame.clone()).await;
    let ack = carol.ack("pay-1").await;
    assert_eq!(ack["result"]["status"], "confirmed", "{ack}");
    assert_eq!(ack["result"]["available"], 0);
    carol.send(frame).await;
    let again = carol.ack("pay-1").await;
    assert_eq!(
        again["result"]["reservation_id"],
        ack["result"]["reservation_id"]
    );
    assert_eq!(again["result"]["replayed"], true);
    assert_eq!(
        one(&sql, "SELECT available::int8 FROM realtime.inventory").await,
        0
    );
    let event = carol.expect("reservation:confirmed").await;
    assert_eq!(
        event["data"]["reservation_id"],
        ack["result"]["reservation_id"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_gives_the_units_back_once() {
    let (_cluster, server, sql) = setup_with("100", &[]).await;
    seed(&sql, &[("tour:1", "tour", 2, 2, "30", "USD")]).await;
    let mut alice = server.connect("alice", &[]).await;
    let mut bob = server.connect("bob", &[]).await;
    let mine = ask(
        &mut alice,
        "inventory:reserve",
        json!({ "resource_id": "tour:1", "quantity": 2, "key": "a" }),
    )
    .await;
    assert_eq!(mine["result"]["status"], "confirmed", "{mine}");
    let reservation = mine["result"]["reservation_id"].as_i64().unwrap();
    let lost = ask(
        &mut bob,
        "inventory:reserve",
        json!({ "resource_id": "tour:1" }),
    )
    .await;
    assert_eq!(lost["result"]["status"], "rejected");
    assert_eq!(lost["result"]["alternatives"], json!([]));
    let lost_id = lost["result"]["reservation_id"].as_i64().unwrap();

    // Not bob's to release, nor a rejected one.
    let refused = ask(
        &mut bob,
        "inventory:release",
        json!({ "reservation_id": reservation }),
    )
    .await;
    assert_eq!(refused["error"]["code"], "not_found", "{refused}");
    let refused = ask(
        &mut bob,
        "inventory:release",
        json!({ "reservation_id": lost_id }),
    )
    .await;
    assert_eq!(refused["error"]["code"], "invalid_field", "{refused}");
    assert_eq!(
        one(&sql, "SELECT available::int8 FROM realtime.inventory").await,
        0
    );

    let released = ask(
        &mut alice,
        "inventory:release",
        json!({ "reservation_id": reservation }),
    )
    .await;
    assert_eq!(released["result"]["status"], "released", "{released}");
    assert_eq!(released["result"]["available"], 2);
    let twice = ask(
        &mut alice,
        "inventory:release",
        json!({ "reservation_id": reservation }),
    )
    .await;
    assert_eq!(twice["result"]["already_released"], true);
    assert_eq!(
        one(&sql, "SELECT available::int8 FROM realtime.inventory").await,
        2
    );
    let event = alice.expect("reservation:released").await;
    assert_eq!(event["data"]["reservation_id"], reservation);
    assert!(event["data"]["released_at"].is_string());

    // Units beyond a lowered total are not given back.
    let again: Value = sql
        .query_one("SELECT realtime.reserve('tour:1', 'alice', 2)", &[])
        .await
        .unwrap()
        .get(0);
    sql.batch_execute("UPDATE realtime.inventory SET total = 1")
        .await
        .unwrap();
    sql.execute(
        "SELECT realtime.release($1)",
        &[&again["reservation_id"].as_i64().unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(
        one(&sql, "SELECT available::int8 FROM realtime.inventory").await,
        1
    );

    // The user's reservations over HTTP, newest first.
    let (status, body) = http(
        server.port,
        "GET",
        "/api/reservations?limit=10",
        Some(&token("alice", &[], 60)),
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let listed: Value = serde_json::from_str(&body).unwrap();
    let statuses: Vec<&str> = listed["reservations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["released", "released"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_drop_across_an_alert_threshold_notifies_once() {
    let (_cluster, server, sql) = setup_with("100", &[]).await;
    sql.batch_execute("INSERT INTO realtime.users (user_id) VALUES ('alice'), ('bob')")
        .await
        .unwrap();
    seed(&sql, &[("hotel:7", "hotel_room", 3, 3, "120", "JPY")]).await;
    sql.batch_execute(
        "INSERT INTO realtime.price_alerts (user_id, resource_id, below) VALUES ('alice', 'hotel:7', 100);
         INSERT INTO realtime.price_alerts (user_id, resource_id, percent_drop) VALUES ('bob', 'hotel:7', 25);",
    )
    .await
    .unwrap();
    common::assert_refused(
        &sql,
        &[
            (
                "INSERT INTO realtime.price_alerts (user_id, resource_id, below) VALUES ('zed', 'hotel:7', 1)",
                "unknown user 'zed'",
            ),
            (
                "INSERT INTO realtime.price_alerts (user_id, resource_id, below, percent_drop) VALUES ('bob', 'hotel:7', 1, 5)",
                "exactly one of below and percent_drop",
            ),
            (
                "INSERT INTO realtime.price_alerts (user_id, resource_id, percent_drop) VALUES ('bob', 'hotel:7', 100)",
                "percent_drop must be between 0 and 100",
            ),
        ],
    )
    .await;
    let mut phone = server.connect("alice", &[]).await;
    let id = phone.request("notification:subscribe", json!({})).await;
    phone.ack(&id).await;
    let count = |user: &str| {
        format!("SELECT count(*) FROM realtime.notifications WHERE user_id = '{user}' AND type = 'price_alert'")
    };
    let set_price = |price: &str| format!("UPDATE realtime.inventory SET price = {price}");

    sql.batch_execute(&set_price("110")).await.unwrap();
    assert_eq!(one(&sql, &count("alice")).await, 0, "110 is above 100");
    sql.batch_execute(&set_price("99")).await.unwrap();
    assert_eq!(one(&sql, &count("alice")).await, 1, "crossed 100");
    let frame = phone.expect("notification:new").await;
    assert_eq!(frame["data"]["type"], "price_alert");
    assert_eq!(frame["data"]["payload"]["price"], "99");
    assert_eq!(frame["data"]["payload"]["previous_price"], "110");
    assert_eq!(frame["data"]["body"], "Name of hotel:7 is now 99 JPY.");
    sql.batch_execute(&set_price("95")).await.unwrap();
    sql.batch_execute("UPDATE realtime.inventory SET available = 2")
        .await
        .unwrap();
    assert_eq!(
        one(&sql, &count("alice")).await,
        1,
        "still below: no new alert"
    );
    assert_eq!(one(&sql, &count("bob")).await, 0, "bob's threshold is 90");
    sql.batch_execute(&set_price("90")).await.unwrap();
    assert_eq!(one(&sql, &count("bob")).await, 1, "120 less 25 %");
    // Back above and across again: a new alert (at the same price within 24 h, none).
    sql.batch_execute(&set_price("130")).await.unwrap();
    sql.batch_execute(&set_price("98")).await.unwrap();
    assert_eq!(one(&sql, &count("alice")).await, 2);
    sql.batch_execute(&set_price("130")).await.unwrap();
    sql.batch_execute(&set_price("98")).await.unwrap();
    assert_eq!(
        one(&sql, &count("alice")).await,
        2,
        "same alert, same price, same day"
    );
    let frame = phone.expect("notification:new").await;
    assert_eq!(frame["data"]["payload"]["price"], "98");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booking_status_follows_precedence_with_admin_override_and_history() {
    let (_cluster, server, sql) = setup_with("100", &[]).await;
    let mut alice = server.connect("alice", &[]).await;
    sql.batch_execute("INSERT INTO realtime.bookings (booking_id, user_id, resource_id) VALUES ('BK-1', 'alice', 'hotel:1')")
        .await
        .unwrap();
    let created = alice.expect("booking:status").await;
    assert_eq!(
        (
            created["data"]["status"].as_str(),
            created["data"]["version"].as_i64()
        ),
        (Some("pending"), Some(1))
    );

    let set = |status: &str, admin: bool| {
        format!("SELECT realtime.set_booking_status('BK-1', '{status}', 'svc', {admin}, 'test')")
    };
    let mut results = Vec::new();
    for (status, admin, result, now) in [
        ("confirmed", false, "applied", "confirmed"),
        ("pending", false, "rejected", "confirmed"),
        ("cancelled", false, "applied", "cancelled"),
        ("confirmed", false, "rejected", "cancelled"),
        ("confirmed", true, "overridden", "confirmed"),
        ("confirmed", false, "unchanged", "confirmed"),
    ] {
        let outcome: Value = sql
            .query_one(&set(status, admin), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            (outcome["result"].as_str(), outcome["status"].as_str()),
            (Some(result), Some(now)),
            "{outcome}"
        );
        results.push(result);
    }
    // The user saw each change that happened, in order, and nothing else.
    for (status, version) in [("confirmed", 2), ("cancelled", 3), ("confirmed", 4)] {
        let event = alice.expect("booking:status").await;
        assert_eq!(
            (
                event["data"]["status"].as_str(),
                event["data"]["version"].as_i64()
            ),
            (Some(status), Some(version)),
            "{event}"
        );
    }
    let history = sql
        .query(
            "SELECT from_status, requested, result, status_after, admin FROM realtime.booking_status_history \
             WHERE booking_id = 'BK-1' ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let recorded: Vec<&str> = history.iter().map(|r| r.get::<_, &str>(2)).collect();
    assert_eq!(recorded, results);
    assert!(history[4].get::<_, bool>(4), "the override is marked admin");
    common::assert_refused(
        &sql,
        &[
            ("UPDATE realtime.bookings SET status = 'pending'", "realtime.set_booking_status()"),
            ("SELECT realtime.set_booking_status('BK-1', 'done', 'svc')", "invalid status"),
            ("SELECT realtime.set_booking_status('BK-404', 'pending', 'svc')", "unknown booking"),
            ("SELECT realtime.set_booking_status('BK-1', 'pending', NULL)", "actor"),
            ("INSERT INTO realtime.bookings (booking_id, user_id, status) VALUES ('BK-2', 'a', 'lost')", "invalid status"),
        ],
    )
    .await;
    assert_eq!(
        one(&sql, "SELECT count(*) FROM realtime.booking_status_history").await,
        6
    );
    assert_eq!(one(&sql, "SELECT version FROM realtime.bookings").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_conflicting_status_requests_resolve_to_the_most_advanced() {
    let (cluster, _server, sql) = setup_with("100", &[]).await;
    sql.batch_execute(
        "INSERT INTO realtime.bookings (booking_id, user_id) VALUES ('BK-9', 'alice')",
    )
    .await
    .unwrap();
    let statuses = ["pending", "confirmed", "cancelled"];
    let mut tasks = Vec::new();
    for i in 0..30 {
        let connection = common::sql_client(&cluster.url("postgres")).await;
        let status = statuses[i % 3];
        tasks.push(tokio::spawn(async move {
            for _ in 0..2 {
                connection
                    .query_one(
                        "SELECT realtime.set_booking_status('BK-9', $1, 'agent', false)",
                        &[&status],
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let status: String = sql
        .query_one("SELECT status FROM realtime.bookings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "cancelled", "the most advanced status wins");
    let history = sql
        .query(
            "SELECT realtime.booking_status_rank(from_status), realtime.booking_status_rank(requested), \
                    result, realtime.booking_status_rank(status_after) \
             FROM realtime.booking_status_history ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 60, "every request recorded");
    let mut current = 1;
    for row in &history {
        let (from, requested, result, after): (i32, i32, &str, i32) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(from, current, "each request saw the previous one's outcome");
        let expected = match requested.cmp(&from) {
            std::cmp::Ordering::Greater => ("applied", requested),
            std::cmp::Ordering::Equal => ("unchanged", from),
            std::cmp::Ordering::Less => ("rejected", from),
        };
        assert_eq!((result, after), expected);
        current = after;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let (_cluster, server, sql) =
        setup_with("100", &[("TRIPTRIP_MAX_ROOMS_PER_CONNECTION", "3")]).await;
    seed(
        &sql,
        &[
            ("r:1", "ticket", 5, 5, "10", "JPY"),
            ("r:2", "ticket", 5, 5, "10", "JPY"),
            ("r:3", "ticket", 5, 5, "10", "JPY"),
            ("r:4", "ticket", 5, 5, "10", "JPY"),
        ],
    )
    .await;
    let snapshot = "SELECT (sum(available) * 1000 + sum(version) + (SELECT count(*) FROM realtime.reservations) * 100000 \
                    + (SELECT count(*) FROM realtime.reservation_keys) * 10000000)::int8 FROM realtime.inventory";
    let before = one(&sql, snapshot).await;
    common::assert_refused(
        &sql,
        &[
            ("SELECT realtime.reserve('r:404', 'alice', 1, 'k')", "unknown resource"),
            ("SELECT realtime.reserve('r:1', 'alice', 0, 'k')", "quantity must be 1-10000"),
            ("SELECT realtime.reserve('r:1', 'alice', -2)", "quantity must be 1-10000"),
            ("SELECT realtime.reserve('r:1', NULL, 1)", "user_id"),
            ("SELECT realtime.reserve('bad id', 'alice', 1)", "invalid resource_id"),
            ("SELECT realtime.reserve('r:1', 'alice', 1, '')", "idempotency_key"),
            ("SELECT realtime.release(424242)", "no reservation"),
            ("UPDATE realtime.inventory SET available = available - 6 WHERE resource_id = 'r:1'", "oversold"),
            ("UPDATE realtime.inventory SET available = 6 WHERE resource_id = 'r:1'", "exceeds total"),
            ("UPDATE realtime.inventory SET price = -1 WHERE resource_id = 'r:1'", "invalid price"),
            ("UPDATE realtime.inventory SET currency = 'yen' WHERE resource_id = 'r:1'", "invalid currency"),
            ("UPDATE realtime.inventory SET resource_id = 'r:9' WHERE resource_id = 'r:1'", "cannot change"),
            ("INSERT INTO realtime.inventory (resource_id, kind, name, available, total, price, currency) VALUES ('r:5', 'Ticket', 'x', 1, 1, 1, 'JPY')", "invalid kind"),
            ("INSERT INTO realtime.reservations (resource_id, user_id, quantity, status) VALUES ('r:1', 'alice', 1, 'confirmed')", "written by realtime.reserve()"),
        ],
    )
    .await;

    let mut client = server.connect("alice", &[]).await;
    // Frames that do not parse are answered with an `error` frame naming the field.
    for (kind, data, field) in [
        ("inventory:subscribe", json!({ "resources": "r:1" }), "data"),
        (
            "inventory:subscribe",
            json!({ "resources": [] }),
            "data.resources",
        ),
        (
            "inventory:subscribe",
            json!({ "resources": ["r 1"] }),
            "data.resources",
        ),
        (
            "inventory:reserve",
            json!({ "resource_id": "r:1", "quantity": -1 }),
            "data.quantity",
        ),
        (
            "inventory:reserve",
            json!({ "resource_id": "r:1", "quantity": 0 }),
            "data.quantity",
        ),
        (
            "inventory:reserve",
            json!({ "resource_id": "r:1", "quantity": "2" }),
            "data",
        ),
        (
            "inventory:release",
            json!({ "reservation_id": -4 }),
            "data.reservation_id",
        ),
    ] {
        client.request(kind, data.clone()).await;
        let error = client.expect("error").await;
        assert_eq!(error["data"]["code"], "invalid_field", "{data}: {error}");
        let message = error["data"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("`{field}`")), "{data}: {message}");
    }
    client
        .send(json!({ "type": "inventory:explode", "id": "x" }))
        .await;
    assert_eq!(
        client.expect("error").await["data"]["code"],
        "unknown_event"
    );
    client
        .ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            "{\"type\":\"inventory:subscribe\"".into(),
        ))
        .await
        .unwrap();
    assert_eq!(client.expect("error").await["data"]["code"], "bad_frame");
    // Valid frames the database refuses are answered with an error ack.
    let ack = ask(
        &mut client,
        "inventory:reserve",
        json!({ "resource_id": "r:404" }),
    )
    .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");
    let ack = ask(
        &mut client,
        "inventory:release",
        json!({ "reservation_id": 77 }),
    )
    .await;
    assert_eq!(ack["error"]["code"], "not_found", "{ack}");

    // At most 3 resources per connection here: a request past it subscribes to nothing.
    let ack = subscribe(&mut client, &["r:1", "r:2"]).await;
    assert_eq!(ack["status"], "success", "{ack}");
    let ack = subscribe(&mut client, &["r:3", "r:4"]).await;
    assert_eq!(ack["error"]["code"], "too_many_subscriptions", "{ack}");
    sql.batch_execute(
        "UPDATE realtime.inventory SET total = 6 WHERE resource_id IN ('r:3', 'r:4');
         UPDATE realtime.inventory SET total = 7 WHERE resource_id = 'r:2';",
    )
    .await
    .unwrap();
    for _ in 0..2 {
        update(&mut client).await;
    }
    let next = update(&mut client).await;
    assert_eq!(
        (next["resource_id"].as_str(), next["total"].as_i64()),
        (Some("r:2"), Some(7)),
        "{next}"
    );
    assert_eq!(
        one(&sql, snapshot).await,
        before + 3,
        "only the three total updates changed anything"
    );
}
