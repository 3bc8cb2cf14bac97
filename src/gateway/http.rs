//! What the HTTP transports share (`/sse`, `/poll`, and the publish endpoint).
//!
//! The fallback transports speak the WebSocket protocol's envelopes over plain HTTP. They
//! authenticate like `/ws` (`?token=` or `Authorization: Bearer`), join rooms through
//! [`Session::join`] (same authorization, replay from `since`, seam, `resume:failed`), and name
//! where a client is with a *cursor*: `room@seq,room@seq` (bare `room` = from now). A cursor is
//! both what `rooms=` accepts and what the server hands back, so resuming never needs state on
//! the server.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{
    ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_MAX_AGE, ORIGIN, RETRY_AFTER, VARY,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::ws::{bearer_token, refuse};
use super::{Gateway, Refusal, Session};
use crate::auth::Claims;
use crate::protocol;

/// Query parameters of `/sse` and `/poll` (and `?token=` on a publish); others are ignored.
#[derive(Default)]
pub(super) struct FallbackQuery {
    pub(super) token: Option<String>,
    pub(super) rooms: Option<String>,
    pub(super) timeout_ms: Option<String>,
}

impl FallbackQuery {
    /// From the decoded query pairs; a parameter given twice is refused.
    pub(super) fn from_pairs(pairs: Vec<(String, String)>) -> Result<FallbackQuery, Refusal> {
        let mut query = FallbackQuery::default();
        for (key, value) in pairs {
            let slot = match key.as_str() {
                "token" => &mut query.token,
                "rooms" => &mut query.rooms,
                "timeout_ms" => &mut query.timeout_ms,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(invalid(format!("`{key}` is given twice")));
            }
        }
        Ok(query)
    }
}

