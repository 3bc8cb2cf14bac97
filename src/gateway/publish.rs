//! `POST /api/rooms/{room}/messages`: publishing for HTTP clients and services without SQL
//! access. Same envelope, validation, authorization and idempotency as a WebSocket
//! `room:message`; rate-limited per user, since a request is not a connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::http::{authenticate, invalid, refusal_response, shown, FallbackQuery};
use super::{Gateway, Refusal, Session};
use crate::hub::Outbox;
use crate::protocol::{self, Command};

/// HTTP publishes per user: `publish_rate` a second, bursts up to twice that. (Over WebSocket
/// the limit is per connection; a request is not a connection, so here it is per user.)
pub(super) struct UserRates {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl UserRates {
    const MAX_TRACKED: usize = 10_000;

    pub(super) fn new(per_second: u32) -> UserRates {
        let rate = f64::from(per_second.max(1));
        UserRates {
            rate,
            burst: rate * 2.0,
            buckets: Mutex::default(),
        }
    }

    fn take(&self, user: &str, now: Instant) -> bool {
        let mut buckets = self.buckets.lock();
        if buckets.len() >= Self::MAX_TRACKED && !buckets.contains_key(user) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(user.to_owned()).or_insert((self.burst, now));
        let elapsed = now.saturating_duration_since(*at).as_secs_f64();
        *tokens = (*tokens + elapsed * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    event: &'a RawValue,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default, borrow)]
    metadata: Option<&'a RawValue>,
}

/// Reads at most `limit` bytes of body; past that, reads on (discarding, bounded) so the
/// client sees the answer rather than a reset, and answers `frame_too_large`.
async fn read_body(body: Body, limit: usize) -> Result<Vec<u8>, Refusal> {
    const DISCARD_AT_MOST: usize = 1 << 20;
    let too_large = || {
        Refusal::new(
            "frame_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    let mut total = 0usize;
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Refusal::new("bad_frame", e.to_string()))?;
            total += chunk.len();
            if total <= limit {
                out.extend_from_slice(&chunk);
            } else if total > limit + DISCARD_AT_MOST {
                break;
            }
        }
        Ok(())
    })
    .await;
    match read {
        Err(_) => Err(Refusal::new("bad_frame", "the body did not arrive in time")),
        Ok(Err(refusal)) => Err(refusal),
        Ok(Ok(())) if total > limit => Err(too_large()),
        Ok(Ok(())) => Ok(out),
    }
}

/// Turns a publish body into the `room:message` frame a WebSocket client would send, so both
/// transports validate alike.
fn publish_frame(room: &str, body: &[u8]) -> Result<protocol::ClientFrame, Refusal> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Refusal::new("bad_frame", "the body is not UTF-8 JSON"))?;
    if let Err(e) = serde_json::from_str::<&RawValue>(text) {
        return Err(Refusal::new(
            "bad_frame",
            format!("the body is not JSON: {e}"),
        ));
    }
    if !text.trim_start().starts_with('{') {
        return Err(Refusal::new(
            "bad_frame",
            "the body must be a JSON object {\"id\", \"event\", \"payload\"}",
        ));
    }
    let body: PublishBody<'_> =
        serde_json::from_str(text).map_err(|e| invalid(format!("the body: {e}")))?;
    let id = body
        .id
        .ok_or_else(|| {
            invalid(
                "`id` is required: a client message id (a retry with the same id is applied \
                 once)"
                    .into(),
            )
        })?
        .get();
    let room = serde_json::to_string(room).unwrap_or_else(|_| "\"\"".into());
    let payload = body.payload.map_or("{}", RawValue::get);
    let mut frame = format!(
        r#"{{"type":"room:message","id":{id},"data":{{"room":{room},"event":{},"payload":{payload}}}"#,
        body.event.get()
    );
    if let Some(metadata) = body.metadata {
        frame.push_str(r#","metadata":"#);
        frame.push_str(metadata.get());
    }
    frame.push('}');
    protocol::parse_client_frame(&frame).map_err(|e| {
        let message = e.to_string().replace("`data.", "`");
        Refusal::new(e.code(), message)
    })
}

