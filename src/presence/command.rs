//! The `presence:*` client events, parsed without I/O.

use serde::Deserialize;

use super::Mode;
use crate::protocol::{valid_room, ProtocolError};

/// Longest device label a client may give.
pub const MAX_DEVICE_LEN: usize = 64;

/// A valid `presence:*` event from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceCommand {
    /// Watch the users this user may see; `device` labels this connection's session.
    Subscribe { device: Option<String> },
    /// The user's choice, for all their devices.
    Set { mode: Mode },
    /// An explicit sign of life (any other client frame counts too).
    Activity,
    /// Typing (or, with `typing: false`, no longer typing) in a joined room.
    Typing { room: String, typing: bool },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeData {
    #[serde(default)]
    device: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetData {
    status: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypingData {
    room: String,
    #[serde(default = "yes")]
    typing: bool,
}

fn yes() -> bool {
    true
}

fn invalid(field: &'static str, why: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidField {
        field,
        why: why.into(),
    }
}

/// `data`, which must be a JSON object.
fn object<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ProtocolError> {
    if !data.starts_with('{') {
        return Err(invalid("data", "a JSON object is required"));
    }
    serde_json::from_str(data).map_err(|e| invalid("data", e.to_string()))
}

/// `data` of an event that may omit it.
fn object_or_empty<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ProtocolError> {
    object(if data == "null" { "{}" } else { data })
}

/// Parses the `data` (raw JSON text, `null` when absent) of a `presence:*` event of type `kind`.
pub fn parse_command(kind: &str, data: &str) -> Result<PresenceCommand, ProtocolError> {
    match kind {
        "presence:subscribe" => {
            let device = object_or_empty::<SubscribeData>(data)?.device;
            if let Some(device) = &device {
                if device.is_empty()
                    || device.len() > MAX_DEVICE_LEN
                    || device.chars().any(char::is_control)
                {
                    return Err(invalid(
                        "data.device",
                        format!("1 to {MAX_DEVICE_LEN} bytes without control characters"),
                    ));
                }
            }
            Ok(PresenceCommand::Subscribe { device })
        }
        "presence:set" => {
            let status = object::<SetData>(data)?.status;
            let mode = match status.as_str() {
                "online" => Mode::Auto,
                "dnd" => Mode::Dnd,
                "invisible" => Mode::Invisible,
                _ => return Err(invalid("data.status", "online, dnd or invisible")),
            };
            Ok(PresenceCommand::Set { mode })
        }
        "presence:activity" => {
            object_or_empty::<serde_json::Map<String, serde_json::Value>>(data)?;
            Ok(PresenceCommand::Activity)
        }
        "presence:typing" => {
            let typing: TypingData = object(data)?;
            if !valid_room(&typing.room) {
                return Err(invalid(
                    "data.room",
                    "1 to 200 characters of A-Z a-z 0-9 _ . : -",
                ));
            }
            Ok(PresenceCommand::Typing {
                room: typing.room,
                typing: typing.typing,
            })
        }
        other => Err(ProtocolError::UnknownEvent(
            other.chars().take(64).collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_presence_event() {
        assert_eq!(
            parse_command("presence:subscribe", "null"),
            Ok(PresenceCommand::Subscribe { device: None })
        );
        assert_eq!(
            parse_command("presence:subscribe", r#"{"device":"iPhone"}"#),
            Ok(PresenceCommand::Subscribe {
                device: Some("iPhone".into())
            })
        );
        for (status, mode) in [
            ("online", Mode::Auto),
            ("dnd", Mode::Dnd),
            ("invisible", Mode::Invisible),
        ] {
            assert_eq!(
                parse_command("presence:set", &format!(r#"{{"status":"{status}"}}"#)),
                Ok(PresenceCommand::Set { mode })
            );
        }
        assert_eq!(
            parse_command("presence:activity", "null"),
            Ok(PresenceCommand::Activity)
        );
        assert_eq!(
            parse_command("presence:typing", r#"{"room":"trip:42"}"#),
            Ok(PresenceCommand::Typing {
                room: "trip:42".into(),
                typing: true
            })
        );
        assert_eq!(
            parse_command("presence:typing", r#"{"room":"trip:42","typing":false}"#),
            Ok(PresenceCommand::Typing {
                room: "trip:42".into(),
                typing: false
            })
        );
    }

    #[test]
    fn bad_input_is_an_invalid_field() {
        for (kind, data) in [
            ("presence:set", "null"),
            ("presence:set", r#"{"status":"away"}"#),
            ("presence:set", r#"{"status":"offline"}"#),
            ("presence:set", r#"{"status":"Online"}"#),
            ("presence:set", r#"{"status":7}"#),
            ("presence:set", r#"{"status":"dnd","extra":1}"#),
            ("presence:subscribe", r#"{"device":""}"#),
            ("presence:subscribe", r#"{"device":"a\nb"}"#),
            ("presence:subscribe", "[]"),
            ("presence:typing", "null"),
            ("presence:typing", r#"{"room":"bad room"}"#),
            ("presence:typing", r#"{"room":"@presence:bob"}"#),
            ("presence:typing", r#"{"room":"r","typing":"yes"}"#),
            ("presence:activity", "5"),
        ] {
            let err = parse_command(kind, data).unwrap_err();
            assert_eq!(err.code(), "invalid_field", "{kind} {data}: {err}");
        }
        let long = format!(r#"{{"device":"{}"}}"#, "d".repeat(MAX_DEVICE_LEN + 1));
        assert!(parse_command("presence:subscribe", &long).is_err());
    }
}
