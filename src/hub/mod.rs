//! The in-memory room hub: who is subscribed to which room, and fan-out of committed events.
//!
//! Guarantees: each event is encoded once and the same bytes go to every subscriber; a
//! subscriber receives a room's events in `seq` order with no duplicates, including across the
//! seam between its replay from PostgreSQL and the live stream; delivering never waits on a
//! connection (see [`Outbox`]). The hub holds no data that is not in PostgreSQL: losing it
//! loses nothing, since clients resume from the tables.

mod outbox;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

pub use outbox::{CloseReason, Frame, Outbox};

const SHARDS: usize = 64;

/// One connection's membership of one room.
pub struct Subscription {
    pub conn_id: u64,
    pub user: Arc<str>,
    pub room: Arc<str>,
    pub outbox: Arc<Outbox>,
    /// The connection's token grants this room (so removing the membership row does not
    /// remove the connection).
    pub granted_by_token: AtomicBool,
    removed: AtomicBool,
    state: Mutex<SubState>,
}

enum SubState {
    /// Replaying from PostgreSQL: live events wait here, bounded by the outbox budget.
    CatchingUp {
        buffered: Vec<(u64, Frame)>,
        bytes: usize,
    },
    Live {
        last_seq: u64,
    },
}

impl Subscription {
    /// Ends the catch-up: buffered events after `replayed_to` are queued, then the
    /// subscription is live. Returns the last seq the client has been sent.
    pub fn go_live(&self, replayed_to: u64) -> u64 {
        let mut state = self.state.lock();
        let mut last = replayed_to;
        if let SubState::CatchingUp { buffered, .. } = &mut *state {
            for (seq, frame) in buffered.drain(..) {
                if seq > last && self.outbox.push(frame) {
                    last = seq;
                }
            }
        }
        *state = SubState::Live { last_seq: last };
        last
    }

    fn is_live(&self) -> bool {
        matches!(*self.state.lock(), SubState::Live { .. })
    }

    /// Whether the hub removed this subscription (membership revoked).
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    fn offer(&self, seq: u64, frame: &Frame) -> bool {
        let mut state = self.state.lock();
        match &mut *state {
            SubState::Live { last_seq } => {
                if seq <= *last_seq {
                    return false;
                }
                *last_seq = seq;
                self.outbox.push(frame.clone())
            }
            SubState::CatchingUp { buffered, bytes } => {
                *bytes += frame.len();
                if *bytes > self.outbox.limit() {
                    buffered.clear();
                    self.outbox.close(CloseReason::SlowConsumer);
                    return false;
                }
                buffered.push((seq, frame.clone()));
                false
            }
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct HubStats {
    pub events: AtomicU64,
    pub deliveries: AtomicU64,
}

pub struct Hub {
    shards: Box<[RwLock<HashMap<Arc<str>, Vec<Arc<Subscription>>>>]>,
    hasher: RandomState,
    pub stats: HubStats,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            stats: HubStats::default(),
        }
    }
}

impl Hub {
    fn shard(&self, room: &str) -> &RwLock<HashMap<Arc<str>, Vec<Arc<Subscription>>>> {
        let index = self.hasher.hash_one(room) as usize % SHARDS;
        &self.shards[index]
    }

    /// Adds a subscription that buffers live events until [`Subscription::go_live`].
    pub fn subscribe(
        &self,
        room: &str,
        conn_id: u64,
        user: Arc<str>,
        outbox: Arc<Outbox>,
        granted_by_token: bool,
    ) -> Arc<Subscription> {
        let mut shard = self.shard(room).write();
        let room: Arc<str> = shard
            .get_key_value(room)
            .map_or_else(|| Arc::from(room), |(k, _)| k.clone());
        let sub = Arc::new(Subscription {
            conn_id,
            user,
            room: room.clone(),
            outbox,
            granted_by_token: AtomicBool::new(granted_by_token),
            removed: AtomicBool::new(false),
            state: Mutex::new(SubState::CatchingUp {
                buffered: Vec::new(),
                bytes: 0,
            }),
        });
        shard.entry(room).or_default().push(sub.clone());
        sub
    }

    pub fn unsubscribe(&self, sub: &Arc<Subscription>) {
        let mut shard = self.shard(&sub.room).write();
        if let Some(subs) = shard.get_mut(&sub.room) {
            subs.retain(|s| !Arc::ptr_eq(s, sub));
            if subs.is_empty() {
                shard.remove(&sub.room);
            }
        }
    }

