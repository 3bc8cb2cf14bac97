//! A connection's bounded outgoing queue (seed §8.2: 1 MB per connection).
//!
//! Producers (the hub, the connection's own replies) never wait: a push that would pass the
//! byte budget closes the outbox as a slow consumer instead, so one slow client never slows a
//! room. The single consumer is the connection's writer, which drains whole batches.

use std::collections::VecDeque;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

/// One encoded server frame, shared (not copied) between all its recipients.
pub type Frame = Utf8Bytes;

/// What an outbox queues: text frames (JSON envelopes) or binary frames (Yjs messages).
pub trait Payload: Clone {
    /// Bytes this frame counts against the connection's budget.
    fn size(&self) -> usize;
}

impl Payload for Utf8Bytes {
    fn size(&self) -> usize {
        self.len()
    }
}

impl Payload for bytes::Bytes {
    fn size(&self) -> usize {
        self.len()
    }
}

/// Why an outbox was closed; the writer tells the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue passed its byte budget: the client reads too slowly.
    SlowConsumer,
    /// The server is shutting down (after `system:reconnect`).
    Draining,
    /// The connection broke a protocol rule or limit.
    Policy(&'static str),
    /// The client went away.
    Gone,
}

struct State<F> {
    frames: VecDeque<F>,
    bytes: usize,
    closed: Option<CloseReason>,
}

pub struct Outbox<F = Frame> {
    state: Mutex<State<F>>,
    ready: Notify,
    drained: Notify,
    closing: Notify,
    limit: usize,
}

impl<F: Payload> Outbox<F> {
    pub fn new(limit: usize) -> Outbox<F> {
        Outbox {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                closed: None,
            }),
            ready: Notify::new(),
            drained: Notify::new(),
            closing: Notify::new(),
            limit,
        }
    }

    /// Queues a frame; returns false if the outbox is closed or this push overflowed it.
    pub fn push(&self, frame: F) -> bool {
        let mut state = self.state.lock();
        if state.closed.is_some() {
            return false;
        }
        if state.bytes + frame.size() > self.limit {
            state.closed = Some(CloseReason::SlowConsumer);
            state.frames.clear();
            state.bytes = 0;
            drop(state);
            self.ready.notify_one();
            self.closing.notify_waiters();
            return false;
        }
        state.bytes += frame.size();
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
        true
    }

    /// Closes the outbox; frames already queued are still written unless the reason is
    /// [`CloseReason::SlowConsumer`]. The first reason wins.
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.state.lock();
        if state.closed.is_none() {
            if reason == CloseReason::SlowConsumer {
                state.frames.clear();
                state.bytes = 0;
            }
            state.closed = Some(reason);
        }
        drop(state);
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.closing.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.state.lock().closed.is_some()
    }

    /// Resolves once the outbox is closed, with the reason.
    pub async fn closed(&self) -> CloseReason {
        loop {
            let closing = self.closing.notified();
            if let Some(reason) = self.state.lock().closed.clone() {
                return reason;
            }
            closing.await;
        }
    }

    /// Whether more than half the budget is queued: the writer is falling behind.
    pub fn is_pressed(&self) -> bool {
        self.state.lock().bytes > self.limit / 2
    }

    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Waits for frames and moves all of them into `batch`; once the queue is empty and the
    /// outbox closed, returns the reason instead.
    pub async fn next_batch(&self, batch: &mut Vec<F>) -> Result<(), CloseReason> {
        loop {
            {
                let mut state = self.state.lock();
                if !state.frames.is_empty() {
                    batch.extend(state.frames.drain(..));
                    state.bytes = 0;
                    drop(state);
                    self.drained.notify_waiters();
                    return Ok(());
                }
                if let Some(reason) = &state.closed {
                    return Err(reason.clone());
                }
            }
            self.ready.notified().await;
        }
    }

    /// Waits until at most `bytes` are queued (or the outbox closed); used to pace replays so
    /// they never overflow the budget.
    pub async fn wait_until_below(&self, bytes: usize) -> bool {
        loop {
            let drained = self.drained.notified();
            {
                let state = self.state.lock();
                if state.closed.is_some() {
                    return false;
                }
                if state.bytes <= bytes {
                    return true;
                }
            }
            drained.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_as_slow_consumer_and_drops_the_backlog() {
        let outbox = Outbox::new(10);
        assert!(outbox.push(Frame::from("12345")));
        assert!(outbox.push(Frame::from("12345")));
        assert!(!outbox.push(Frame::from("x")));
        assert!(!outbox.push(Frame::from("y")));
        let mut batch = Vec::new();
        assert_eq!(
            outbox.next_batch(&mut batch).await,
            Err(CloseReason::SlowConsumer)
        );
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn draining_close_still_writes_what_is_queued() {
        let outbox = Outbox::new(100);
        outbox.push(Frame::from("a"));
        outbox.close(CloseReason::Draining);
        outbox.close(CloseReason::Gone);
        let mut batch = Vec::new();
        outbox.next_batch(&mut batch).await.unwrap();
        assert_eq!(batch.len(), 1);
        assert_eq!(
            outbox.next_batch(&mut batch).await,
            Err(CloseReason::Draining)
        );
    }

    #[tokio::test]
    async fn waiters_wake_when_the_writer_drains() {
        let outbox = std::sync::Arc::new(Outbox::new(100));
        outbox.push(Frame::from("0123456789"));
        let waiter = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.wait_until_below(0).await })
        };
        tokio::task::yield_now().await;
        let mut batch = Vec::new();
        outbox.next_batch(&mut batch).await.unwrap();
        assert!(waiter.await.unwrap());
    }
}
