//! The transactional outbox relay: moves events that services committed to `realtime.outbox`
//! to the rooms and webhooks subscribed to their topic (`realtime.outbox_subscriptions`).
//!
//! Guarantees: within a topic, every subscription receives the events in seq order, at least
//! once. A round claims cursors with `FOR UPDATE SKIP LOCKED` (relays on any number of nodes
//! share the topics; one topic's cursor is never worked on twice at once), delivers, advances
//! the cursors and commits. Room delivery inserts into `realtime.messages` in that same
//! transaction, so it is exactly once. A webhook gets the events one by one and its cursor
//! moves past those it accepted; a relay killed mid-batch commits nothing, and the next round
//! sends the batch again (receivers deduplicate by `webhook-id`, `outbox:<topic>:<seq>`). A
//! failing webhook backs off (1 min, 5 min, 30 min, 2 h, 24 h) and holds up only its topic.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_postgres::{Pool, Transaction};
use futures_util::future::join_all;
use serde_json::json;
use tokio::sync::{watch, Notify};

use crate::notify::channels::webhook::WebhookSender;
use crate::notify::listen::listen;

/// The NOTIFY channel the outbox trigger signals.
pub const WAKE_CHANNEL: &str = "triptrip_outbox";
const CURSORS_PER_ROUND: i32 = 64;
const EVENTS_PER_CURSOR: i64 = 200;
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Counters for `/metrics`.
#[derive(Default)]
pub struct OutboxStats {
    pub to_rooms: AtomicU64,
    pub to_webhooks: AtomicU64,
    pub webhook_failures: AtomicU64,
}

pub struct Relay {
    pool: Pool,
    webhooks: WebhookSender,
    pub stats: Arc<OutboxStats>,
}

/// One claimed (subscription, topic) cursor and the events after it.
struct Claimed {
    subscription: i64,
    topic: String,
    /// The cursor's position when claimed (locked until the round commits).
    after: i64,
    target: Target,
    events: Vec<Event>,
}

enum Target {
    Room(String),
    Webhook { url: String, secret: String },
}

struct Event {
    seq: i64,
    body: Vec<u8>,
}

/// What happened to one claimed cursor.
enum Outcome {
    /// Delivered through this seq (and, for a webhook, failed after it with this error).
    Webhook {
        delivered: Option<i64>,
        error: Option<String>,
    },
    Room,
}

impl Relay {
    pub fn new(pool: Pool, webhooks: WebhookSender, stats: Arc<OutboxStats>) -> Relay {
        Relay {
            pool,
            webhooks,
            stats,
        }
    }

    /// Runs rounds until `shutdown` flips: again at once after a busy round, on every wake-up
    /// notification, and at least every second.
    pub async fn run(&self, database_url: &str, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let listener = {
            let (url, wake) = (database_url.to_owned(), wake.clone());
            tokio::spawn(async move { listen(&url, WAKE_CHANNEL, &wake).await })
        };
        loop {
            let busy = match self.round().await {
                Ok(claimed) => claimed > 0,
                Err(e) => {
                    tracing::warn!(error = %e, "an outbox round failed; retrying");
                    false
                }
            };
            if busy {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(POLL_EVERY) => {}
                _ = shutdown.changed() => break,
            }
        }
        listener.abort();
    }

