//! `/yjs/{doc}`: the stock y-websocket protocol (y-protocols sync and awareness messages in
//! binary frames), one document per connection, for unmodified Yjs editors.
//!
//! The token comes in `?token=` or `Authorization: Bearer`. Editors without write access are
//! viewers: their updates are refused with a y-protocols permission-denied message and never
//! applied. An undecodable, oversized or dependency-missing update closes the connection for a
//! protocol violation and changes nothing.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;

use super::docs::TokenQuery;
use super::http::{authenticate, expiry, refusal_response};
use super::ws::{handshake_refusal, write_loop};
use super::Gateway;
use crate::auth::Claims;
use crate::docs::{self, DocHandle, Peer, Refused};
use crate::hub::{CloseReason, Outbox};

pub(super) async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    Path(doc): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = handshake_refusal(&gateway, &headers) {
        return refusal;
    }
    let claims = match authenticate(&gateway, query.token.as_deref(), &headers) {
        Ok(claims) => claims,
        Err(refusal) => return refusal_response(&refusal),
    };
    let access = match gateway.doc_access(&claims, &doc).await {
        Ok(access) => access,
        Err(refusal) => return refusal_response(&refusal),
    };
    // A whole update plus its message framing.
    let limit = gateway.docs.settings.max_update_bytes + 64;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| run(gateway, socket.split(), claims, doc, access.write))
}

/// Written as an `async move` block over its arguments, with the socket split before, for the
/// reason given at `ws::run`: what an idle connection's task keeps.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn run(
    gateway: Arc<Gateway>,
    (mut sink, stream): (SplitSink<WebSocket, Message>, SplitStream<WebSocket>),
    claims: Claims,
    doc: String,
    write: bool,
) -> impl Future<Output = ()> + Send {
    async move {
        // The admission's outbox carries the gateway's control notices (draining closes it);
        // document messages go through their own binary outbox.
        let control = Arc::new(Outbox::new(0));
        let admission = match gateway.admit(&claims.user, control.clone()) {
            Ok(admission) => admission,
            Err(refusal) => return Box::pin(close_with(&mut sink, 1013, refusal.code)).await,
        };
        let conn = admission.conn_id;
        let span = tracing::info_span!("yjs", id = conn, user = %claims.user, doc = %doc);
        async {
            let outbox = Arc::new(Outbox::<Bytes>::new(
                gateway.settings.connection_queue_bytes,
            ));
            // Boxed: loading a document awaits the database, and an inline future that size would
            // stay part of every idle connection's task.
            let join = gateway.docs.join(
                &doc,
                conn,
                &claims.user,
                claims.rooms.allows(&doc),
                Peer::Binary(outbox.clone()),
            );
            let handle = match Box::pin(join).await {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "loading the document failed");
                    return Box::pin(close_with(&mut sink, 1011, "unavailable")).await;
                }
            };
            for message in handle.greeting() {
                outbox.push(message);
            }
            let writer = tokio::spawn(
                write_loop(sink, outbox.clone(), Message::Binary, None).in_current_span(),
            );
            let mut editor = Editor {
                gateway: &gateway,
                handle: &handle,
                outbox: &outbox,
                user: &claims.user,
                conn,
                write,
                told_read_only: false,
            };
            let reason = editor.read_loop(stream, &control, claims.expires_at).await;
            tracing::debug!(?reason, "connection ends");
            handle.leave(conn);
            outbox.close(reason);
            // The user's slot is free before the client can see the socket close.
            drop(admission);
            let abort = writer.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), writer)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        .instrument(span)
        .await;
    }
}

struct Editor<'a> {
    gateway: &'a Gateway,
    handle: &'a Arc<DocHandle>,
    outbox: &'a Outbox<Bytes>,
    user: &'a str,
    conn: u64,
    write: bool,
    told_read_only: bool,
}

impl Editor<'_> {
    async fn read_loop(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        control: &Outbox,
        expires_at: i64,
    ) -> CloseReason {
        let settings = &self.gateway.settings;
        let interval = settings.heartbeat_interval();
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut last_seen = Instant::now();
        let expiry_timer = sleep_until(expiry(expires_at));
        tokio::pin!(expiry_timer);
        loop {
            tokio::select! {
                message = stream.next() => {
                    last_seen = Instant::now();
                    match message {
                        None | Some(Ok(Message::Close(_))) => return CloseReason::Gone,
                        Some(Err(_)) => return CloseReason::Policy("invalid_message"),
                        Some(Ok(Message::Binary(data))) => {
                            if let Err(refused) = self.handle_frame(&data) {
                                tracing::info!(error = %refused, "refusing an editor's message");
                                return CloseReason::Policy(refused.code());
                            }
                        }
                        Some(Ok(Message::Text(_))) => return CloseReason::Policy("invalid_message"),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    }
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= settings.heartbeat_timeout() {
                        return CloseReason::Policy("heartbeat_timeout");
                    }
                }
                _ = &mut expiry_timer => return CloseReason::Policy("token_expired"),
                reason = control.closed() => return reason,
                reason = self.outbox.closed() => return reason,
            }
        }
    }

    /// One y-protocols message per frame, as y-websocket sends them.
    fn handle_frame(&mut self, data: &[u8]) -> Result<(), Refused> {
        if !docs::plausible_message(data) {
            return Err(Refused::Undecodable("implausible count".into()));
        }
        let message = std::panic::catch_unwind(|| YMessage::decode_v1(data))
            .map_err(|_| Refused::Undecodable("malformed message".into()))?
            .map_err(|e| Refused::Undecodable(e.to_string()))?;
        self.handle_message(message)
    }

    fn handle_message(&mut self, message: YMessage) -> Result<(), Refused> {
        match message {
            YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                let (diff, _) = self.handle.diff(&sv);
                let reply = YMessage::Sync(SyncMessage::SyncStep2(diff));
                self.outbox.push(Bytes::from(reply.encode_v1()));
            }
            YMessage::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                if self.write {
                    self.handle
                        .accept(&self.gateway.docs, &update, self.user, None)?;
                } else if !is_empty_update(&update) && !self.told_read_only {
                    self.told_read_only = true;
                    let denied =
                        YMessage::Auth(Some("read-only: your changes are not stored".into()));
                    self.outbox.push(Bytes::from(denied.encode_v1()));
                }
            }
            YMessage::Awareness(update) => self.handle.awareness(self.conn, update),
            YMessage::AwarenessQuery => {
                if let Some(all) = self.handle.awareness_all() {
                    self.outbox
                        .push(Bytes::from(YMessage::Awareness(all).encode_v1()));
                }
            }
            YMessage::Auth(_) | YMessage::Custom(..) => {}
        }
        Ok(())
    }
}

/// An update with no structs and no deletions (what a replica with nothing new sends).
fn is_empty_update(update: &[u8]) -> bool {
    update == [0, 0]
}

async fn close_with(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &str) {
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    let _ = sink.send(close).await;
}
