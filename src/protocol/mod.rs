//! The client protocol's JSON envelope (seed §3.2), parsed and written without I/O.
//!
//! Every frame is `{"type", "id", "timestamp", "data", "metadata"}`. Client frames are parsed
//! into [`ClientFrame`]; anything malformed yields a [`ProtocolError`] with a documented code
//! and changes nothing. Server frames are written once per event and shared by every
//! subscriber. `docs/protocol.md` documents every event.

mod encode;
mod parse;

pub use encode::{
    ack_error, ack_ok, connected, doc_awareness, doc_closed, doc_sync, doc_update, error_frame,
    notification_badge, notification_marked, notification_new, now_rfc3339,
    pg_timestamp_to_rfc3339, ping, pong, presence_state, presence_typing, presence_update,
    resume_failed, room_broadcast, room_left, room_message, system_reconnect, NotificationEvent,
};
pub use parse::{parse_client_frame, ClientFrame, Command, MarkAction, Metadata, MAX_MARK_IDS};

/// Longest room name; rooms match `[A-Za-z0-9_.:-]{1,200}` (also enforced by the database).
pub const MAX_ROOM_LEN: usize = 200;
/// Longest event name.
pub const MAX_EVENT_LEN: usize = 100;
/// Longest client message id.
pub const MAX_ID_LEN: usize = 128;

/// Why a client frame or request was refused; `code()` is the documented protocol code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the frame is not a JSON object with a string `type`: {0}")]
    BadFrame(String),
    #[error("unknown event type {0:?}")]
    UnknownEvent(String),
    #[error("invalid `{field}`: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("the frame is larger than {limit} bytes")]
    FrameTooLarge { limit: usize },
    #[error("binary frames are not part of this protocol")]
    BinaryFrame,
}

impl ProtocolError {
    pub fn code(&self) -> &'static str {
        match self {
            ProtocolError::BadFrame(_) | ProtocolError::BinaryFrame => "bad_frame",
            ProtocolError::UnknownEvent(_) => "unknown_event",
            ProtocolError::InvalidField { .. } => "invalid_field",
            ProtocolError::FrameTooLarge { .. } => "frame_too_large",
        }
    }
}

/// Whether `room` is a valid room name.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// Whether `event` is a valid event name for `room:message`.
pub fn valid_event(event: &str) -> bool {
    !event.is_empty()
        && event.len() <= MAX_EVENT_LEN
        && event
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names() {
        assert!(valid_room("trip:42"));
        assert!(valid_room("team.7_a-b"));
        for bad in ["", "a b", "trip:*", "x,y", "a@1", "é", &"r".repeat(201)] {
            assert!(!valid_room(bad), "{bad:?}");
        }
    }
}
