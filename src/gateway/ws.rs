//! `/ws`: one multiplexed WebSocket per client. The socket is split into a writer task that
//! drains the connection's outbox in batches and a reader loop that handles client frames,
//! heartbeats and token expiry.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::header::{AUTHORIZATION, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::time::{sleep_until, Instant};
use tracing::Instrument;

use super::http::expiry;
use super::{Gateway, Refusal, Session};
use crate::auth::Claims;
use crate::hub::{CloseReason, Outbox, Payload};
use crate::protocol::{self, Command};

#[derive(Deserialize)]
pub(super) struct WsQuery {
    token: Option<String>,
}

pub(super) async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(refusal) = handshake_refusal(&gateway, &headers) {
        return refusal;
    }
    let claims = match query.token.or_else(|| bearer_token(&headers)) {
        Some(token) => match gateway.verifier.verify(&token) {
            Ok(claims) => Some(claims),
            Err(e) => return refuse(StatusCode::UNAUTHORIZED, e.code(), &e.to_string()),
        },
        None => None,
    };
    let limit = gateway.settings.max_frame_bytes;
    // Small buffers keep an idle connection cheap (tungstenite allocates and zero-fills its read
    // buffer up front, 128 KiB by default); larger frames still arrive whole.
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| run(gateway, socket.split(), claims))
}

/// Why a WebSocket handshake is refused before its token is looked at: a browser origin
/// outside the allow-list (403), or a draining server (503).
pub(super) fn handshake_refusal(gateway: &Gateway, headers: &HeaderMap) -> Option<Response> {
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    if !gateway.settings.origin_allowed(origin) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not connect",
        ));
    }
    if gateway.is_draining() {
        return Some(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is restarting; reconnect",
        ));
    }
    None
}

/// The token from `Authorization: Bearer …`.
pub(super) fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_owned())
}

/// An HTTP refusal with the protocol's error envelope as its body.
pub(super) fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        protocol::error_frame(code, message),
    )
        .into_response()
}

// Memory per idle connection: an `async fn` keeps its arguments and the locals moved out of
// them side by side for as long as it runs, so the connection's futures are `async move`
// blocks over their arguments instead, the socket is split before its future is made, and the
// long-lived part (`serve`) is boxed apart from the handshake's states.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn run(
    gateway: Arc<Gateway>,
    (mut sink, mut stream): (SplitSink<WebSocket, Message>, SplitStream<WebSocket>),
    claims: Option<Claims>,
) -> impl Future<Output = ()> + Send {
    async move {
        let claims = match claims {
            Some(claims) => claims,
            None => match Box::pin(first_message_auth(&gateway, &mut stream)).await {
                Ok(claims) => claims,
                Err(refusal) => return Box::pin(close_with(&mut sink, &refusal, 4001)).await,
            },
        };
        let outbox = Arc::new(Outbox::new(gateway.settings.connection_queue_bytes));
        let admission = match gateway.admit(&claims.user, outbox.clone()) {
            Ok(admission) => admission,
            Err(refusal) => return Box::pin(close_with(&mut sink, &refusal, 1013)).await,
        };
        // A debug span: entered on every poll of the connection, an enabled span costs a few
        // percent of the fan-out's CPU.
        let span = tracing::debug_span!("connection", id = admission.conn_id, user = %claims.user);
        let conn_id = admission.conn_id;
        Box::pin(serve(
            gateway.clone(),
            Session::new(gateway, claims, outbox, conn_id),
            admission,
            sink,
            stream,
        ))
        .instrument(span)
        .await;
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
fn serve(
    gateway: Arc<Gateway>,
    mut session: Session,
    admission: super::Admission,
    sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
) -> impl Future<Output = ()> + Send {
    async move {
        session.send(protocol::connected(
            session.conn_id,
            &session.claims.user,
            gateway.settings.heartbeat_interval_ms,
        ));
        let slow_notice = protocol::error_frame(
            "slow_consumer",
            "the connection fell too far behind; reconnect and resume",
        );
        let writer = tokio::spawn(
            write_loop(
                sink,
                session.outbox.clone(),
                Message::Text,
                Some(Message::Text(slow_notice.into())),
            )
            .in_current_span(),
        );
        let reason = read_loop(&gateway, &mut session, &mut stream).await;
        tracing::debug!(?reason, "connection ends");
        if reason == CloseReason::SlowConsumer {
            gateway.stats.slow_consumers.fetch_add(1, Ordering::Relaxed);
        }
        session.outbox.close(reason);
        session.close();
        // The user's slot is free before the client can see the socket close.
        drop(admission);
        // A writer stuck on a client that stopped reading would hold the socket forever.
        let abort = writer.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
        {
            tracing::debug!("writer still blocked after 2 s; dropping the socket");
            abort.abort();
        }
    }
}

async fn first_message_auth(
    gateway: &Gateway,
    stream: &mut SplitStream<WebSocket>,
) -> Result<Claims, Refusal> {
    let missing = || {
        Refusal::new(
            "unauthorized",
            "send {\"type\":\"auth\",\"data\":{\"token\":…}} first",
        )
    };
    let first = tokio::time::timeout(gateway.settings.auth_timeout(), stream.next())
        .await
        .map_err(|_| Refusal::new("unauthorized", "no auth message in time"))?;
    let Some(Ok(Message::Text(text))) = first else {
        return Err(missing());
    };
    match protocol::parse_client_frame(&text) {
        Ok(frame) => match frame.command {
            Command::Auth { token } => gateway
                .verifier
                .verify(&token)
                .map_err(|e| Refusal::new(e.code(), e.to_string())),
            _ => Err(missing()),
        },
        Err(e) => Err(Refusal::new(e.code(), e.to_string())),
    }
}

async fn close_with(sink: &mut SplitSink<WebSocket, Message>, refusal: &Refusal, code: u16) {
    let _ = sink
        .send(Message::Text(
            protocol::error_frame(refusal.code, &refusal.message).into(),
        ))
        .await;
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: refusal.code.into(),
        })))
        .await;
}

