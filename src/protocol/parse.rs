use serde::Deserialize;
use serde_json::value::RawValue;

use super::{valid_event, valid_room, ProtocolError, MAX_ID_LEN};

/// A client frame that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    /// The client's message id, echoed in `ack.original_id`; retries reuse it.
    pub id: Option<String>,
    pub metadata: Metadata,
    pub command: Command,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Metadata {
    pub client_id: Option<String>,
    pub correlation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// First-message authentication, when the token was not in the URL or a header.
    Auth {
        token: String,
    },
    /// A new token on a live connection, for the same user.
    AuthRefresh {
        token: String,
    },
    Join {
        room: String,
        since: Option<u64>,
    },
    Leave {
        room: String,
    },
    /// Publish into a room; `payload` is the raw JSON text, stored as given.
    Publish {
        room: String,
        event: String,
        payload: String,
    },
    /// An ephemeral signal (typing, cursor): relayed in memory to the room's other
    /// subscribers, never stored, no seq.
    Broadcast {
        room: String,
        event: String,
        payload: String,
    },
    /// Opens a collaborative document; `state_vector` (base64) is what the client has.
    DocOpen {
        doc: String,
        state_vector: Option<String>,
    },
    /// A Yjs update (base64, v1 encoding), acknowledged once stored.
    DocUpdate {
        doc: String,
        update: String,
    },
    /// A y-protocols awareness update (base64).
    DocAwareness {
        doc: String,
        update: String,
    },
    DocClose {
        doc: String,
    },
    /// `presence:*`: presence and typing (see [`crate::presence`]).
    Presence(crate::presence::PresenceCommand),
    /// Streams the user's notifications to this connection; `since` (the last notification
    /// seq the client saw) replays the missed ones first.
    NotificationSubscribe {
        since: Option<u64>,
    },
    /// Marks the user's notifications read or dismissed.
    NotificationMark {
        ids: Vec<i64>,
        action: MarkAction,
    },
    /// Streams the activities this connection may see: the user's own, their followees'
    /// public ones, and those of `rooms`.
    ActivitySubscribe {
        rooms: Vec<String>,
    },
    /// `inventory:*`: live inventory and reservations (see [`crate::inventory`]).
    Inventory(crate::inventory::InventoryCommand),
    Ping,
    Pong,
}

/// What `notification:read` and `notification:dismiss` do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkAction {
    Read,
    Dismiss,
}

impl MarkAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MarkAction::Read => "read",
            MarkAction::Dismiss => "dismiss",
        }
    }
}

/// Most notifications one `notification:read` or `notification:dismiss` may name.
pub const MAX_MARK_IDS: usize = 1000;

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

#[derive(Deserialize)]
struct TokenData {
    token: String,
}

#[derive(Deserialize)]
struct JoinData {
    room: String,
    #[serde(default)]
    since: Option<u64>,
}

#[derive(Deserialize)]
struct SubscribeData {
    #[serde(default)]
    since: Option<u64>,
}

#[derive(Deserialize)]
struct MarkData {
    ids: Vec<i64>,
}

fn mark(data: &str, action: MarkAction) -> Result<Command, ProtocolError> {
    let ids = data_as::<MarkData>(data)?.ids;
    if ids.is_empty() || ids.len() > MAX_MARK_IDS {
        return Err(ProtocolError::InvalidField {
            field: "data.ids",
            why: format!("1 to {MAX_MARK_IDS} notification ids"),
        });
    }
    Ok(Command::NotificationMark { ids, action })
}

#[derive(Deserialize)]
struct ActivityData {
    #[serde(default)]
    rooms: Vec<String>,
}

fn activity_subscribe(data: &str) -> Result<Command, ProtocolError> {
    let rooms = if data == "null" {
        Vec::new()
    } else {
        data_as::<ActivityData>(data)?.rooms
    };
    if rooms.len() > crate::activity::MAX_ROOMS {
        return Err(ProtocolError::InvalidField {
            field: "data.rooms",
            why: format!("at most {} rooms", crate::activity::MAX_ROOMS),
        });
    }
    let rooms = rooms.into_iter().map(room).collect::<Result<_, _>>()?;
    Ok(Command::ActivitySubscribe { rooms })
}

#[derive(Deserialize)]
struct LeaveData {
    room: String,
}

