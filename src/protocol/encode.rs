use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// PostgreSQL's text form of a `timestamptz` (`2026-11-28 10:00:00.123456+00`, or with a
/// `+05:30` offset) as RFC 3339 (`2026-11-28T10:00:00.123456+00:00`).
pub fn pg_timestamp_to_rfc3339(pg: &str) -> String {
    let mut out = pg.replacen(' ', "T", 1);
    let tail = out
        .rfind(['+', '-'])
        .filter(|&i| i > 10)
        .map(|i| out.len() - i);
    if tail == Some(3) {
        out.push_str(":00");
    }
    out
}

fn envelope(kind: &str, id: &str, data: Value) -> String {
    json!({ "type": kind, "id": id, "timestamp": now_rfc3339(), "data": data }).to_string()
}

fn server_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A `room:message` event, written once and sent as is to every subscriber. `payload` is the
/// stored JSON text and is embedded without re-parsing.
pub fn room_message(
    room: &str,
    seq: u64,
    event: &str,
    payload: &str,
    sender: Option<&str>,
    created_at: &str,
) -> String {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut out = String::with_capacity(160 + room.len() * 2 + event.len() + payload.len());
    out.push_str(r#"{"type":"room:message","id":"#);
    out.push_str(&quoted(&format!("{room}:{seq}")));
    out.push_str(r#","timestamp":"#);
    out.push_str(&quoted(created_at));
    out.push_str(r#","room":"#);
    out.push_str(&quoted(room));
    out.push_str(r#","seq":"#);
    out.push_str(&seq.to_string());
    out.push_str(r#","data":{"event":"#);
    out.push_str(&quoted(event));
    out.push_str(r#","payload":"#);
    out.push_str(payload);
    out.push_str(r#","sender":"#);
    out.push_str(&sender.map_or_else(|| "null".into(), quoted));
    out.push_str("}}");
    out
}

/// A stored notification, as a `notification:new` event sends it.
#[derive(Debug, Clone, Copy)]
pub struct NotificationEvent<'a> {
    pub id: i64,
    pub seq: u64,
    pub kind: &'a str,
    pub priority: &'a str,
    pub title: &'a str,
    pub body: &'a str,
    /// The stored JSON text of the payload, embedded without re-parsing.
    pub payload: &'a str,
    /// RFC 3339.
    pub created_at: &'a str,
    pub expires_at: &'a str,
    /// RFC 3339, when replayed after the user read or dismissed it.
    pub read_at: Option<&'a str>,
    pub dismissed_at: Option<&'a str>,
}

/// A `notification:new` event (live or replayed), written once per notification.
pub fn notification_new(n: &NotificationEvent<'_>) -> String {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    let mut out = String::with_capacity(256 + n.title.len() + n.body.len() + n.payload.len());
    out.push_str(r#"{"type":"notification:new","id":"#);
    out.push_str(&quoted(&format!("notification:{}", n.id)));
    out.push_str(r#","timestamp":"#);
    out.push_str(&quoted(n.created_at));
    out.push_str(r#","seq":"#);
    out.push_str(&n.seq.to_string());
    out.push_str(r#","data":{"id":"#);
    out.push_str(&n.id.to_string());
    out.push_str(r#","seq":"#);
    out.push_str(&n.seq.to_string());
    for (key, value) in [
        ("type", n.kind),
        ("priority", n.priority),
        ("title", n.title),
        ("body", n.body),
    ] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        out.push_str(&quoted(value));
    }
    out.push_str(r#","payload":"#);
    out.push_str(n.payload);
    out.push_str(r#","created_at":"#);
    out.push_str(&quoted(n.created_at));
    out.push_str(r#","expires_at":"#);
    out.push_str(&quoted(n.expires_at));
    for (key, value) in [("read_at", n.read_at), ("dismissed_at", n.dismissed_at)] {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        out.push_str(&value.map_or_else(|| "null".into(), quoted));
    }
    out.push_str("}}");
    out
}

/// `notification:badge`: the user's unread count changed.
pub fn notification_badge(unread: i64) -> String {
    envelope(
        "notification:badge",
        &server_id(),
        json!({ "unread": unread }),
    )
}

/// `notification:read` or `notification:dismiss` from the server: another device (or a
/// service) marked these notifications.
pub fn notification_marked(action: &str, ids: &[i64]) -> String {
    envelope(
        &format!("notification:{action}"),
        &server_id(),
        json!({ "ids": ids }),
    )
}

/// A `room:broadcast` signal: like a room message but ephemeral, so without a seq.
pub fn room_broadcast(room: &str, event: &str, payload: &str, sender: &str) -> String {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
    format!(
        r#"{{"type":"room:broadcast","timestamp":{},"room":{},"data":{{"event":{},"payload":{payload},"sender":{}}}}}"#,
        quoted(&now_rfc3339()),
        quoted(room),
        quoted(event),
        quoted(sender),
    )
}

pub fn ack_ok(original_id: &str, result: Value) -> String {
    envelope(
        "ack",
        &server_id(),
        json!({ "original_id": original_id, "status": "success", "result": result }),
    )
}

pub fn ack_error(original_id: &str, code: &str, message: &str) -> String {
    envelope(
        "ack",
        &server_id(),
        json!({
            "original_id": original_id,
            "status": "error",
            "error": { "code": code, "message": message },
        }),
    )
}

/// An error that is not the answer to an identifiable client message.
pub fn error_frame(code: &str, message: &str) -> String {
    envelope(
        "error",
        &server_id(),
        json!({ "code": code, "message": message }),
    )
}

pub fn connected(connection_id: u64, user: &str, heartbeat_ms: u64) -> String {
    envelope(
        "system:connected",
        &server_id(),
        json!({ "connection_id": connection_id.to_string(), "user": user, "heartbeat_interval_ms": heartbeat_ms }),
    )
}

/// `since` is older than what the server can replay: reload the room's state, then carry on
/// from `seq`.
pub fn resume_failed(room: &str, since: u64, seq: u64) -> String {
    envelope(
        "resume:failed",
        &server_id(),
        json!({ "room": room, "since": since, "seq": seq, "reason": "history_unavailable" }),
    )
}

/// The server removed the connection from a room.
pub fn room_left(room: &str, reason: &str) -> String {
    envelope(
        "room:leave",
        &server_id(),
        json!({ "room": room, "reason": reason }),
    )
}

pub fn system_reconnect(reason: &str, retry_after_ms: u64) -> String {
    envelope(
        "system:reconnect",
        &server_id(),
        json!({ "reason": reason, "retry_after_ms": retry_after_ms }),
    )
}

pub fn ping() -> String {
    envelope("ping", &server_id(), Value::Null)
}

pub fn pong() -> String {
    envelope("pong", &server_id(), Value::Null)
}

/// `doc:sync`: the changes a `doc:open` lacked (`update`) and the server's state vector, both
/// base64 Yjs v1 encodings, plus the awareness states of the other editors if any.
pub fn doc_sync(doc: &str, update: &str, state_vector: &str, awareness: Option<&str>) -> String {
    envelope(
        "doc:sync",
        &server_id(),
        json!({ "doc": doc, "update": update, "state_vector": state_vector, "awareness": awareness }),
    )
}

/// `doc:update`: stored changes of a document (base64 Yjs v1 update).
pub fn doc_update(doc: &str, update: &str) -> String {
    envelope(
        "doc:update",
        &server_id(),
        json!({ "doc": doc, "update": update }),
    )
}

/// `doc:closed`: the server closed a document for this connection (`access_revoked`).
pub fn doc_closed(doc: &str, reason: &str) -> String {
    envelope(
        "doc:closed",
        &server_id(),
        json!({ "doc": doc, "reason": reason }),
    )
}

/// `doc:awareness`: editors' awareness states (base64 y-protocols awareness update).
pub fn doc_awareness(doc: &str, update: &str) -> String {
    envelope(
        "doc:awareness",
        &server_id(),
        json!({ "doc": doc, "update": update }),
    )
}

/// `presence:update`: a user's status as others see it. `version` counts the user's changes
/// (keep the highest); None when the user left the viewer's sight (a block).
pub fn presence_update(
    user: &str,
    status: &str,
    last_seen: Option<&str>,
    version: Option<u64>,
) -> String {
    envelope(
        "presence:update",
        &server_id(),
        json!({ "user": user, "status": status, "last_seen": last_seen, "version": version }),
    )
}

/// `presence:typing`: `user` is (or stopped) typing in `room`.
pub fn presence_typing(room: &str, user: &str, typing: bool) -> String {
    envelope(
        "presence:typing",
        &server_id(),
        json!({ "room": room, "user": user, "typing": typing }),
    )
}

/// `presence:state`: the answer to a `presence:subscribe` sent without an id.
pub fn presence_state(data: Value) -> String {
    envelope("presence:state", &server_id(), data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_message_is_valid_json_with_raw_payload() {
        let frame = room_message(
            "trip:42",
            18,
            "itinerary.updated",
            r#"{"title": "東京", "n": [1, 2]}"#,
            Some("al\"ice"),
            "2026-11-28T10:00:00+00:00",
        );
        let v: Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(v["type"], "room:message");
        assert_eq!(v["id"], "trip:42:18");
        assert_eq!(v["room"], "trip:42");
        assert_eq!(v["seq"], 18);
        assert_eq!(v["data"]["payload"]["title"], "東京");
        assert_eq!(v["data"]["sender"], "al\"ice");
        let v: Value = serde_json::from_str(&room_message("r", 1, "e", "null", None, "t")).unwrap();
        assert_eq!(v["data"]["sender"], Value::Null);
    }

    #[test]
    fn broadcast_is_valid_json_without_seq() {
        let v: Value =
            serde_json::from_str(&room_broadcast("r", "typing", r#"{"on":true}"#, "bo\"b"))
                .unwrap();
        assert_eq!(v["type"], "room:broadcast");
        assert_eq!(v["data"]["payload"]["on"], true);
        assert_eq!(v["data"]["sender"], "bo\"b");
        assert!(v.get("seq").is_none());
    }

    #[test]
    fn converts_postgres_timestamps() {
        assert_eq!(
            pg_timestamp_to_rfc3339("2026-11-28 10:00:00.123456+00"),
            "2026-11-28T10:00:00.123456+00:00"
        );
        assert_eq!(
            pg_timestamp_to_rfc3339("2026-11-28 10:00:00+05:30"),
            "2026-11-28T10:00:00+05:30"
        );
        assert_eq!(
            pg_timestamp_to_rfc3339("2026-11-28 10:00:00-08"),
            "2026-11-28T10:00:00-08:00"
        );
    }

    #[test]
    fn acks_carry_the_original_id() {
        let v: Value = serde_json::from_str(&ack_error("m1", "forbidden", "no")).unwrap();
        assert_eq!(v["data"]["original_id"], "m1");
        assert_eq!(v["data"]["status"], "error");
        assert_eq!(v["data"]["error"]["code"], "forbidden");
        let v: Value = serde_json::from_str(&ack_ok("m2", json!({"seq": 3}))).unwrap();
        assert_eq!(v["data"]["result"]["seq"], 3);
    }
}