    /// One round; returns how many cursors it claimed.
    pub async fn round(&self) -> anyhow::Result<usize> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let cursors = tx
            .query(
                "SELECT * FROM realtime.claim_outbox_cursors($1)",
                &[&CURSORS_PER_ROUND],
            )
            .await
            .context("claiming outbox cursors")?;
        let mut claimed = Vec::with_capacity(cursors.len());
        for cursor in &cursors {
            let target = match (
                cursor.get::<_, Option<String>>("room"),
                cursor.get::<_, Option<String>>("webhook_url"),
                cursor.get::<_, Option<String>>("webhook_secret"),
            ) {
                (Some(room), _, _) => Target::Room(room),
                (None, Some(url), Some(secret)) => Target::Webhook { url, secret },
                _ => continue,
            };
            let topic: String = cursor.get("topic");
            let after: i64 = cursor.get("last_seq");
            let events = match target {
                Target::Room(_) => Vec::new(),
                Target::Webhook { .. } => webhook_events(&tx, &topic, after).await?,
            };
            claimed.push(Claimed {
                subscription: cursor.get("subscription_id"),
                topic,
                after,
                target,
                events,
            });
        }
        let outcomes = join_all(claimed.iter().map(|c| self.deliver(c))).await;
        for (cursor, outcome) in claimed.iter().zip(outcomes) {
            match (&cursor.target, outcome) {
                (Target::Room(room), Outcome::Room) => {
                    let moved = to_room(&tx, cursor, room).await?;
                    self.stats.to_rooms.fetch_add(moved, Ordering::Relaxed);
                }
                (_, Outcome::Webhook { delivered, error }) => {
                    if let Some(seq) = delivered {
                        tx.execute(
                            "SELECT realtime.outbox_advance($1, $2, $3)",
                            &[&cursor.subscription, &cursor.topic, &seq],
                        )
                        .await?;
                    }
                    if let Some(error) = error {
                        self.stats.webhook_failures.fetch_add(1, Ordering::Relaxed);
                        tx.execute(
                            "SELECT realtime.outbox_failed($1, $2, $3)",
                            &[&cursor.subscription, &cursor.topic, &error],
                        )
                        .await?;
                    }
                }
                (Target::Webhook { .. }, Outcome::Room) => {}
            }
        }
        tx.commit().await?;
        Ok(cursors.len())
    }

    /// Sends a webhook cursor's events in order, stopping at the first failure; room cursors
    /// are delivered inside the transaction afterwards.
    async fn deliver(&self, cursor: &Claimed) -> Outcome {
        let Target::Webhook { url, secret } = &cursor.target else {
            return Outcome::Room;
        };
        let mut delivered = None;
        for event in &cursor.events {
            let id = format!("outbox:{}:{}", cursor.topic, event.seq);
            if let Err(e) = self
                .webhooks
                .send_event(url, secret, &id, &event.body)
                .await
            {
                return Outcome::Webhook {
                    delivered,
                    error: Some(e.to_string()),
                };
            }
            self.stats.to_webhooks.fetch_add(1, Ordering::Relaxed);
            delivered = Some(event.seq);
        }
        Outcome::Webhook {
            delivered,
            error: None,
        }
    }
}

async fn webhook_events(
    tx: &Transaction<'_>,
    topic: &str,
    after: i64,
) -> anyhow::Result<Vec<Event>> {
    let rows = tx
        .query(
            "SELECT seq, event, payload, to_json(created_at) #>> '{}' FROM realtime.outbox \
             WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            &[&topic, &after, &EVENTS_PER_CURSOR],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| {
            let seq: i64 = row.get(0);
            let body = json!({
                "type": "outbox",
                "topic": topic,
                "seq": seq,
                "event": row.get::<_, &str>(1),
                "payload": row.get::<_, serde_json::Value>(2),
                "created_at": row.get::<_, &str>(3),
            });
            Event {
                seq,
                body: body.to_string().into_bytes(),
            }
        })
        .collect())
}

/// Appends the cursor's next events to the room's log and advances the cursor, in the
/// caller's transaction. Returns how many events moved.
async fn to_room(tx: &Transaction<'_>, cursor: &Claimed, room: &str) -> anyhow::Result<u64> {
    // Fix the range first: a later statement may see events committed meanwhile.
    let upto: Option<i64> = tx
        .query_one(
            "SELECT max(seq) FROM (SELECT seq FROM realtime.outbox \
             WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3) m",
            &[&cursor.topic, &cursor.after, &EVENTS_PER_CURSOR],
        )
        .await?
        .get(0);
    let Some(upto) = upto else {
        return Ok(0);
    };
    let moved = tx
        .execute(
            "INSERT INTO realtime.messages (room, event, payload) \
             SELECT $1, o.event, o.payload FROM realtime.outbox o \
             WHERE o.topic = $2 AND o.seq > $3 AND o.seq <= $4 ORDER BY o.seq",
            &[&room, &cursor.topic, &cursor.after, &upto],
        )
        .await
        .context("relaying outbox events to a room")?;
    tx.execute(
        "SELECT realtime.outbox_advance($1, $2, $3)",
        &[&cursor.subscription, &cursor.topic, &upto],
    )
    .await?;
    Ok(moved)
}
