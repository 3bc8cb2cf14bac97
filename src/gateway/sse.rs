//! `GET /sse`: Server-Sent Events, for clients that cannot open a WebSocket.
//!
//! A connection's session is owned by a pump task that joins the rooms and watches token
//! expiry; the response body only reads the session's outbox, turning each frame into one
//! event (`event:` the envelope type, `data:` the envelope). Events that move the cursor carry
//! it as their `id:`, so a browser's automatic reconnect (`Last-Event-ID`) resumes every room
//! where it stopped. When the body is dropped (the client went away), the outbox closes and
//! the pump leaves every room.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;

use super::http::{
    authenticate, classify, expiry, first_allowed, join_all, parse_cursor, parse_rooms,
    refusal_response, Cursor, FallbackQuery, Seen, Wanted,
};
use super::{Admission, Gateway, Refusal, Session};
use crate::hub::{CloseReason, Frame, Outbox};
use crate::protocol;

pub(super) async fn stream(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let opened = match FallbackQuery::from_pairs(query) {
        Ok(query) => open(&gateway, &query, &headers).await,
        Err(refusal) => Err(refusal),
    };
    match opened {
        Ok(response) => response,
        Err(refusal) => refusal_response(&refusal),
    }
}

async fn open(
    gateway: &Arc<Gateway>,
    query: &FallbackQuery,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    if gateway.is_draining() {
        return Err(Refusal::new(
            "draining",
            "the server is restarting; reconnect",
        ));
    }
    let claims = authenticate(gateway, query.token.as_deref(), headers)?;
    let mut wanted = parse_rooms(
        query.rooms.as_deref(),
        gateway.settings.max_rooms_per_connection,
    )?;
    if let Some(last) = headers.get("last-event-id") {
        let last = last
            .to_str()
            .map_err(|_| Refusal::new("invalid_field", "`Last-Event-ID` is not a cursor"))?;
        if !last.trim().is_empty() {
            resume_from(&mut wanted, &parse_cursor(last, "Last-Event-ID")?);
        }
    }
    let outbox = Arc::new(Outbox::new(gateway.settings.connection_queue_bytes));
    let admission = gateway.admit(&claims.user, outbox.clone())?;
    let session = Session::new(gateway.clone(), claims, outbox.clone(), admission.conn_id);
    let refused = first_allowed(&session, &wanted).await?;
    session.send(protocol::connected(
        admission.conn_id,
        &session.claims.user,
        gateway.settings.heartbeat_interval_ms,
    ));
    let reader = Reader {
        gateway: gateway.clone(),
        cursor: Cursor::new(&wanted),
        outbox: outbox.clone(),
        pending: VecDeque::new(),
        batch: Vec::new(),
        done: false,
    };
    tokio::spawn(pump(session, admission, wanted, refused));
    let mut response = Sse::new(events(reader))
        .keep_alive(KeepAlive::new().interval(gateway.settings.heartbeat_interval()))
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `Last-Event-ID` wins over `rooms=…@since` for the rooms it names; rooms it does not name
/// keep the URL's `since`, and rooms only it names are ignored (the URL says what to join).
fn resume_from(wanted: &mut [Wanted], last: &[Wanted]) {
    for w in wanted.iter_mut() {
        if let Some(since) = last.iter().find(|l| l.room == w.room).and_then(|l| l.since) {
            w.since = Some(since);
        }
    }
}

/// Owns the session: joins, then waits until the outbox closes (the client went away, fell
/// behind, or the server drains) or the token expires; then leaves every room.
async fn pump(
    mut session: Session,
    admission: Admission,
    wanted: Vec<Wanted>,
    refused: HashMap<String, Refusal>,
) {
    let outbox = session.outbox.clone();
    let expires = tokio::time::sleep_until(expiry(session.claims.expires_at));
    tokio::pin!(expires);
    let expire = |outbox: &Outbox| {
        outbox.push(Frame::from(protocol::error_frame(
            "token_expired",
            "the token expired; reconnect with a new one",
        )));
        outbox.close(CloseReason::Policy("token_expired"));
    };
    tokio::select! {
        () = join_all(&mut session, &wanted, &refused) => {}
        _ = outbox.closed() => {}
        () = &mut expires => expire(&outbox),
    }
    tokio::select! {
        _ = outbox.closed() => {}
        () = &mut expires => expire(&outbox),
    }
    session.close();
    drop(admission);
}

/// The response body's side: frames from the outbox, as events.
struct Reader {
    gateway: Arc<Gateway>,
    cursor: Cursor,
    outbox: Arc<Outbox>,
    pending: VecDeque<Frame>,
    batch: Vec<Frame>,
    done: bool,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.outbox.close(CloseReason::Gone);
    }
}

fn events(reader: Reader) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next_event().await?;
        Some((Ok(event), reader))
    })
}

impl Reader {
    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if self.done {
                return None;
            }
            if let Some(frame) = self.pending.pop_front() {
                return Some(self.event_for(&frame));
            }
            match self.outbox.next_batch(&mut self.batch).await {
                Ok(()) => self.pending.extend(self.batch.drain(..)),
                Err(CloseReason::SlowConsumer) => {
                    self.done = true;
                    self.gateway
                        .stats
                        .slow_consumers
                        .fetch_add(1, Ordering::Relaxed);
                    return Some(Event::default().event("error").data(protocol::error_frame(
                        "slow_consumer",
                        "the connection fell too far behind; reconnect and resume",
                    )));
                }
                Err(_) => return None,
            }
        }
    }

    fn event_for(&mut self, frame: &Frame) -> Event {
        let (kind, seen) = classify(frame.as_str());
        let mut event = Event::default().event(&*kind).data(frame.as_str());
        if self.cursor.apply(&seen) {
            event = event.id(self.cursor.render(false));
        }
        if let Seen::Reconnect { retry_after_ms } = seen {
            // Draining: tell the browser when to come back, then end the stream.
            event = event.retry(Duration::from_millis(retry_after_ms));
            self.done = true;
        }
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_wins_for_the_rooms_it_names() {
        let mut wanted = parse_cursor("a@1,b@2,c", "rooms").unwrap();
        resume_from(&mut wanted, &parse_cursor("b@7,c@3,d@9,a", "x").unwrap());
        assert_eq!(
            wanted,
            parse_cursor("a@1,b@7,c@3", "rooms").unwrap(),
            "a keeps its since, b and c take the header's, d is not joined"
        );
    }
}