/// The HTTP status that goes with a protocol error code.
pub(super) fn status_for(code: &str) -> StatusCode {
    match code {
        "unauthorized" | "token_expired" => StatusCode::UNAUTHORIZED,
        "forbidden" | "origin_not_allowed" => StatusCode::FORBIDDEN,
        "frame_too_large" => StatusCode::PAYLOAD_TOO_LARGE,
        "rate_limited" | "too_many_connections" => StatusCode::TOO_MANY_REQUESTS,
        "draining" | "unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        "not_configured" => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// A refusal as an HTTP response: its status and the error envelope.
pub(super) fn refusal_response(refusal: &Refusal) -> Response {
    let mut response = refuse(status_for(refusal.code), refusal.code, &refusal.message);
    if refusal.code == "rate_limited" || refusal.code == "draining" {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The token from `?token=` or `Authorization: Bearer`, verified.
pub(super) fn authenticate(
    gateway: &Gateway,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Claims, Refusal> {
    let token = query_token
        .map(str::to_owned)
        .or_else(|| bearer_token(headers))
        .ok_or_else(|| {
            Refusal::new(
                "unauthorized",
                "no token: pass ?token=<JWT> or Authorization: Bearer <JWT>",
            )
        })?;
    gateway
        .verifier
        .verify(&token)
        .map_err(|e| Refusal::new(e.code(), e.to_string()))
}

/// A keyset cursor: `(created_at, id)` of the last row of a page, opaque to clients.
pub(super) fn encode_cursor(created_at: &str, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}|{id}"))
}

pub(super) fn decode_cursor(cursor: &str) -> Option<(String, i64)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (created_at, id) = text.rsplit_once('|')?;
    time::OffsetDateTime::parse(created_at, &time::format_description::well_known::Rfc3339).ok()?;
    Some((created_at.to_owned(), id.parse().ok()?))
}

/// A room a client asks for, and the last seq it has seen there (`None`: from now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Wanted {
    pub(super) room: String,
    pub(super) since: Option<u64>,
}

pub(super) fn invalid(message: String) -> Refusal {
    Refusal::new("invalid_field", message)
}

pub(super) fn shown(item: &str) -> String {
    let mut shown: String = item.chars().take(64).collect();
    if shown.len() < item.len() {
        shown.push('…');
    }
    shown
}

/// Parses a cursor, `room` or `room@since` items separated by commas; `what` names the
/// parameter in error messages.
pub(super) fn parse_cursor(value: &str, what: &str) -> Result<Vec<Wanted>, Refusal> {
    if value.trim().is_empty() {
        return Err(invalid(format!(
            "`{what}` is empty: list rooms as room or room@since, separated by commas"
        )));
    }
    let mut seen = HashSet::new();
    let mut wanted = Vec::new();
    for item in value.split(',') {
        let (room, since) = match item.split_once('@') {
            Some((room, since)) => (room, Some(since)),
            None => (item, None),
        };
        if !protocol::valid_room(room) {
            return Err(invalid(format!(
                "`{what}`: {:?} is not a room name (1 to 200 characters of A-Z a-z 0-9 _ . : -)",
                shown(room)
            )));
        }
        let since = match since {
            None => None,
            Some(s) => match s.parse::<u64>() {
                Ok(n) if s.bytes().all(|b| b.is_ascii_digit()) => Some(n),
                _ => {
                    return Err(invalid(format!(
                        "`{what}`: {:?}: the part after @ must be the last seq seen, a \
                         non-negative integer",
                        shown(item)
                    )))
                }
            },
        };
        if !seen.insert(room) {
            return Err(invalid(format!("`{what}` lists {room} twice")));
        }
        wanted.push(Wanted {
            room: room.to_owned(),
            since,
        });
    }
    Ok(wanted)
}

/// The `rooms` parameter: a cursor of at most `max` rooms.
pub(super) fn parse_rooms(value: Option<&str>, max: usize) -> Result<Vec<Wanted>, Refusal> {
    let value = value.ok_or_else(|| {
        invalid("`rooms` is required: list rooms as room or room@since, separated by commas".into())
    })?;
    if value.split(',').count() > max {
        return Err(Refusal::new(
            "too_many_rooms",
            format!("a connection may join at most {max} rooms"),
        ));
    }
    parse_cursor(value, "rooms")
}

/// Where a stream or a chain of polls is in each of its rooms.
pub(super) struct Cursor {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

struct Entry {
    room: String,
    /// The last seq delivered (or asked for with `since`); `None` until a join without
    /// `since` is acknowledged.
    position: Option<u64>,
    refused: bool,
}

impl Cursor {
    pub(super) fn new(wanted: &[Wanted]) -> Cursor {
        Cursor {
            entries: wanted
                .iter()
                .map(|w| Entry {
                    room: w.room.clone(),
                    position: w.since,
                    refused: false,
                })
                .collect(),
            index: wanted
                .iter()
                .enumerate()
                .map(|(i, w)| (w.room.clone(), i))
                .collect(),
        }
    }

    /// Takes in a frame on its way to the client; returns whether the cursor changed.
    pub(super) fn apply(&mut self, seen: &Seen<'_>) -> bool {
        let (room, update, seq): (&str, fn(&mut Entry, u64) -> bool, u64) = match seen {
            Seen::Message { room, seq } => (&**room, advance, *seq),
            Seen::Joined { room, seq } => (&**room, joined, *seq),
            Seen::ResumeFailed { room, seq } => (&**room, reset, *seq),
            Seen::Refused { room } => (&**room, refuse_room, 0),
            Seen::Reconnect { .. } | Seen::Other => return false,
        };
        match self.index.get(room) {
            Some(&i) => update(&mut self.entries[i], seq),
            None => false,
        }
    }

    /// `room@seq,…` over the rooms not refused; rooms without a position are left out, or
    /// written bare with `bare`.
    pub(super) fn render(&self, bare: bool) -> String {
        let mut out = String::new();
        for entry in self.entries.iter().filter(|e| !e.refused) {
            if entry.position.is_none() && !bare {
                continue;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&entry.room);
            if let Some(position) = entry.position {
                out.push('@');
                out.push_str(&position.to_string());
            }
        }
        out
    }
}

fn advance(entry: &mut Entry, seq: u64) -> bool {
    let changed = entry.position.is_none_or(|p| p < seq);
    if changed {
        entry.position = Some(seq);
    }
    changed
}

fn joined(entry: &mut Entry, seq: u64) -> bool {
    if entry.position.is_some() {
        return false;
    }
    entry.position = Some(seq);
    true
}

fn reset(entry: &mut Entry, seq: u64) -> bool {
    entry.position = Some(seq);
    true
}

fn refuse_room(entry: &mut Entry, _: u64) -> bool {
    entry.refused = true;
    true
}

/// What a server frame means for a cursor.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen<'a> {
    Message {
        room: Cow<'a, str>,
        seq: u64,
    },
    /// A successful join (`ack` of `join:<room>`), with the room's seq at that moment.
    Joined {
        room: String,
        seq: u64,
    },
    /// A refused join (`ack` of `join:<room>` with status error).
    Refused {
        room: String,
    },
    ResumeFailed {
        room: String,
        seq: u64,
    },
    Reconnect {
        retry_after_ms: u64,
    },
    Other,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct AckData {
    original_id: String,
    status: String,
    #[serde(default)]
    result: Option<SeqOf>,
}

#[derive(Deserialize)]
struct SeqOf {
    #[serde(default)]
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct RoomSeq {
    room: String,
    seq: u64,
}

#[derive(Deserialize)]
struct ReconnectData {
    #[serde(default)]
    retry_after_ms: u64,
}

/// The id a fallback transport gives the join of `room`.
pub(super) fn join_id(room: &str) -> String {
    format!("join:{room}")
}

/// A server frame's `type` and what it means for a cursor.
pub(super) fn classify(frame: &str) -> (Cow<'_, str>, Seen<'_>) {
    let Ok(head) = serde_json::from_str::<Head<'_>>(frame) else {
        return (Cow::Borrowed("message"), Seen::Other);
    };
    let data = head.data.map_or("null", RawValue::get);
    let seen = match &*head.kind {
        "room:message" => match (head.room, head.seq) {
            (Some(room), Some(seq)) => Seen::Message { room, seq },
            _ => Seen::Other,
        },
        "ack" => match serde_json::from_str::<AckData>(data) {
            Ok(ack) => match ack.original_id.strip_prefix("join:") {
                Some(room) if ack.status == "success" => match ack.result.and_then(|r| r.seq) {
                    Some(seq) => Seen::Joined {
                        room: room.to_owned(),
                        seq,
                    },
                    None => Seen::Other,
                },
                Some(room) => Seen::Refused {
                    room: room.to_owned(),
                },
                None => Seen::Other,
            },
            Err(_) => Seen::Other,
        },
        "resume:failed" => match serde_json::from_str::<RoomSeq>(data) {
            Ok(r) => Seen::ResumeFailed {
                room: r.room,
                seq: r.seq,
            },
            Err(_) => Seen::Other,
        },
        "system:reconnect" => Seen::Reconnect {
            retry_after_ms: serde_json::from_str::<ReconnectData>(data)
                .map_or(1_000, |d| d.retry_after_ms),
        },
        _ => Seen::Other,
    };
    (head.kind, seen)
}

/// Checks rooms in order until one may be joined; returns the refusals met on the way, or the
/// first refusal when no room may be joined (the request is then refused as a whole).
pub(super) async fn first_allowed(
    session: &Session,
    wanted: &[Wanted],
) -> Result<HashMap<String, Refusal>, Refusal> {
    let mut refused = HashMap::new();
    let mut first = None;
    for w in wanted {
        match session.check_join(&w.room).await {
            Ok(()) => return Ok(refused),
            Err(refusal) => {
                first.get_or_insert_with(|| refusal.clone());
                refused.insert(w.room.clone(), refusal);
            }
        }
    }
    Err(first.unwrap_or_else(|| Refusal::new("invalid_field", "no rooms")))
}

/// Joins every wanted room through the session, rooms without `since` first (they only need
/// an ack), each with id `join:<room>`; a refusal becomes an error `ack` in the outbox. Stops
/// early once the outbox is closed.
pub(super) async fn join_all(
    session: &mut Session,
    wanted: &[Wanted],
    refused: &HashMap<String, Refusal>,
) {
    let order = wanted
        .iter()
        .filter(|w| w.since.is_none())
        .chain(wanted.iter().filter(|w| w.since.is_some()));
    for w in order {
        if session.outbox.is_closed() {
            return;
        }
        let id = join_id(&w.room);
        let result = match refused.get(&w.room) {
            Some(refusal) => Err(refusal.clone()),
            None => session.join(&w.room, w.since, Some(&id)).await.map(|_| ()),
        };
        if let Err(refusal) = result {
            session.send(protocol::ack_error(&id, refusal.code, &refusal.message));
        }
    }
}

/// When a token expires, as a tokio instant.
pub(super) fn expiry(expires_at: i64) -> tokio::time::Instant {
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let left = expires_at.saturating_sub(now_unix).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_secs(left.min(10 * 365 * 24 * 3600))
}

/// Browser access to the HTTP transports: refuses origins outside the allow-list (as `/ws`
/// does), answers CORS preflights, and lets allowed origins read responses.
pub(super) async fn cors(
    State(gateway): State<Arc<Gateway>>,
    request: Request,
    next: Next,
) -> Response {
    let origin = request.headers().get(ORIGIN).cloned();
    if let Some(origin) = &origin {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| gateway.settings.origin_allowed(Some(o)));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                "this origin may not connect",
            );
        }
    }
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        StatusCode::NO_CONTENT.into_response()
    } else {
        next.run(request).await
    };
    if let Some(origin) = origin {
        let headers = response.headers_mut();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.append(VARY, HeaderValue::from_static("origin"));
        if preflight {
            headers.insert(
                ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, PUT, DELETE, OPTIONS"),
            );
            headers.insert(
                ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type, last-event-id"),
            );
            headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        }
    }
    response
}

