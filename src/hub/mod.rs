//! The in-memory room hub: who is subscribed to which room, and fan-out of committed events.
//!
//! Guarantees: each event is encoded once and the same bytes go to every subscriber; a
//! subscriber receives a room's events in `seq` order with no duplicates, including across the
//! seam between its replay from PostgreSQL and the live stream; delivering never waits on a
//! connection (see [`Outbox`]). A live subscriber that sees a gap in a room's seqs (events that
//! never came through the WAL, e.g. after a lost slot) is queued for a resync from the tables.
//! The hub holds no data that is not in PostgreSQL: losing it loses nothing.

mod outbox;

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::mpsc;

pub use outbox::{CloseReason, Frame, Outbox, Payload};

const SHARDS: usize = 64;

/// Rooms hashed to one lock, each with its subscriptions.
type Shard = RwLock<HashMap<Arc<str>, Vec<Arc<Subscription>>>>;

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
    /// `resync_after` is set when the hub found a gap after that seq and the resync worker
    /// must replay; unset while the joining session replays itself.
    CatchingUp {
        buffered: Vec<(u64, Frame)>,
        bytes: usize,
        resync_after: Option<u64>,
    },
    Live {
        last_seq: u64,
    },
}

enum Offer {
    Queued,
    Skipped,
    Gap,
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

    /// Where a resync must replay from, if the hub asked for one.
    pub fn resync_after(&self) -> Option<u64> {
        match &*self.state.lock() {
            SubState::CatchingUp { resync_after, .. } => *resync_after,
            SubState::Live { .. } => None,
        }
    }

    fn offer(&self, seq: u64, frame: &Frame) -> Offer {
        let mut state = self.state.lock();
        match &mut *state {
            SubState::Live { last_seq } if seq <= *last_seq => Offer::Skipped,
            SubState::Live { last_seq } if seq == *last_seq + 1 => {
                *last_seq = seq;
                if self.outbox.push(frame.clone()) {
                    Offer::Queued
                } else {
                    Offer::Skipped
                }
            }
            SubState::Live { last_seq } => {
                *state = SubState::CatchingUp {
                    resync_after: Some(*last_seq),
                    bytes: frame.len(),
                    buffered: vec![(seq, frame.clone())],
                };
                Offer::Gap
            }
            SubState::CatchingUp {
                buffered, bytes, ..
            } => {
                *bytes += frame.len();
                if *bytes > self.outbox.limit() {
                    buffered.clear();
                    self.outbox.close(CloseReason::SlowConsumer);
                    return Offer::Skipped;
                }
                buffered.push((seq, frame.clone()));
                Offer::Skipped
            }
        }
    }

    /// Switches a live subscription to catching up from its last seq; false if it was not live.
    fn start_resync(&self) -> bool {
        let mut state = self.state.lock();
        let SubState::Live { last_seq } = *state else {
            return false;
        };
        *state = SubState::CatchingUp {
            buffered: Vec::new(),
            bytes: 0,
            resync_after: Some(last_seq),
        };
        true
    }
}

/// What one [`Hub::deliver`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Subscribers the event was queued to.
    pub queued: usize,
    /// Some subscriber's queue is more than half full.
    pub pressed: bool,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct HubStats {
    pub events: AtomicU64,
    pub deliveries: AtomicU64,
}

pub struct Hub {
    shards: Box<[Shard]>,
    hasher: RandomState,
    resync: mpsc::UnboundedSender<Arc<Subscription>>,
    resync_queue: Mutex<Option<mpsc::UnboundedReceiver<Arc<Subscription>>>>,
    pub stats: HubStats,
}

impl Default for Hub {
    fn default() -> Self {
        let (resync, queue) = mpsc::unbounded_channel();
        Hub {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            hasher: RandomState::new(),
            resync,
            resync_queue: Mutex::new(Some(queue)),
            stats: HubStats::default(),
        }
    }
}

impl Hub {
    fn shard(&self, room: &str) -> &Shard {
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
                resync_after: None,
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

    /// Fans a committed event out to the room. Never waits; the result says whether some
    /// subscriber's queue is more than half full, so that a producer able to pause briefly
    /// (the replication worker, between changes) can let the writers catch up.
    pub fn deliver(&self, room: &str, seq: u64, frame: &Frame) -> Delivered {
        self.stats.events.fetch_add(1, Ordering::Relaxed);
        let shard = self.shard(room).read();
        let mut result = Delivered::default();
        let Some(subs) = shard.get(room) else {
            return result;
        };
        for sub in subs {
            match sub.offer(seq, frame) {
                Offer::Queued => {
                    result.queued += 1;
                    result.pressed |= sub.outbox.is_pressed();
                }
                Offer::Skipped => {}
                Offer::Gap => {
                    let _ = self.resync.send(sub.clone());
                }
            }
        }
        self.stats
            .deliveries
            .fetch_add(result.queued as u64, Ordering::Relaxed);
        result
    }

    /// Queues every live subscription for a resync from the tables: the stream may have missed
    /// events (its slot was recreated). Returns how many were queued.
    pub fn resync_all(&self) -> usize {
        let mut queued = 0;
        for shard in self.shards.iter() {
            for sub in shard.read().values().flatten() {
                if sub.start_resync() {
                    let _ = self.resync.send(sub.clone());
                    queued += 1;
                }
            }
        }
        queued
    }

    /// The queue of subscriptions to resync; taken once by the worker that replays them.
    pub fn take_resync_queue(&self) -> Option<mpsc::UnboundedReceiver<Arc<Subscription>>> {
        self.resync_queue.lock().take()
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
    async fn a_gap_in_live_seqs_queues_a_resync_and_buffers() {
        let (hub, outbox, sub) = hub_with("r");
        let mut queue = hub.take_resync_queue().unwrap();
        sub.go_live(3);
        assert_eq!(hub.deliver("r", 4, &Frame::from("4")).queued, 1);
        assert_eq!(hub.deliver("r", 7, &Frame::from("7")).queued, 0);
        let queued = queue.try_recv().unwrap();
        assert!(Arc::ptr_eq(&queued, &sub));
        assert_eq!(sub.resync_after(), Some(4));
        hub.deliver("r", 8, &Frame::from("8"));
        assert_eq!(drain(&outbox).await, ["4"]);
        assert_eq!(sub.go_live(6), 8, "replay covered 5 and 6");
        assert_eq!(drain(&outbox).await, ["7", "8"]);
        assert_eq!(hub.resync_all(), 1);
        assert_eq!(sub.resync_after(), Some(8));
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
        assert_eq!(hub.deliver("r", 1, &Frame::from("1")).queued, 2);
        assert_eq!(drain(&a).await, ["bye"]);
    }

    #[tokio::test]
    async fn unsubscribing_the_last_member_forgets_the_room() {
        let (hub, _outbox, sub) = hub_with("r");
        assert_eq!(hub.rooms(), 1);
        hub.unsubscribe(&sub);
        assert_eq!(hub.rooms(), 0);
        assert_eq!(hub.deliver("r", 1, &Frame::from("x")).queued, 0);
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
