//! Replaying a room's history from PostgreSQL into one connection's outbox, paced so a long
//! replay never passes the outbox budget; and the worker that resyncs subscriptions the hub
//! found with a gap.

use std::sync::Arc;

use super::store::Store;
use super::Gateway;
use crate::hub::{Frame, Outbox, Subscription};
use crate::protocol;

const PAGE: i64 = 500;

/// How a replay ended.
pub(crate) enum Replayed {
    /// Everything up to this seq was queued.
    Reached(u64),
    /// History is missing (older than the retention window) or the database failed.
    Unavailable,
    /// The connection closed meanwhile.
    Closed,
}

/// Queues `room`'s events after `from`, up to `until` or, without it, to the end of history.
pub(crate) async fn replay(
    store: &Store,
    outbox: &Outbox,
    room: &str,
    from: u64,
    until: Option<u64>,
) -> Replayed {
    let budget = outbox.limit() / 2;
    let mut position = from;
    while until.is_none_or(|until| position < until) {
        let page = match store.replay(room, position, PAGE).await {
            Ok(page) if page.frames.is_empty() && until.is_none() => break,
            Ok(page) if page.contiguous && !page.frames.is_empty() => page,
            Ok(_) | Err(_) => return Replayed::Unavailable,
        };
        let full = page.frames.len() as i64 == PAGE;
        for (seq, frame) in page.frames {
            if !outbox.wait_until_below(budget).await || !outbox.push(frame) {
                return Replayed::Closed;
            }
            position = seq;
        }
        if !full {
            break;
        }
    }
    Replayed::Reached(position)
}

/// Resyncs, one task each, the subscriptions the hub queued after seeing a gap in their
/// room's seqs (or after the replication slot was recreated): replays the missing events from
/// the tables, then lets the buffered live events through.
pub async fn run_resync(gateway: Arc<Gateway>) {
    let Some(mut queue) = gateway.hub.take_resync_queue() else {
        return;
    };
    while let Some(sub) = queue.recv().await {
        let gateway = gateway.clone();
        tokio::spawn(async move { resync(&gateway, &sub).await });
    }
}

async fn resync(gateway: &Gateway, sub: &Subscription) {
    let Some(from) = sub.resync_after() else {
        return;
    };
    if sub.is_removed() || sub.outbox.is_closed() {
        return;
    }
    tracing::debug!(room = %sub.room, from, conn = sub.conn_id, "resyncing a subscription from the tables");
    match replay(&gateway.store, &sub.outbox, &sub.room, from, None).await {
        Replayed::Reached(position) => {
            sub.go_live(position);
        }
        Replayed::Unavailable => {
            let notice = protocol::resume_failed(&sub.room, from, from);
            sub.outbox.push(Frame::from(notice));
            sub.go_live(from);
        }
        Replayed::Closed => {}
    }
}