/// `POST /api/rooms/{room}/messages`: publishes like a WebSocket `room:message` and answers
/// with the same `ack` once committed.
pub(super) async fn publish(
    State(gateway): State<Arc<Gateway>>,
    Extension(rates): Extension<Arc<UserRates>>,
    Path(room): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = match FallbackQuery::from_pairs(query) {
        Ok(query) => query,
        Err(refusal) => return refusal_response(&refusal),
    };
    match publish_inner(
        &gateway,
        &rates,
        &room,
        query.token.as_deref(),
        &headers,
        body,
    )
    .await
    {
        Ok(ack) => (StatusCode::OK, [("content-type", "application/json")], ack).into_response(),
        Err(refusal) => refusal_response(&refusal),
    }
}

async fn publish_inner(
    gateway: &Arc<Gateway>,
    rates: &UserRates,
    room: &str,
    query_token: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, Refusal> {
    let claims = authenticate(gateway, query_token, headers)?;
    if !protocol::valid_room(room) {
        return Err(invalid(format!(
            "{:?} is not a room name (1 to 200 characters of A-Z a-z 0-9 _ . : -)",
            shown(room)
        )));
    }
    let limit = gateway.settings.max_frame_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > (limit as u64).saturating_add(1 << 20)) {
        return Err(Refusal::new(
            "frame_too_large",
            format!("the body is larger than {limit} bytes"),
        ));
    }
    let body = read_body(body, limit).await?;
    let frame = publish_frame(room, &body)?;
    let (
        Some(id),
        Command::Publish {
            room,
            event,
            payload,
        },
    ) = (frame.id, frame.command)
    else {
        return Err(invalid("`id` is required".into()));
    };
    if !rates.take(&claims.user, Instant::now()) {
        return Err(Refusal::new(
            "rate_limited",
            format!(
                "at most {} publishes per second per user",
                gateway.settings.publish_rate
            ),
        ));
    }
    let mut session = Session::new(gateway.clone(), claims, Arc::new(Outbox::new(0)), 0);
    match session.publish(&room, &event, &payload, Some(&id)).await? {
        Some(result) => Ok(protocol::ack_ok(&id, result)),
        None => Err(Refusal::new("unavailable", "the publish gave no result")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_bodies_validate_like_websocket_frames() {
        let frame =
            publish_frame("r", br#"{"id":"m1","event":"chat","payload":{"n":[1,2]}}"#).unwrap();
        assert_eq!(frame.id.as_deref(), Some("m1"));
        assert_eq!(
            frame.command,
            Command::Publish {
                room: "r".into(),
                event: "chat".into(),
                payload: r#"{"n":[1,2]}"#.into()
            }
        );
        for (body, code) in [
            (&b"not json"[..], "bad_frame"),
            (b"[1]", "bad_frame"),
            (b"{\"id\":\"m\"", "bad_frame"),
            (b"{\"event\":\"e\"}", "invalid_field"),
            (b"{\"id\":\"m\"}", "invalid_field"),
            (b"{\"id\":\"m\",\"event\":\"bad event\"}", "invalid_field"),
            (b"{\"id\":{},\"event\":\"e\"}", "invalid_field"),
            (b"\xff", "bad_frame"),
        ] {
            let refusal = publish_frame("r", body).unwrap_err();
            assert_eq!(refusal.code, code, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn user_rates_allow_a_burst_then_the_rate() {
        let rates = UserRates::new(2);
        let now = Instant::now();
        assert_eq!((0..10).filter(|_| rates.take("u", now)).count(), 4);
        assert!(rates.take("v", now), "per user");
        assert!(rates.take("u", now + Duration::from_millis(500)));
    }
}
