//! The dispatcher: delivers notifications on the outside channels (push, email, SMS, webhooks).
//!
//! Guarantees: at least once. A round claims due deliveries inside one transaction
//! (`realtime.claim_deliveries_v2`, `FOR UPDATE SKIP LOCKED`, so dispatchers on any number of
//! nodes share the work without sending a delivery twice), sends them, records every outcome
//! (`realtime.record_delivery_attempts`) and commits. A dispatcher that dies mid-round loses its
//! connection and with it the row locks: the deliveries are due again at once and another round
//! resends them. Claimed pushes of users in do-not-disturb are deferred by the claim itself and
//! count toward the batch, so a batch of them does not hide the deliveries due behind it. Rounds
//! follow each other at once while they claim full batches, and otherwise start on
//! `NOTIFY triptrip_deliveries` (one per inserting transaction, a hint only) or every second,
//! which also picks up retries as they fall due.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use deadpool_postgres::Pool;
use futures_util::future::join_all;
use tokio::sync::{watch, Notify};
use tokio_postgres::Row;

use super::channels::{Channels, Message, Priority, SendError, Target};
use super::listen::listen;

/// The NOTIFY channel the routing trigger signals.
pub const WAKE_CHANNEL: &str = "triptrip_deliveries";
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Where "now" comes from: the system clock in production, a settable one in tests of the
/// retry schedule and do-not-disturb.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The channels a delivery can be on, as `realtime.notification_deliveries.channel` names
/// them, in the order `/metrics` lists them.
pub const CHANNELS: [&str; 4] = ["push", "email", "sms", "webhook"];

/// Upper bounds (seconds) of the send latency histogram: notification created to provider
/// accepted.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0,
];

/// Counters of one channel, for `/metrics`.
#[derive(Default)]
pub struct ChannelStats {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    /// Cumulative histogram of created-to-sent latency, one counter per bucket, then +Inf.
    pub latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    pub latency_sum_micros: AtomicU64,
}

#[derive(Default)]
pub struct DispatchStats {
    pub rounds: AtomicU64,
    pub round_failures: AtomicU64,
    pub channels: [ChannelStats; CHANNELS.len()],
}

impl DispatchStats {
    fn channel(&self, name: &str) -> Option<&ChannelStats> {
        CHANNELS
            .iter()
            .position(|c| *c == name)
            .map(|i| &self.channels[i])
    }