/// `OPTIONS` on the HTTP transports (the [`cors`] layer adds the headers).
pub(super) async fn preflight() -> StatusCode {
    StatusCode::NO_CONTENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyset_cursors_round_trip_and_garbage_is_refused() {
        let cursor = encode_cursor("2026-11-29T01:02:03.456789+00:00", 42);
        assert_eq!(
            decode_cursor(&cursor),
            Some(("2026-11-29T01:02:03.456789+00:00".to_owned(), 42))
        );
        for bad in [
            "",
            "!!",
            "bm90IGEgY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("yesterday|1"),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_parse_and_refuse_with_clear_messages() {
        let wanted = parse_cursor("trip:42@17,trip:43", "rooms").unwrap();
        assert_eq!(
            wanted,
            [
                Wanted {
                    room: "trip:42".into(),
                    since: Some(17)
                },
                Wanted {
                    room: "trip:43".into(),
                    since: None
                }
            ]
        );
        for bad in [
            "", " ", "bad room", "r@x", "r@-1", "r@+1", "r@", "a,,b", "a,", "a,a@1", "@1",
        ] {
            let refusal = parse_cursor(bad, "rooms").unwrap_err();
            assert_eq!(refusal.code, "invalid_field", "{bad:?}");
            assert!(
                refusal.message.contains("`rooms`"),
                "{bad:?}: {}",
                refusal.message
            );
        }
        assert_eq!(
            parse_rooms(Some("a,b,c"), 2).unwrap_err().code,
            "too_many_rooms"
        );
        assert_eq!(parse_rooms(None, 2).unwrap_err().code, "invalid_field");
    }

    #[test]
    fn the_cursor_follows_acks_messages_and_resume_failures() {
        let wanted = parse_cursor("a@5,b,c", "rooms").unwrap();
        let mut cursor = Cursor::new(&wanted);
        assert_eq!(cursor.render(false), "a@5");
        assert_eq!(cursor.render(true), "a@5,b,c");
        let frames = [
            protocol::ack_ok("join:b", serde_json::json!({"room": "b", "seq": 9})),
            protocol::ack_error("join:c", "forbidden", "no"),
            protocol::ack_ok("join:a", serde_json::json!({"room": "a", "seq": 7})),
            protocol::room_message("a", 6, "e", "{}", None, "t"),
            protocol::room_message("b", 10, "e", "{}", None, "t"),
        ];
        let changed: Vec<bool> = frames
            .iter()
            .map(|f| cursor.apply(&classify(f).1))
            .collect();
        assert_eq!(changed, [true, true, false, true, true]);
        assert_eq!(cursor.render(true), "a@6,b@10");
        cursor.apply(&classify(&protocol::resume_failed("a", 6, 3)).1);
        assert_eq!(cursor.render(false), "a@3,b@10");
        let reconnect = protocol::system_reconnect("draining", 250);
        let (kind, seen) = classify(&reconnect);
        assert_eq!(kind, "system:reconnect");
        assert_eq!(
            seen,
            Seen::Reconnect {
                retry_after_ms: 250
            }
        );
    }
}
