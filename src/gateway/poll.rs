//! `GET /poll`: long-polling, for clients that can neither open a WebSocket nor read a stream.
//!
//! Each request is a short-lived session: it joins the rooms of its cursor (replaying from
//! PostgreSQL after each room's seq), collects what arrives, and answers with the events and
//! the cursor after them. Nothing is kept between requests: an event leaves the server's hands
//! only by being returned, and the cursor only moves past events that were returned, so a
//! chain of polls loses nothing and repeats nothing.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::http::{
    authenticate, classify, expiry, first_allowed, join_all, parse_rooms, refusal_response, Cursor,
    FallbackQuery, Seen,
};
use super::{Gateway, Refusal, Session};
use crate::hub::{CloseReason, Frame, Outbox};

const DEFAULT_TIMEOUT_MS: u64 = 25_000;
const MAX_TIMEOUT_MS: u64 = 60_000;
/// A response carries at most this many events…
const MAX_EVENTS: usize = 256;
/// …and about this many bytes of them (at least one event, whatever its size).
const MAX_BYTES: usize = 512 * 1024;
/// How long joins may take, at least, even with a shorter `timeout_ms`.
const JOIN_GRACE: Duration = Duration::from_secs(10);

pub(super) async fn poll(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let answered = match FallbackQuery::from_pairs(query) {
        Ok(query) => answer(&gateway, &query, &headers).await,
        Err(refusal) => Err(refusal),
    };
    match answered {
        Ok(body) => (
            StatusCode::OK,
            [
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

fn parse_timeout(value: Option<&str>) -> Result<Duration, Refusal> {
    let ms = match value {
        None => DEFAULT_TIMEOUT_MS,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if v.bytes().all(|b| b.is_ascii_digit()) => ms.min(MAX_TIMEOUT_MS),
            _ => {
                return Err(Refusal::new(
                    "invalid_field",
                    format!("`timeout_ms` must be milliseconds, 0 to {MAX_TIMEOUT_MS}"),
                ))
            }
        },
    };
    Ok(Duration::from_millis(ms))
}

async fn answer(
    gateway: &Arc<Gateway>,
    query: &FallbackQuery,
    headers: &HeaderMap,
) -> Result<String, Refusal> {
    let start = Instant::now();
    if gateway.is_draining() {
        return Err(Refusal::new(
            "draining",
            "the server is restarting; reconnect",
        ));
    }
    let claims = authenticate(gateway, query.token.as_deref(), headers)?;
    let wanted = parse_rooms(
        query.rooms.as_deref(),
        gateway.settings.max_rooms_per_connection,
    )?;
    let timeout = parse_timeout(query.timeout_ms.as_deref())?;
    let deadline = (start + timeout).min(expiry(claims.expires_at));
    let outbox = Arc::new(Outbox::new(gateway.settings.connection_queue_bytes));
    let admission = gateway.admit(&claims.user, outbox.clone())?;
    let mut session = Session::new(gateway.clone(), claims, outbox.clone(), admission.conn_id);
    let refused = first_allowed(&session, &wanted).await?;

    let mut collected = Collected::new(Cursor::new(&wanted));
    {
        let joins = join_all(&mut session, &wanted, &refused);
        tokio::pin!(joins);
        let mut joined = false;
        let mut batch = Vec::new();
        let wait = tokio::time::sleep_until(deadline);
        let hard_stop = tokio::time::sleep_until(deadline.max(start + JOIN_GRACE));
        tokio::pin!(wait, hard_stop);
        loop {
            tokio::select! {
                biased;
                () = &mut joins, if !joined => joined = true,
                next = outbox.next_batch(&mut batch) => {
                    if next.is_err() {
                        break;
                    }
                    for frame in batch.drain(..) {
                        collected.take(frame);
                    }
                    if collected.full {
                        outbox.close(CloseReason::Gone);
                        break;
                    }
                }
                () = &mut wait, if joined => break,
                () = &mut hard_stop => break,
            }
            if joined && !collected.events.is_empty() && outbox.queued_bytes() == 0 {
                break;
            }
        }
    }
    outbox.close(CloseReason::Gone);
    drop(session);
    drop(admission);
    Ok(collected.into_body())
}

/// The events a poll returns, and the cursor after them.
struct Collected {
    cursor: Cursor,
    events: Vec<Frame>,
    bytes: usize,
    /// An event did not fit: from here on nothing is returned (and the cursor stays before it).
    full: bool,
}

impl Collected {
    fn new(cursor: Cursor) -> Collected {
        Collected {
            cursor,
            events: Vec::new(),
            bytes: 0,
            full: false,
        }
    }

    fn take(&mut self, frame: Frame) {
        let seen = classify(frame.as_str()).1;
        if let Seen::Joined { .. } = seen {
            // Not an event for the client, but it fixes where a room joined "from now" starts.
            self.cursor.apply(&seen);
            return;
        }
        if self.full {
            return;
        }
        let fits = self.events.is_empty()
            || (self.events.len() < MAX_EVENTS && self.bytes + frame.len() <= MAX_BYTES);
        if !fits {
            self.full = true;
            return;
        }
        self.cursor.apply(&seen);
        self.bytes += frame.len();
        self.events.push(frame);
    }

    fn into_body(self) -> String {
        let mut body = String::with_capacity(self.bytes + self.events.len() + 64);
        body.push_str(r#"{"events":["#);
        for (i, frame) in self.events.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(frame.as_str());
        }
        body.push_str(r#"],"cursor":"#);
        body.push_str(
            &serde_json::to_string(&self.cursor.render(true)).unwrap_or_else(|_| "\"\"".into()),
        );
        body.push('}');
        body
    }
}

#[cfg(test)]
mod tests {
    use super::super::http::parse_cursor;
    use super::*;
    use crate::protocol;

    #[test]
    fn a_full_poll_keeps_its_cursor_before_what_it_could_not_return() {
        let mut collected = Collected::new(Cursor::new(&parse_cursor("a@0,b", "rooms").unwrap()));
        collected.take(Frame::from(protocol::ack_ok(
            "join:b",
            serde_json::json!({"room": "b", "seq": 4}),
        )));
        for seq in 1..=(MAX_EVENTS as u64 + 10) {
            collected.take(Frame::from(protocol::room_message(
                "a", seq, "e", "{}", None, "t",
            )));
        }
        collected.take(Frame::from(protocol::room_message(
            "b", 5, "e", "{}", None, "t",
        )));
        assert!(collected.full);
        assert_eq!(collected.events.len(), MAX_EVENTS);
        let body: serde_json::Value = serde_json::from_str(&collected.into_body()).unwrap();
        assert_eq!(body["cursor"], format!("a@{MAX_EVENTS},b@4"));
        assert_eq!(body["events"][0]["seq"], 1);
    }

    #[test]
    fn one_oversized_event_is_still_returned() {
        let mut collected = Collected::new(Cursor::new(&parse_cursor("a@0", "rooms").unwrap()));
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(MAX_BYTES));
        collected.take(Frame::from(protocol::room_message(
            "a", 1, "e", &big, None, "t",
        )));
        collected.take(Frame::from(protocol::room_message(
            "a", 2, "e", "{}", None, "t",
        )));
        assert_eq!(collected.events.len(), 1);
        assert_eq!(collected.cursor.render(true), "a@1");
    }

    #[test]
    fn timeouts_default_cap_and_refuse_garbage() {
        assert_eq!(parse_timeout(None).unwrap(), Duration::from_secs(25));
        assert_eq!(parse_timeout(Some("0")).unwrap(), Duration::ZERO);
        assert_eq!(
            parse_timeout(Some("999999")).unwrap(),
            Duration::from_secs(60)
        );
        for bad in ["", "abc", "-1", "+5", "1.5"] {
            assert_eq!(parse_timeout(Some(bad)).unwrap_err().code, "invalid_field");
        }
    }
}