    fn record(&self, channel: &str, outcome: &Outcome, age: Duration) {
        let Some(stats) = self.channel(channel) else {
            return;
        };
        match outcome {
            Outcome::Sent(_) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                let secs = age.as_secs_f64();
                let bucket = LATENCY_BUCKETS
                    .iter()
                    .position(|b| secs <= *b)
                    .unwrap_or(LATENCY_BUCKETS.len());
                for counter in &stats.latency[bucket..] {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                stats
                    .latency_sum_micros
                    .fetch_add(age.as_micros() as u64, Ordering::Relaxed);
            }
            Outcome::Failed(SendError::Transient(_)) => {
                stats.retried.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

enum Outcome {
    Sent(Option<String>),
    Failed(SendError),
}

impl Outcome {
    /// `realtime.record_delivery_attempts`' outcome and detail.
    fn columns(self) -> (&'static str, String) {
        match self {
            Outcome::Sent(id) => ("sent", id.unwrap_or_default()),
            Outcome::Failed(SendError::Transient(e)) => ("transient", e),
            Outcome::Failed(SendError::Permanent(e)) => ("permanent", e),
            Outcome::Failed(SendError::InvalidTarget(e)) => ("invalid_target", e),
        }
    }
}

pub struct Dispatcher {
    pool: Pool,
    channels: Arc<Channels>,
    clock: Arc<dyn Clock>,
    batch: i32,
    poll_every: Duration,
    pub stats: Arc<DispatchStats>,
}

impl Dispatcher {
    pub fn new(
        pool: Pool,
        channels: Arc<Channels>,
        clock: Arc<dyn Clock>,
        batch: i32,
        stats: Arc<DispatchStats>,
    ) -> Dispatcher {
        Dispatcher {
            pool,
            channels,
            clock,
            batch: batch.clamp(1, 10_000),
            poll_every: POLL_EVERY,
            stats,
        }
    }

    /// How long an idle dispatcher waits for a wake-up notification before it looks for due
    /// deliveries anyway (default one second).
    pub fn poll_every(mut self, every: Duration) -> Dispatcher {
        self.poll_every = every;
        self
    }

    /// Runs rounds until `shutdown` flips: at once while a round claims a full batch (sent or
    /// deferred for do-not-disturb), on every wake-up notification, and at least every
    /// [`poll_every`](Self::poll_every).
    pub async fn run(&self, database_url: &str, mut shutdown: watch::Receiver<bool>) {
        let wake = Arc::new(Notify::new());
        let listener = {
            let (url, wake) = (database_url.to_owned(), wake.clone());
            tokio::spawn(async move { listen(&url, WAKE_CHANNEL, &wake).await })
        };
        loop {
            let full = match self.round().await {
                Ok(claimed) => claimed >= self.batch as usize,
                Err(e) => {
                    self.stats.round_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "a delivery round failed; retrying");
                    false
                }
            };
            if full {
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(self.poll_every) => {}
                _ = shutdown.changed() => break,
            }
        }
        listener.abort();
    }

    /// One round: claims up to a batch of due deliveries, sends those not deferred for
    /// do-not-disturb concurrently, records the outcomes and commits. Returns how many
    /// deliveries it claimed, deferred ones included: fewer than a batch means that nothing else
    /// was due (or it was locked by another dispatcher).
    pub async fn round(&self) -> anyhow::Result<usize> {
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .query(
                "SELECT * FROM realtime.claim_deliveries_v2($1, $2)",
                &[&now, &self.batch],
            )
            .await
            .context("claiming deliveries")?;
        let count = claimed.len();
        let rows: Vec<Row> = claimed
            .into_iter()
            .filter(|row| row.get::<_, Option<SystemTime>>("deferred_until").is_none())
            .collect();
        if rows.len() < count {
            tracing::debug!(
                deferred = count - rows.len(),
                "push deliveries deferred for do-not-disturb"
            );
        }
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(count);
        }
        let sends = rows.iter().map(|row| self.send(row));
        let outcomes = join_all(sends).await;
        let sent_at = self.clock.now();
        let mut ids = Vec::with_capacity(rows.len());
        let mut kinds = Vec::with_capacity(rows.len());
        let mut details = Vec::with_capacity(rows.len());
        for (row, outcome) in rows.iter().zip(outcomes) {
            let channel: &str = row.get("channel");
            let created: SystemTime = row.get("created_at");
            let age = sent_at.duration_since(created).unwrap_or_default();
            self.stats.record(channel, &outcome, age);
            let (kind, detail) = outcome.columns();
            ids.push(row.get::<_, i64>("delivery_id"));
            kinds.push(kind);
            details.push(detail);
        }
        tx.execute(
            "SELECT realtime.record_delivery_attempts($1, $2, $3, $4)",
            &[&sent_at, &ids, &kinds, &details],
        )
        .await
        .context("recording delivery attempts")?;
        tx.commit().await?;
        Ok(count)
    }

    async fn send(&self, row: &Row) -> Outcome {
        let message = match message(row) {
            Ok(message) => message,
            Err(e) => return Outcome::Failed(SendError::Permanent(e)),
        };
        let target = match target(row) {
            Ok(target) => target,
            Err(e) => return Outcome::Failed(SendError::InvalidTarget(e)),
        };
        match self.channels.send(&target, &message).await {
            Ok(sent) => Outcome::Sent(sent.provider_id),
            Err(e) => {
                tracing::debug!(delivery = message.delivery_id, error = %e, "delivery attempt failed");
                Outcome::Failed(e)
            }
        }
    }
}

fn message(row: &Row) -> Result<Message, String> {
    let priority = match row.get::<_, &str>("priority") {
        "low" => Priority::Low,
        "medium" => Priority::Medium,
        "high" => Priority::High,
        "critical" => Priority::Critical,
        other => return Err(format!("unknown priority {other:?}")),
    };
    Ok(Message {
        delivery_id: row.get("delivery_id"),
        notification_id: row.get("notification_id"),
        user_id: row.get("user_id"),
        kind: row.get("type"),
        priority,
        title: row.get("title"),
        body: row.get("body"),
        payload: row.get("payload"),
        expires_at: row.get("expires_at"),
    })
}

/// The delivery's target from the claimed row. A target that vanished (a push token deleted
/// meanwhile, an email removed) is an invalid target.
fn target(row: &Row) -> Result<Target, String> {
    let text = |column: &str| -> Result<String, String> {
        row.get::<_, Option<String>>(column)
            .ok_or_else(|| format!("the delivery has no {column} any more"))
    };
    match row.get::<_, &str>("channel") {
        "push" => match text("platform")?.as_str() {
            "fcm" => Ok(Target::Fcm {
                token: text("token")?,
            }),
            "apns" => Ok(Target::Apns {
                token: text("token")?,
            }),
            "webpush" => Ok(Target::WebPush {
                endpoint: text("token")?,
                p256dh: text("p256dh")?,
                auth: text("auth")?,
            }),
            other => Err(format!("unknown push platform {other:?}")),
        },
        "email" => Ok(Target::Email {
            address: text("email")?,
        }),
        "sms" => Ok(Target::Sms {
            phone: text("phone")?,
        }),
        "webhook" => Ok(Target::Webhook {
            url: text("url")?,
            secret: text("secret")?,
        }),
        other => Err(format!("unknown channel {other:?}")),
    }
}
