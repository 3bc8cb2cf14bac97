//! What presence asks PostgreSQL. Each call is one statement.

use deadpool_postgres::Pool;
use serde_json::Value;

use super::machine::{Mode, Op};
use crate::gateway::store::StoreError;

/// A user's state as others see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub user: String,
    pub status: String,
    /// RFC 3339; None for a user never seen.
    pub last_seen: Option<String>,
    /// The `realtime.presence` row's version (0: no row).
    pub version: u64,
}

/// What a heartbeat did.
#[derive(Debug, Clone, Copy)]
pub struct Beat {
    /// This node's row was missing: it is new, or others reaped it.
    pub rejoined: bool,
    /// Sessions of dead nodes this heartbeat ended.
    pub reaped: u64,
}

/// Writes a batch of changes; returns the rows written.
pub async fn apply(pool: &Pool, node: uuid::Uuid, ops: &[Op]) -> Result<u64, StoreError> {
    let changes = Value::Array(ops.iter().map(Op::to_json).collect());
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT realtime.presence_apply($1::text::uuid, $2)",
            &[&node.to_string(), &changes],
        )
        .await?;
    Ok(row.get::<_, i32>(0).max(0) as u64)
}

/// This node's heartbeat, which also reaps nodes silent for `expiry_ms`.
pub async fn beat(pool: &Pool, node: uuid::Uuid, expiry_ms: u64) -> Result<Beat, StoreError> {
    let client = pool.get().await?;
    let expiry = i64::try_from(expiry_ms).unwrap_or(i64::MAX);
    let row = client
        .query_one(
            "SELECT rejoined, reaped FROM realtime.presence_beat($1::text::uuid, $2)",
            &[&node.to_string(), &expiry],
        )
        .await?;
    Ok(Beat {
        rejoined: row.get(0),
        reaped: row.get::<_, i32>(1).max(0) as u64,
    })
}

/// Whom `viewer` may see (at most `limit`, by user id).
pub async fn visible_to(
    pool: &Pool,
    viewer: &str,
    limit: usize,
) -> Result<Vec<String>, StoreError> {
    let client = pool.get().await?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = client
        .query(
            "SELECT u FROM realtime.presence_visible_to($1) u ORDER BY u LIMIT $2",
            &[&viewer, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The states others see of `users`, in the same order.
pub async fn states(pool: &Pool, users: &[String]) -> Result<Vec<Seen>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT u, coalesce(p.status, 'offline'), to_json(p.last_seen) #>> '{}', \
                    coalesce(p.version, 0) \
             FROM unnest($1::text[]) WITH ORDINALITY AS w(u, i) \
             LEFT JOIN realtime.presence p ON p.user_id = w.u ORDER BY w.i",
            &[&users],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Seen {
            user: r.get(0),
            status: r.get(1),
            last_seen: r.get(2),
            version: r.get::<_, i64>(3).max(0) as u64,
        })
        .collect())
}

/// The mode `user` chose (auto when never set).
pub async fn mode(pool: &Pool, user: &str) -> Result<Mode, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT mode FROM realtime.presence_settings WHERE user_id = $1",
            &[&user],
        )
        .await?;
    Ok(row
        .and_then(|r| Mode::parse(r.get(0)))
        .unwrap_or(Mode::Auto))
}

/// Whether a member of `room` and `user` blocked one another.
pub async fn blocked_in_room(pool: &Pool, user: &str, room: &str) -> Result<bool, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM realtime.room_members m \
                            WHERE m.room = $2 AND m.user_id <> $1 \
                              AND realtime.presence_blocked($1, m.user_id))",
            &[&user, &room],
        )
        .await?;
    Ok(row.get(0))
}

/// The members of `room` with the state `viewer` may see (`realtime.room_presence`).
pub async fn room_presence(pool: &Pool, room: &str, viewer: &str) -> Result<Vec<Seen>, StoreError> {
    let client = pool.get().await?;
    let rows = client
        .query(
            "SELECT user_id, status, to_json(last_seen) #>> '{}' \
             FROM realtime.room_presence($1, $2)",
            &[&room, &viewer],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Seen {
            user: r.get(0),
            status: r.get(1),
            last_seen: r.get(2),
            version: 0,
        })
        .collect())
}
