//! In-app delivery: each user's notifications are a log channel in the hub, a room named
//! `@notifications:<user>` (the `@` keeps it apart from rooms clients can name), with the
//! per-user seq the insert trigger assigns. Connections subscribe with `notification:subscribe`
//! and resume with the last seq they saw, exactly like a room: replay from the table, then
//! live, no gap and no duplicate at the seam.
//!
//! What reached a client is reported back in batches ([`Receipts`]), which moves the in-app
//! deliveries of those notifications from `pending` to `delivered`.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use parking_lot::Mutex;
use tokio::sync::watch;

const PREFIX: &str = "@notifications:";
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// The hub room that carries `user`'s notifications.
pub fn room(user: &str) -> String {
    format!("{PREFIX}{user}")
}

/// The user whose notification room this is, if it is one.
pub fn user_of(room: &str) -> Option<&str> {
    room.strip_prefix(PREFIX)
}

/// For each user, the highest notification seq that reached one of their connections and is
/// not yet recorded in `realtime.notification_deliveries`.
#[derive(Default)]
pub struct Receipts {
    reached: Mutex<HashMap<String, u64>>,
}

impl Receipts {
    /// Notes that `user`'s notifications up to `seq` reached a connection.
    pub fn reached(&self, user: &str, seq: u64) {
        let mut reached = self.reached.lock();
        match reached.get_mut(user) {
            Some(upto) => *upto = (*upto).max(seq),
            None => {
                reached.insert(user.to_owned(), seq);
            }
        }
    }

    /// Records the receipts every 250 ms until `shutdown` flips, then once more. A failed
    /// write keeps its receipts for the next round.
    pub async fn run(&self, pool: Pool, mut shutdown: watch::Receiver<bool>) {
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = shutdown.changed() => true,
            };
            if let Err(e) = self.flush(&pool).await {
                tracing::warn!(error = %e, "recording in-app deliveries failed; will retry");
            }
            if stopping {
                return;
            }
        }
    }

    async fn flush(&self, pool: &Pool) -> anyhow::Result<()> {
        let batch = std::mem::take(&mut *self.reached.lock());
        if batch.is_empty() {
            return Ok(());
        }
        let (users, seqs): (Vec<&str>, Vec<i64>) = batch
            .iter()
            .map(|(user, seq)| (user.as_str(), i64::try_from(*seq).unwrap_or(i64::MAX)))
            .unzip();
        let result = async {
            let client = pool.get().await?;
            client
                .execute(
                    "SELECT realtime.mark_in_app_delivered($1, $2)",
                    &[&users, &seqs],
                )
                .await?;
            anyhow::Ok(())
        }
        .await;
        if result.is_err() {
            for (user, seq) in &batch {
                self.reached(user, *seq);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_round_trip_and_never_collide_with_client_rooms() {
        let r = room("alice");
        assert_eq!(user_of(&r), Some("alice"));
        assert!(!crate::protocol::valid_room(&r));
        assert_eq!(user_of("trip:42"), None);
    }

    #[test]
    fn receipts_keep_the_highest_seq_per_user() {
        let receipts = Receipts::default();
        receipts.reached("a", 3);
        receipts.reached("a", 2);
        receipts.reached("b", 1);
        let reached = receipts.reached.lock();
        assert_eq!(reached.get("a"), Some(&3));
        assert_eq!(reached.get("b"), Some(&1));
    }
}
