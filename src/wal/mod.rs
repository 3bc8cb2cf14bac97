//! The replication worker: holds the server's logical slot, streams committed transactions and
//! hands their room events (messages, document updates, notifications) to the hub.
//!
//! It confirms a transaction's end LSN to PostgreSQL only after the hub took the transaction,
//! so after a crash the slot re-sends from the last confirmed position (duplicates, never gaps).
//! Holding the slot is the leader election between nodes: a slot admits one consumer, and a
//! node that finds it busy keeps retrying with backoff until it takes over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use replication::{ConnectConfig, Event, ReplicationStream, StreamConfig};
use tokio::sync::watch;

use crate::docs::Docs;
use crate::hub::{Frame, Hub};
use crate::inventory::Inventory;
use crate::notify::inapp::{self, Receipts};
use crate::presence::Presence;
use crate::protocol;

#[cfg(test)]
pub(crate) mod fixtures;
mod route;

pub use route::{route, Routed};

/// The publication the migrations create; later migrations add tables to it.
pub const PUBLICATION: &str = "triptrip_realtime";

/// What the worker has done, read by `/ready` and `/metrics`.
#[derive(Debug, Default)]
pub struct WalStatus {
    pub streaming: AtomicBool,
    pub received_lsn: AtomicU64,
    pub acknowledged_lsn: AtomicU64,
    pub reconnects: AtomicU64,
    pub transactions: AtomicU64,
    pub changes: AtomicU64,
    pub bytes: AtomicU64,
    /// Commit-to-hub delay of the last transaction, in microseconds.
    pub lag_micros: AtomicU64,
}

impl WalStatus {
    fn record(&self, stream: &ReplicationStream) {
        let stats = stream.stats();
        self.received_lsn.store(stats.received.0, Ordering::Relaxed);
        self.acknowledged_lsn
            .store(stats.acknowledged.0, Ordering::Relaxed);
        self.reconnects.store(stats.reconnects, Ordering::Relaxed);
        self.transactions
            .store(stats.transactions, Ordering::Relaxed);
        self.changes.store(stats.changes, Ordering::Relaxed);
        self.bytes.store(stats.bytes, Ordering::Relaxed);
    }
}

/// Streams from `slot` until `shutdown` flips to true, then reports the confirmed position
/// and closes the stream cleanly.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    database_url: &str,
    slot: &str,
    hub: Arc<Hub>,
    docs: Arc<Docs>,
    receipts: Arc<Receipts>,
    presence: Arc<Presence>,
    inventory: Arc<Inventory>,
    status: Arc<WalStatus>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut connect = ConnectConfig::from_url(database_url).context("parsing the database URL")?;
    connect.application_name = "triptrip-realtime-wal".into();
    let config = StreamConfig::new(connect, slot, PUBLICATION);
    let mut stream = loop {
        match ReplicationStream::start(config.clone()).await {
            Ok(stream) => break stream,
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "replication not available yet, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
            Err(e) => return Err(e).context("starting logical replication"),
        }
    };
    status.streaming.store(true, Ordering::Relaxed);
    loop {
        let event = tokio::select! {
            event = stream.next() => event,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Change(change)) => {
                // A burst (one big transaction) outruns the writers: let them drain before
                // queueing more, rather than cutting clients that do read.
                if route(&change).is_some_and(|routed| {
                    apply(&hub, &docs, &receipts, &presence, &inventory, routed)
                }) {
                    tokio::task::yield_now().await;
                }
            }
            Ok(Event::Commit(commit)) => {
                stream.confirm(commit.end_lsn);
                status.record(&stream);
                let lag = replication::copy_data::pg_now().saturating_sub(commit.commit_time);
                status
                    .lag_micros
                    .store(lag.max(0) as u64, Ordering::Relaxed);
            }
            Ok(Event::Reconnected { slot_created, .. }) => {
                status.streaming.store(true, Ordering::Relaxed);
                if slot_created {
                    let queued = hub.resync_all();
                    inventory.resync();
                    tracing::warn!(
                        slot,
                        resyncing = queued,
                        "replication slot was missing and has been recreated; resyncing subscribers from the tables"
                    );
                }
                status.record(&stream);
            }
            Ok(_) => {}
            Err(e) => {
                status.streaming.store(false, Ordering::Relaxed);
                tracing::error!(error = %e, "replication stream failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.changed() => break,
                }
            }
        }
    }
    status.streaming.store(false, Ordering::Relaxed);
    status.record(&stream);
    match tokio::time::timeout(Duration::from_secs(5), stream.shutdown()).await {
        Ok(result) => result.context("closing the replication stream"),
        Err(_) => {
            tracing::warn!("the replication stream did not close within 5 s");
            Ok(())
        }
    }
}

/// Hands a routed change to the hub; true if some subscriber's queue is filling up.
fn apply(
    hub: &Hub,
    docs: &Docs,
    receipts: &Receipts,
    presence: &Presence,
    inventory: &Inventory,
    routed: Routed,
) -> bool {
    match routed {
        Routed::Message { room, seq, frame } => hub.deliver(&room, seq, &frame).pressed,
        Routed::MemberRemoved { room, user } => {
            let notice = Frame::from(protocol::room_left(&room, "membership_revoked"));
            hub.revoke(&room, &user, &notice);
            hub.revoke(&crate::activity::room_room(&room), &user, &notice);
            docs.revoke(&room, &user);
            false
        }
        Routed::Presence(routed) => presence.apply(routed),
        Routed::DocUpdate {
            doc,
            seq,
            origin,
            update,
        } => {
            docs.remote(&doc, seq, origin.as_deref(), update);
            false
        }
        Routed::Notification { user, seq, frame } => {
            let delivered = hub.deliver(&inapp::room(&user), seq, &frame);
            if delivered.queued > 0 {
                receipts.reached(&user, seq);
            }
            delivered.pressed
        }
        Routed::NotificationMarked { user, id, action } => {
            let frame = Frame::from(protocol::notification_marked(action, &[id]));
            hub.relay(&inapp::room(&user), 0, &frame);
            false
        }
        Routed::Activity(activity) => {
            let frame = Frame::from(activity.frame);
            for room in &activity.rooms {
                hub.relay(room, 0, &frame);
            }
            false
        }
        Routed::Badge { user, unread } => {
            let frame = Frame::from(protocol::notification_badge(unread));
            hub.relay(&inapp::room(&user), 0, &frame);
            false
        }
        Routed::Inventory(routed) => {
            inventory.apply(routed);
            false
        }
    }
}
