//! Live inventory (seed §1.1) and reservation and booking outcomes (seed §4.4) for connected
//! clients. The rules (no oversell, first come first served, idempotency, the precedence of
//! booking statuses) live in SQL, `migrations/V8__inventory.sql`; this module streams their
//! results.
//!
//! Guarantees: a subscriber of a resource gets its current state first, then every committed
//! change of it, in commit order. Each state carries the row's `version`, so a client that keeps
//! the highest version it saw holds the committed state; a change streamed in the instant
//! between subscribing and reading the table is kept here for a few seconds and sent after the
//! state read. Reservation outcomes and booking statuses reach every live connection of their
//! user; they are not replayed (the tables keep them: `GET /api/reservations`). After the
//! replication slot was recreated, the state of every resource watched on this node is read
//! again and sent, since changes in between were never streamed.

mod command;
mod events;
mod http;
mod session;
mod store;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use parking_lot::Mutex;

pub use command::{parse as parse_command, InventoryCommand};
pub use events::{route, streams, ResourceState, Routed};
pub(crate) use http::{get_resource, list_reservations, list_resources};
pub use session::{Context, Watching};

use crate::hub::{Frame, Hub, Outbox, Subscription};

const RESOURCE_PREFIX: &str = "@inventory:";
/// How long a streamed change is kept for subscriptions that are reading the table.
const RECENT_WINDOW: Duration = Duration::from_secs(5);
/// Resources whose states one query reads again after the slot was recreated.
const RESYNC_CHUNK: usize = 500;
/// Longest wait for the hub's own resync before reading the states again.
const RESYNC_WAIT: Duration = Duration::from_secs(10);

/// The hub room of a resource's subscribers (the `@` keeps it apart from rooms clients name).
pub fn resource_room(resource_id: &str) -> String {
    format!("{RESOURCE_PREFIX}{resource_id}")
}

/// A user's connections on this node: their ids and outboxes.
type Connections = Vec<(u64, Arc<Outbox>)>;

/// The latest streamed state of recently changed resources.
#[derive(Default)]
struct Recent {
    states: HashMap<String, (i64, Frame, Instant)>,
    swept: Option<Instant>,
}

/// The inventory channel of this node: fan-out through the hub, plus what subscriptions need
/// to start without missing a change, and where each user's outcomes go.
pub struct Inventory {
    hub: Arc<Hub>,
    pool: Pool,
    recent: Mutex<Recent>,
    /// Resources watched on this node, with their subscriptions.
    watched: Mutex<HashMap<String, Vec<Arc<Subscription>>>>,
    /// Each user's connections on this node (id and outbox): reservation outcomes and booking
    /// statuses. Kept apart from the hub's rooms: every connection has one, and none needs a
    /// seq or a resync.
    users: Mutex<HashMap<Arc<str>, Connections>>,
}

impl Inventory {
    pub fn new(hub: Arc<Hub>, pool: Pool) -> Inventory {
        Inventory {
            hub,
            pool,
            recent: Mutex::default(),
            watched: Mutex::default(),
            users: Mutex::default(),
        }
    }

    /// Hands a routed change to the subscribers (from the replication worker, in WAL order).
    pub fn apply(&self, routed: Routed) {
        match routed {
            Routed::Changed {
                resource_id,
                version,
                frame,
            } => {
                let room = resource_room(&resource_id);
                self.remember(resource_id, version, frame.clone());
                self.hub.relay(&room, 0, &frame);
            }
            Routed::Removed { resource_id, frame } => {
                self.recent.lock().states.remove(&resource_id);
                self.hub.relay(&resource_room(&resource_id), 0, &frame);
            }
            Routed::ForUser { user, frame } => {
                if let Some(conns) = self.users.lock().get(user.as_str()) {
                    for (_, outbox) in conns {
                        outbox.push(frame.clone());
                    }
                }
            }
        }
    }

    fn remember(&self, resource_id: String, version: i64, frame: Frame) {
        let now = Instant::now();
        let mut recent = self.recent.lock();
        if recent
            .swept
            .is_none_or(|at| now.duration_since(at) >= RECENT_WINDOW)
        {
            recent
                .states
                .retain(|_, (_, _, at)| now.duration_since(*at) < RECENT_WINDOW);
            recent.swept = Some(now);
        }
        recent.states.insert(resource_id, (version, frame, now));
    }

    /// The state streamed in the last few seconds, if newer than `version`.
    fn newer_than(&self, resource_id: &str, version: i64) -> Option<Frame> {
        let recent = self.recent.lock();
        let (streamed, frame, at) = recent.states.get(resource_id)?;
        (*streamed > version && at.elapsed() < RECENT_WINDOW).then(|| frame.clone())
    }

    /// Subscribes a connection to a resource's changes, live at once.
    fn watch(&self, resource_id: &str, cx: &Context<'_>) -> Arc<Subscription> {
        let sub = self.hub.subscribe(
            &resource_room(resource_id),
            cx.conn_id,
            Arc::from(cx.user),
            cx.outbox.clone(),
            true,
        );
        sub.go_live(0);
        self.watched
            .lock()
            .entry(resource_id.to_owned())
            .or_default()
            .push(sub.clone());
        sub
    }

    fn unwatch(&self, resource_id: &str, sub: &Arc<Subscription>) {
        self.hub.unsubscribe(sub);
        let mut watched = self.watched.lock();
        if let Some(subs) = watched.get_mut(resource_id) {
            subs.retain(|s| !Arc::ptr_eq(s, sub));
            if subs.is_empty() {
                watched.remove(resource_id);
            }
        }
    }

