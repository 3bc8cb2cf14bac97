//! Periodic upkeep of the message log, safe to run on every node at once (the SQL functions
//! take advisory locks): daily partitions created ahead, expired idempotency keys pruned, and,
//! when a history retention is configured, old partitions dropped; document versions older than
//! 90 days pruned (each document keeps its latest); notifications and delivery history older
//! than 90 days, notification idempotency keys older than 24 hours, and outbox events older
//! than 7 days that every subscription received, activities older than a year, and expired
//! reservation idempotency keys, pruned.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;

const EVERY: Duration = Duration::from_secs(3600);

/// Runs the upkeep now and then hourly until `shutdown` flips.
pub async fn run(
    pool: Pool,
    history_retention_days: Option<u32>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = once(&pool, history_retention_days).await {
            tracing::warn!(error = %e, "message log upkeep failed; retrying in an hour");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One round of upkeep; returns (partitions created, keys pruned, partitions dropped).
pub async fn once(
    pool: &Pool,
    history_retention_days: Option<u32>,
) -> anyhow::Result<(i32, i64, i32)> {
    let mut client = pool.get().await?;
    let client = client.transaction().await?;
    // Upkeep takes short locks on realtime.messages; never queue writers behind a long reader.
    client
        .batch_execute("SET LOCAL lock_timeout = '5s'")
        .await?;
    let created: i32 = client
        .query_one("SELECT realtime.ensure_message_partitions()", &[])
        .await?
        .get(0);
    let pruned: i64 = client
        .query_one("SELECT realtime.prune_idempotency_keys()", &[])
        .await?
        .get(0);
    let dropped: i32 = match history_retention_days {
        Some(days) => client
            .query_one(
                "SELECT realtime.drop_message_partitions(make_interval(days => $1))",
                &[&(days as i32)],
            )
            .await?
            .get(0),
        None => 0,
    };
    let versions: i64 = client
        .query_one("SELECT realtime.prune_doc_versions()", &[])
        .await?
        .get(0);
    let notifications: i64 = client
        .query_one("SELECT realtime.prune_notifications()", &[])
        .await?
        .get(0);
    let outbox: i64 = client
        .query_one("SELECT realtime.prune_outbox()", &[])
        .await?
        .get(0);
    let activities: i64 = client
        .query_one("SELECT realtime.prune_activities()", &[])
        .await?
        .get(0);
    let reservation_keys: i64 = client
        .query_one("SELECT realtime.prune_reservation_keys()", &[])
        .await?
        .get(0);
    client.commit().await?;
    if created + dropped > 0
        || pruned > 0
        || versions > 0
        || notifications > 0
        || outbox > 0
        || activities > 0
        || reservation_keys > 0
    {
        tracing::info!(
            created,
            pruned,
            dropped,
            versions,
            notifications,
            outbox,
            activities,
            reservation_keys,
            "message log, document, notification, outbox, activity and reservation upkeep"
        );
    }
    Ok((created, pruned, dropped))
}