#[derive(Deserialize)]
struct DocData {
    doc: String,
    #[serde(default)]
    state_vector: Option<String>,
    #[serde(default)]
    update: Option<String>,
}

impl DocData {
    fn doc(&self) -> Result<String, ProtocolError> {
        if valid_room(&self.doc) {
            Ok(self.doc.clone())
        } else {
            Err(ProtocolError::InvalidField {
                field: "data.doc",
                why: "1 to 200 characters of A-Z a-z 0-9 _ . : -".into(),
            })
        }
    }

    fn update(self) -> Result<(String, String), ProtocolError> {
        let doc = self.doc()?;
        let update = self.update.ok_or(ProtocolError::InvalidField {
            field: "data.update",
            why: "a base64 string is required".into(),
        })?;
        Ok((doc, update))
    }
}

#[derive(Deserialize)]
struct PublishData<'a> {
    room: String,
    event: String,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
}

/// Parses one text frame from a client.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ProtocolError> {
    let raw: RawFrame<'_> =
        serde_json::from_str(text).map_err(|e| ProtocolError::BadFrame(e.to_string()))?;
    let id = match raw.id {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(ProtocolError::InvalidField {
                field: "id",
                why: format!("must be a string of 1 to {MAX_ID_LEN} bytes or a number"),
            })
        }
    };
    let data = raw.data.map(RawValue::get).unwrap_or("null");
    let command = match raw.kind.as_str() {
        "auth" => Command::Auth {
            token: data_as::<TokenData>(data)?.token,
        },
        "auth:refresh" => Command::AuthRefresh {
            token: data_as::<TokenData>(data)?.token,
        },
        "room:join" => {
            let join: JoinData = data_as(data)?;
            Command::Join {
                room: room(join.room)?,
                since: join.since,
            }
        }
        "room:leave" => Command::Leave {
            room: room(data_as::<LeaveData>(data)?.room)?,
        },
        "room:message" => {
            let (room, event, payload) = publish_data(data)?;
            Command::Publish {
                room,
                event,
                payload,
            }
        }
        "room:broadcast" => {
            let (room, event, payload) = publish_data(data)?;
            Command::Broadcast {
                room,
                event,
                payload,
            }
        }
        "doc:open" => {
            let open: DocData = data_as(data)?;
            Command::DocOpen {
                doc: open.doc()?,
                state_vector: open.state_vector,
            }
        }
        "doc:update" => {
            let (doc, update) = data_as::<DocData>(data)?.update()?;
            Command::DocUpdate { doc, update }
        }
        "doc:awareness" => {
            let (doc, update) = data_as::<DocData>(data)?.update()?;
            Command::DocAwareness { doc, update }
        }
        "doc:close" => Command::DocClose {
            doc: data_as::<DocData>(data)?.doc()?,
        },
        "presence:subscribe" | "presence:set" | "presence:activity" | "presence:typing" => {
            Command::Presence(crate::presence::parse_command(raw.kind.as_str(), data)?)
        }
        "notification:subscribe" => Command::NotificationSubscribe {
            since: if data == "null" {
                None
            } else {
                data_as::<SubscribeData>(data)?.since
            },
        },
        "notification:read" => mark(data, MarkAction::Read)?,
        "activity:subscribe" => activity_subscribe(data)?,
        "notification:dismiss" => mark(data, MarkAction::Dismiss)?,
        "inventory:subscribe"
        | "inventory:unsubscribe"
        | "inventory:reserve"
        | "inventory:release" => {
            Command::Inventory(crate::inventory::parse_command(raw.kind.as_str(), data)?)
        }
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        other => {
            let mut shown = other.to_owned();
            shown.truncate(64);
            return Err(ProtocolError::UnknownEvent(shown));
        }
    };
    Ok(ClientFrame {
        id,
        metadata: raw.metadata.unwrap_or_default(),
        command,
    })
}

fn publish_data(data: &str) -> Result<(String, String, String), ProtocolError> {
    let publish: PublishData<'_> = data_as(data)?;
    if !valid_event(&publish.event) {
        return Err(ProtocolError::InvalidField {
            field: "data.event",
            why: "1 to 100 characters of A-Z a-z 0-9 _ . : -".into(),
        });
    }
    let payload = publish
        .payload
        .map_or_else(|| "{}".to_owned(), |p| p.get().to_owned());
    Ok((room(publish.room)?, publish.event, payload))
}