    /// Fans a committed event out to the room; returns how many subscribers got it now.
    pub fn deliver(&self, room: &str, seq: u64, frame: &Frame) -> usize {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(room).read();
        let Some(subs) = shard.get(room) else {
            return 0;
        };
        let delivered = subs.iter().filter(|s| s.offer(seq, frame)).count();
        self.stats
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Relays an ephemeral frame to the room's live subscribers other than connection
    /// `except`; nothing is buffered for subscribers still catching up. Returns the count.
    pub fn relay(&self, room: &str, except: u64, frame: &Frame) -> usize {
        let shard = self.shard(room).read();
        let Some(subs) = shard.get(room) else {
            return 0;
        };
        let delivered = subs
            .iter()
            .filter(|s| s.conn_id != except && s.is_live() && s.outbox.push(frame.clone()))
            .count();
        self.stats
            .deliveries
            .fetch_add(delivered as u64, Ordering::Relaxed);
        delivered
    }

    /// Removes `user`'s subscriptions to `room` that its token does not grant, and tells each
    /// connection with `notice`. Returns how many were removed.
    pub fn revoke(&self, room: &str, user: &str, notice: &Frame) -> usize {
        let mut shard = self.shard(room).write();
        let Some(subs) = shard.get_mut(room) else {
            return 0;
        };
        let before = subs.len();
        subs.retain(|s| {
            let revoke = &*s.user == user && !s.granted_by_token.load(Ordering::Relaxed);
            if revoke {
                s.removed.store(true, Ordering::Relaxed);
                s.outbox.push(notice.clone());
            }
            !revoke
        });
        let removed = before - subs.len();
        if subs.is_empty() {
            shard.remove(room);
        }
        removed
    }

    /// Rooms with at least one subscriber.
    pub fn rooms(&self) -> usize {
        self.shards.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_with(room: &str) -> (Hub, Arc<Outbox>, Arc<Subscription>) {
        let hub = Hub::default();
        let outbox = Arc::new(Outbox::new(1 << 20));
        let sub = hub.subscribe(room, 1, Arc::from("alice"), outbox.clone(), false);
        (hub, outbox, sub)
    }

    async fn drain(outbox: &Outbox) -> Vec<String> {
        let mut batch = Vec::new();
        if outbox.queued_bytes() > 0 {
            outbox.next_batch(&mut batch).await.unwrap();
        }
        batch.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[tokio::test]
    async fn seam_between_replay_and_live_has_no_gap_and_no_duplicate() {
        let (hub, outbox, sub) = hub_with("r");
        hub.deliver("r", 5, &Frame::from("5"));
        hub.deliver("r", 6, &Frame::from("6"));
        assert!(
            drain(&outbox).await.is_empty(),
            "buffered while catching up"
        );
        assert_eq!(sub.go_live(5), 6, "replay covered up to 5");
        hub.deliver("r", 6, &Frame::from("6 again"));
        hub.deliver("r", 7, &Frame::from("7"));
        assert_eq!(drain(&outbox).await, ["6", "7"]);
    }

    #[tokio::test]
    async fn revoke_spares_token_grants_and_other_users() {
        let hub = Hub::default();
        let a = Arc::new(Outbox::new(1024));
        let b = Arc::new(Outbox::new(1024));
        let by_row = hub.subscribe("r", 1, Arc::from("alice"), a.clone(), false);
        let by_token = hub.subscribe("r", 2, Arc::from("alice"), b.clone(), true);
        let other = hub.subscribe("r", 3, Arc::from("bob"), b.clone(), false);
        for s in [&by_row, &by_token, &other] {
            s.go_live(0);
        }
        assert_eq!(hub.revoke("r", "alice", &Frame::from("bye")), 1);
        assert!(by_row.is_removed() && !by_token.is_removed() && !other.is_removed());
        assert_eq!(hub.deliver("r", 1, &Frame::from("1")), 2);
        assert_eq!(drain(&a).await, ["bye"]);
    }

    #[tokio::test]
    async fn unsubscribing_the_last_member_forgets_the_room() {
        let (hub, _outbox, sub) = hub_with("r");
        assert_eq!(hub.rooms(), 1);
        hub.unsubscribe(&sub);
        assert_eq!(hub.rooms(), 0);
        assert_eq!(hub.deliver("r", 1, &Frame::from("x")), 0);
    }

    #[tokio::test]
    async fn a_catch_up_buffer_past_the_budget_closes_the_slow_consumer() {
        let hub = Hub::default();
        let outbox = Arc::new(Outbox::new(8));
        let _sub = hub.subscribe("r", 1, Arc::from("u"), outbox.clone(), false);
        hub.deliver("r", 1, &Frame::from("12345"));
        hub.deliver("r", 2, &Frame::from("12345"));
        let mut batch = Vec::new();
        assert_eq!(
            outbox.next_batch(&mut batch).await,
            Err(CloseReason::SlowConsumer)
        );
    }
}
