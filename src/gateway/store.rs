//! What the gateway asks PostgreSQL: authorization, replay pages and publishes.

use deadpool_postgres::Pool;
use tokio_postgres::error::SqlState;

use crate::hub::Frame;
use crate::notify::inapp;
use crate::protocol;

/// One page of a room's history after a given seq.
pub struct ReplayPage {
    pub frames: Vec<(u64, Frame)>,
    /// The page starts right after the requested seq and within the retention window.
    pub contiguous: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::Invalid(_) => "invalid_field",
            StoreError::Unavailable(_) => "unavailable",
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(code)
                if *code == SqlState::CHECK_VIOLATION
                    || *code == SqlState::INVALID_PARAMETER_VALUE
                    || *code == SqlState::NOT_NULL_VIOLATION
                    || *code == SqlState::INVALID_TEXT_REPRESENTATION =>
            {
                let message = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                StoreError::Invalid(message)
            }
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

pub struct Store {
    pool: Pool,
    retention_secs: f64,
}

const REPLAY_SQL: &str = "SELECT seq, event, payload::text, sender, to_json(created_at) #>> '{}', \
        created_at < now() - make_interval(secs => $4) \
    FROM realtime.messages WHERE room = $1 AND seq > $2 ORDER BY seq LIMIT $3";

const NOTIFICATION_REPLAY_SQL: &str =
    "SELECT seq, id, type, priority, title, body, payload::text, \
        to_json(created_at) #>> '{}', to_json(expires_at) #>> '{}', \
        to_json(read_at) #>> '{}', to_json(dismissed_at) #>> '{}' \
    FROM realtime.notifications WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

impl Store {
    pub fn new(pool: Pool, retention_secs: u64) -> Store {
        Store {
            pool,
            retention_secs: retention_secs as f64,
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub async fn can_join(&self, user: &str, room: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(realtime.can_join($1, $2), false)",
                &[&user, &room],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn can_publish(&self, user: &str, room: &str) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT coalesce(realtime.can_publish($1, $2), false)",
                &[&user, &room],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The room's latest seq (0 for a room that never had a message); for a user's
    /// notification room, their latest notification's.
    pub async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let row = match inapp::user_of(room) {
            Some(user) => {
                client
                    .query_opt(
                        "SELECT last_seq FROM realtime.notification_badges WHERE user_id = $1",
                        &[&user],
                    )
                    .await?
            }
            None => {
                client
                    .query_opt(
                        "SELECT last_seq FROM realtime.rooms WHERE room = $1",
                        &[&room],
                    )
                    .await?
            }
        };
        Ok(row.map_or(0, |r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// Up to `limit` events after `after`, encoded as `room:message` frames (as
    /// `notification:new` for a user's notification room).
    pub async fn replay(
        &self,
        room: &str,
        after: u64,
        limit: i64,
    ) -> Result<ReplayPage, StoreError> {
        if let Some(user) = inapp::user_of(room) {
            return self.replay_notifications(user, after, limit).await;
        }
        let client = self.pool.get().await?;
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = client
            .query(REPLAY_SQL, &[&room, &after_i, &limit, &self.retention_secs])
            .await?;
        let mut contiguous = true;
        let mut frames = Vec::with_capacity(rows.len());
        for (i, row) in rows.iter().enumerate() {
            let seq = row.get::<_, i64>(0).max(0) as u64;
            if i == 0 && (seq != after + 1 || row.get::<_, bool>(5)) {
                contiguous = false;
            }
            let frame =
                protocol::room_message(room, seq, row.get(1), row.get(2), row.get(3), row.get(4));
            frames.push((seq, Frame::from(frame)));
        }
        Ok(ReplayPage { frames, contiguous })
    }

    async fn replay_notifications(
        &self,
        user: &str,
        after: u64,
        limit: i64,
    ) -> Result<ReplayPage, StoreError> {
        let client = self.pool.get().await?;
        let after_i = i64::try_from(after).unwrap_or(i64::MAX);
        let rows = client
            .query(NOTIFICATION_REPLAY_SQL, &[&user, &after_i, &limit])
            .await?;
        let mut frames = Vec::with_capacity(rows.len());
        let mut contiguous = true;
        for (i, row) in rows.iter().enumerate() {
            let seq = row.get::<_, i64>(0).max(0) as u64;
            if i == 0 && seq != after + 1 {
                contiguous = false;
            }
            let frame = protocol::notification_new(&protocol::NotificationEvent {
                id: row.get(1),
                seq,
                kind: row.get(2),
                priority: row.get(3),
                title: row.get(4),
                body: row.get(5),
                payload: row.get(6),
                created_at: row.get(7),
                expires_at: row.get(8),
                read_at: row.get(9),
                dismissed_at: row.get(10),
            });
            frames.push((seq, Frame::from(frame)));
        }
        Ok(ReplayPage { frames, contiguous })
    }

    /// Whom `user` follows (at most `limit`), for live activities.
    pub async fn followees(&self, user: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT followee_id FROM realtime.follows WHERE follower_id = $1 \
                 ORDER BY created_at DESC LIMIT $2",
                &[&user, &limit],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The user's unread notifications (0 for a user who never had one).
    pub async fn unread(&self, user: &str) -> Result<i64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                "SELECT unread FROM realtime.notification_badges WHERE user_id = $1",
                &[&user],
            )
            .await?;
        Ok(row.map_or(0, |r| i64::from(r.get::<_, i32>(0))))
    }

    /// Marks `user`'s notifications `ids` read or dismissed; returns the ids that changed.
    pub async fn mark_notifications(
        &self,
        user: &str,
        ids: &[i64],
        action: protocol::MarkAction,
    ) -> Result<Vec<i64>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT realtime.mark_notifications($1, $2, $3)",
                &[&user, &ids, &action.as_str()],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Publishes through `realtime.publish` and returns the event's seq (the first one's for a
    /// repeated idempotency key).
    pub async fn publish(
        &self,
        room: &str,
        event: &str,
        payload: &str,
        idempotency_key: Option<&str>,
        sender: &str,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT realtime.publish($1, $2, $3::text::jsonb, $4, $5)",
                &[&room, &event, &payload, &idempotency_key, &sender],
            )
            .await?;
        Ok(row.get::<_, i64>(0).max(0) as u64)
    }
}