fn data_as<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ProtocolError> {
    serde_json::from_str(data).map_err(|e| ProtocolError::InvalidField {
        field: "data",
        why: e.to_string(),
    })
}

fn room(room: String) -> Result<String, ProtocolError> {
    if valid_room(&room) {
        Ok(room)
    } else {
        Err(ProtocolError::InvalidField {
            field: "data.room",
            why: "1 to 200 characters of A-Z a-z 0-9 _ . : -".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_command() {
        let join = parse_client_frame(
            r#"{"type":"room:join","id":"m1","timestamp":"2026-01-19T10:00:00Z","data":{"room":"trip:42","since":17},"metadata":{"client_id":"c1","correlation_id":"k"}}"#,
        )
        .unwrap();
        assert_eq!(join.id.as_deref(), Some("m1"));
        assert_eq!(join.metadata.client_id.as_deref(), Some("c1"));
        assert_eq!(
            join.command,
            Command::Join {
                room: "trip:42".into(),
                since: Some(17)
            }
        );
        let publish = parse_client_frame(
            r#"{"type":"room:message","id":7,"data":{"room":"r","event":"itinerary.updated","payload":{"a": [1, "x"]}}}"#,
        )
        .unwrap();
        assert_eq!(publish.id.as_deref(), Some("7"));
        assert_eq!(
            publish.command,
            Command::Publish {
                room: "r".into(),
                event: "itinerary.updated".into(),
                payload: r#"{"a": [1, "x"]}"#.into()
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"ping"}"#).unwrap().command,
            Command::Ping
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"auth","data":{"token":"t"}}"#)
                .unwrap()
                .command,
            Command::Auth { token: "t".into() }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"notification:subscribe","data":{"since":4}}"#)
                .unwrap()
                .command,
            Command::NotificationSubscribe { since: Some(4) }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"notification:subscribe"}"#)
                .unwrap()
                .command,
            Command::NotificationSubscribe { since: None }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"notification:dismiss","data":{"ids":[3,9]}}"#)
                .unwrap()
                .command,
            Command::NotificationMark {
                ids: vec![3, 9],
                action: MarkAction::Dismiss
            }
        );
        let too_many = serde_json::json!({"type": "notification:read", "data": {"ids": vec![1; MAX_MARK_IDS + 1]}});
        assert!(parse_client_frame(&too_many.to_string()).is_err());
        assert_eq!(
            parse_client_frame(r#"{"type":"room:leave","data":{"room":"r"}}"#)
                .unwrap()
                .command,
            Command::Leave { room: "r".into() }
        );
    }

    #[test]
    fn rejects_malformed_frames_with_codes() {
        for (frame, code) in [
            ("", "bad_frame"),
            ("[]", "bad_frame"),
            ("{}", "bad_frame"),
            (r#"{"type":5}"#, "bad_frame"),
            ("{\"type\":\"ping\"", "bad_frame"),
            (r#"{"type":"room:explode"}"#, "unknown_event"),
            (r#"{"type":"room:join"}"#, "invalid_field"),
            (
                r#"{"type":"room:join","data":{"room":"bad room"}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"room:join","data":{"room":"r","since":-1}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"room:join","id":{},"data":{"room":"r"}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"room:message","data":{"room":"r","event":""}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"room:message","data":{"room":"r"}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"notification:read","data":{"ids":[]}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"notification:read","data":{"ids":["1"]}}"#,
                "invalid_field",
            ),
            (r#"{"type":"notification:dismiss"}"#, "invalid_field"),
            (
                r#"{"type":"activity:subscribe","data":{"rooms":["bad room"]}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"activity:subscribe","data":{"rooms":"trip:1"}}"#,
                "invalid_field",
            ),
            (
                r#"{"type":"notification:subscribe","data":{"since":-3}}"#,
                "invalid_field",
            ),
        ] {
            let err = parse_client_frame(frame).unwrap_err();
            assert_eq!(err.code(), code, "{frame}: {err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,200}") {
            let _ = parse_client_frame(&s);
        }

        #[test]
        fn arbitrary_values_in_a_join_never_panic(room in ".{0,40}", since in proptest::num::i64::ANY) {
            let frame = serde_json::json!({"type": "room:join", "data": {"room": room, "since": since}});
            let _ = parse_client_frame(&frame.to_string());
        }
    }
}