    /// Sends a connection its user's reservation outcomes and booking statuses from now on;
    /// returns the user's key for [`Inventory::unfollow_user`].
    fn follow_user(&self, conn_id: u64, user: &str, outbox: &Arc<Outbox>) -> Arc<str> {
        let mut users = self.users.lock();
        let key = users
            .get_key_value(user)
            .map_or_else(|| Arc::from(user), |(key, _)| key.clone());
        users
            .entry(key.clone())
            .or_insert_with(|| Vec::with_capacity(1))
            .push((conn_id, outbox.clone()));
        key
    }

    fn unfollow_user(&self, user: &str, conn_id: u64) {
        let mut users = self.users.lock();
        if let Some(conns) = users.get_mut(user) {
            conns.retain(|(id, _)| *id != conn_id);
            if conns.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Resources watched on this node.
    pub fn watched(&self) -> usize {
        self.watched.lock().len()
    }

    /// After the replication slot was recreated (changes since the old one's position were
    /// never streamed): reads every watched resource's state again and sends it to its
    /// subscribers, or `inventory:removed` for those deleted meanwhile.
    pub fn resync(self: &Arc<Self>) {
        if self.watched.lock().is_empty() {
            return;
        }
        let inventory = self.clone();
        tokio::spawn(async move {
            // The hub resyncs every live subscription too (these rooms have no log, so they
            // are live again after one query each); changes streamed meanwhile are not relayed
            // to them, so the table is read after that.
            let deadline = Instant::now() + RESYNC_WAIT;
            while Instant::now() < deadline && inventory.catching_up() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ids: Vec<String> = inventory.watched.lock().keys().cloned().collect();
            for chunk in ids.chunks(RESYNC_CHUNK) {
                let wanted: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let states = match store::states(&inventory.pool, &wanted).await {
                    Ok(states) => states,
                    Err(refusal) => {
                        tracing::warn!(error = %refusal.message, "re-reading watched resources failed");
                        return;
                    }
                };
                for id in &wanted {
                    let frame = match states.iter().find(|s| s.resource_id == *id) {
                        Some(state) => state.frame(),
                        None => events::removed_frame(id),
                    };
                    let subs = inventory.watched.lock().get(*id).cloned();
                    for sub in subs.iter().flatten() {
                        sub.outbox.push(frame.clone());
                    }
                }
            }
        });
    }

    /// Whether some watched subscription waits for the hub's resync.
    fn catching_up(&self) -> bool {
        self.watched
            .lock()
            .values()
            .flatten()
            .any(|sub| sub.resync_after().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        let config = tokio_postgres::Config::new();
        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
        let pool = Pool::builder(manager).build().unwrap();
        Inventory::new(Arc::new(Hub::default()), pool)
    }

    #[test]
    fn rooms_never_collide_with_client_rooms() {
        assert!(!crate::protocol::valid_room(&resource_room("hotel:1")));
    }

    #[tokio::test]
    async fn a_change_streamed_while_subscribing_is_kept_for_the_new_subscriber() {
        let inventory = inventory();
        let outbox = Arc::new(Outbox::new(1 << 20));
        inventory.apply(Routed::Changed {
            resource_id: "r".into(),
            version: 5,
            frame: Frame::from("v5"),
        });
        assert_eq!(inventory.newer_than("r", 4).as_deref(), Some("v5"));
        assert_eq!(inventory.newer_than("r", 5), None);
        assert_eq!(inventory.newer_than("other", 0), None);

        let cx = Context {
            conn_id: 1,
            user: "alice",
            outbox: &outbox,
            max_resources: 10,
            id: None,
        };
        let sub = inventory.watch("r", &cx);
        assert_eq!(inventory.watched(), 1);
        inventory.apply(Routed::Changed {
            resource_id: "r".into(),
            version: 6,
            frame: Frame::from("v6"),
        });
        inventory.apply(Routed::Removed {
            resource_id: "r".into(),
            frame: Frame::from("gone"),
        });
        assert_eq!(inventory.newer_than("r", 0), None);
        let mut batch = Vec::new();
        outbox.next_batch(&mut batch).await.unwrap();
        assert_eq!(batch, [Frame::from("v6"), Frame::from("gone")]);
        inventory.unwatch("r", &sub);
        assert_eq!(inventory.watched(), 0);
    }

    #[tokio::test]
    async fn outcomes_reach_every_connection_of_their_user_only() {
        let inventory = inventory();
        let (a1, a2, b) = (
            Arc::new(Outbox::new(1024)),
            Arc::new(Outbox::new(1024)),
            Arc::new(Outbox::new(1024)),
        );
        let alice = inventory.follow_user(1, "alice", &a1);
        let same = inventory.follow_user(2, "alice", &a2);
        assert!(Arc::ptr_eq(&alice, &same), "one key per user");
        inventory.follow_user(3, "bob", &b);
        inventory.apply(Routed::ForUser {
            user: "alice".into(),
            frame: Frame::from("failed"),
        });
        assert_eq!(a1.queued_bytes(), 6);
        assert_eq!(a2.queued_bytes(), 6);
        assert_eq!(b.queued_bytes(), 0);
        inventory.unfollow_user("alice", 1);
        inventory.apply(Routed::ForUser {
            user: "alice".into(),
            frame: Frame::from("x"),
        });
        assert_eq!((a1.queued_bytes(), a2.queued_bytes()), (6, 7));
        inventory.unfollow_user("alice", 2);
        assert!(inventory.users.lock().get("alice").is_none());
    }
}