async fn read_loop(
    gateway: &Gateway,
    session: &mut Session,
    stream: &mut SplitStream<WebSocket>,
) -> CloseReason {
    let interval = gateway.settings.heartbeat_interval();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
    let mut last_seen = Instant::now();
    let mut expires_at = session.claims.expires_at;
    let expiry_timer = sleep_until(expiry(session.claims.expires_at));
    tokio::pin!(expiry_timer);
    let outbox = session.outbox.clone();
    loop {
        tokio::select! {
            message = stream.next() => {
                last_seen = Instant::now();
                match message {
                    None | Some(Ok(Message::Close(_))) => return CloseReason::Gone,
                    Some(Err(e)) => {
                        if is_too_large(&e) {
                            let limit = gateway.settings.max_frame_bytes;
                            let error = protocol::ProtocolError::FrameTooLarge { limit };
                            session.send(protocol::error_frame(error.code(), &error.to_string()));
                            return CloseReason::Policy("frame_too_large");
                        }
                        return CloseReason::Gone;
                    }
                    Some(Ok(Message::Text(text))) => match protocol::parse_client_frame(&text) {
                        // Boxed: the handler's database awaits would otherwise size every
                        // idle connection's task.
                        Ok(frame) => Box::pin(session.handle(frame)).await,
                        Err(e) => session.send(protocol::error_frame(e.code(), &e.to_string())),
                    },
                    Some(Ok(Message::Binary(_))) => {
                        let e = protocol::ProtocolError::BinaryFrame;
                        session.send(protocol::error_frame(e.code(), &e.to_string()));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
                if session.claims.expires_at != expires_at {
                    expires_at = session.claims.expires_at;
                    expiry_timer.as_mut().reset(expiry(session.claims.expires_at));
                }
            }
            _ = heartbeat.tick() => {
                if last_seen.elapsed() >= gateway.settings.heartbeat_timeout() {
                    session.send(protocol::error_frame("heartbeat_timeout", "no frame from the client in time"));
                    return CloseReason::Policy("heartbeat_timeout");
                }
                session.send(protocol::ping());
            }
            _ = &mut expiry_timer => {
                session.send(protocol::error_frame("token_expired", "the token expired; reconnect with a new one or send auth:refresh before expiry"));
                return CloseReason::Policy("token_expired");
            }
            reason = outbox.closed() => return reason,
        }
    }
}

fn is_too_large(e: &axum::Error) -> bool {
    let text = e.to_string();
    text.contains("too long") || text.contains("too big") || text.contains("Space limit")
}

/// Drains `outbox` into the socket in batches; when it closes, tells the client why (a slow
/// consumer first gets `slow_notice`, if any) and closes the socket.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn keeps its arguments twice"
)]
pub(super) fn write_loop<F: Payload + Send + Sync + 'static>(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox<F>>,
    message: fn(F) -> Message,
    slow_notice: Option<Message>,
) -> impl Future<Output = ()> + Send {
    async move {
        let mut batch: Vec<F> = Vec::new();
        loop {
            match outbox.next_batch(&mut batch).await {
                Ok(()) => {
                    for frame in batch.drain(..) {
                        if sink.feed(message(frame)).await.is_err() {
                            outbox.close(CloseReason::Gone);
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        outbox.close(CloseReason::Gone);
                        return;
                    }
                }
                Err(reason) => {
                    // Boxed: its timers would otherwise size every idle connection's writer.
                    return Box::pin(say_why(sink, reason, slow_notice)).await;
                }
            }
        }
    }
}

/// Tells the client why its outbox closed (a slow consumer first gets `slow_notice`, if any),
/// then closes the socket; waits at most a second for each frame.
async fn say_why(
    mut sink: SplitSink<WebSocket, Message>,
    reason: CloseReason,
    slow_notice: Option<Message>,
) {
    let (code, text) = match reason {
        CloseReason::Gone => return,
        CloseReason::SlowConsumer => {
            if let Some(notice) = slow_notice {
                let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(notice)).await;
            }
            (4008, "slow_consumer")
        }
        CloseReason::Draining => (1012, "draining"),
        CloseReason::Policy(code) => (policy_close_code(code), code),
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: text.into(),
    }));
    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
}

/// Close codes: 1009 for oversized input, 1013 to come back later, the 4000 range for the
/// gateway's own reasons, 1008 for any other protocol violation.
fn policy_close_code(code: &str) -> u16 {
    match code {
        "frame_too_large" | "update_too_large" => 1009,
        "document_reloaded" | "unavailable" | "overloaded" => 1013,
        "access_revoked" => 4403,
        "heartbeat_timeout" => 4000,
        "unauthorized" => 4001,
        "token_expired" => 4003,
        _ => 1008,
    }
}
