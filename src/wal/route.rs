//! From a decoded row change to what the hub does with it. Pure: no I/O.

use replication::pgoutput::{Relation, Tuple, Value};
use replication::Change;

use crate::hub::Frame;
use crate::protocol;

/// What a committed change means for connected clients.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A new event in a room's log.
    Message {
        room: String,
        seq: u64,
        frame: Frame,
    },
    /// A membership row was deleted: the user may have to leave the room.
    MemberRemoved { room: String, user: String },
    /// A presence change (see [`crate::presence`]).
    Presence(crate::presence::Routed),
    /// A stored Yjs update of a document.
    DocUpdate {
        doc: String,
        seq: i64,
        origin: Option<String>,
        update: Vec<u8>,
    },
    /// A new notification for a user: an event of their notification log.
    Notification {
        user: String,
        seq: u64,
        frame: Frame,
    },
    /// A user's notification was read or dismissed.
    NotificationMarked {
        user: String,
        id: i64,
        action: &'static str,
    },
    /// A user's unread count changed.
    Badge { user: String, unread: i64 },
    /// A recorded activity, for the hub rooms of its audience.
    Activity(crate::activity::Routed),
    /// An inventory state, reservation outcome or booking status.
    Inventory(crate::inventory::Routed),
}

fn column<'a>(relation: &Relation, tuple: &'a Tuple, name: &str) -> Option<&'a Value> {
    let index = relation.columns.iter().position(|c| c.name == name)?;
    tuple.0.get(index)
}

fn text<'a>(relation: &Relation, tuple: &'a Tuple, name: &str) -> Option<&'a str> {
    column(relation, tuple, name).and_then(Value::as_str)
}

/// Routes a change; changes to other tables, and rows that lack what routing needs, give
/// `None` (the tables stay the source of truth either way).
pub fn route(change: &Change) -> Option<Routed> {
    match change {
        Change::Insert { relation, .. }
        | Change::Update { relation, .. }
        | Change::Delete { relation, .. }
            if crate::inventory::streams(relation) =>
        {
            crate::inventory::route(change).map(Routed::Inventory)
        }
        Change::Insert { relation, new } if is(relation, "messages") => {
            let room = text(relation, new, "room")?;
            let seq: u64 = text(relation, new, "seq")?.parse().ok()?;
            let event = text(relation, new, "event")?;
            let payload = text(relation, new, "payload")?;
            let sender = text(relation, new, "sender");
            let created_at = protocol::pg_timestamp_to_rfc3339(text(relation, new, "created_at")?);
            let frame = protocol::room_message(room, seq, event, payload, sender, &created_at);
            Some(Routed::Message {
                room: room.to_owned(),
                seq,
                frame: Frame::from(frame),
            })
        }
        Change::Insert { relation, new } if is(relation, "doc_updates") => {
            Some(Routed::DocUpdate {
                doc: text(relation, new, "doc")?.to_owned(),
                seq: text(relation, new, "seq")?.parse().ok()?,
                origin: text(relation, new, "origin").map(str::to_owned),
                update: bytea(text(relation, new, "update")?)?,
            })
        }
        Change::Insert { relation, new } if is(relation, "activities") => {
            crate::activity::route(relation, new).map(Routed::Activity)
        }
        Change::Insert { relation, new } if is(relation, "notifications") => {
            notification(relation, new)
        }
        Change::Update { relation, new, .. } if is(relation, "notifications") => {
            let action = if text(relation, new, "dismissed_at").is_some() {
                "dismiss"
            } else if text(relation, new, "read_at").is_some() {
                "read"
            } else {
                // Joined the feed late (a failed push fell back to in-app).
                return notification(relation, new);
            };
            Some(Routed::NotificationMarked {
                user: text(relation, new, "user_id")?.to_owned(),
                id: text(relation, new, "id")?.parse().ok()?,
                action,
            })
        }
        // The row is inserted with unread 0 and updated in the same transaction.
        Change::Update { relation, new, .. } if is(relation, "notification_badges") => {
            Some(Routed::Badge {
                user: text(relation, new, "user_id")?.to_owned(),
                unread: text(relation, new, "unread")?.parse().ok()?,
            })
        }
        Change::Insert { relation, .. }
        | Change::Update { relation, .. }
        | Change::Delete { relation, .. }
            if crate::presence::streams(relation) =>
        {
            crate::presence::route(change).map(Routed::Presence)
        }
        Change::Delete { relation, key, old } if is(relation, "room_members") => {
            let row = old.as_ref().or(key.as_ref())?;
            Some(Routed::MemberRemoved {
                room: text(relation, row, "room")?.to_owned(),
                user: text(relation, row, "user_id")?.to_owned(),
            })
        }
        _ => None,
    }
}

/// A notification row as an event of its user's feed; `None` for one outside the feed (no
/// seq: not in-app).
fn notification(relation: &Relation, new: &Tuple) -> Option<Routed> {
    let user = text(relation, new, "user_id")?;
    let seq: u64 = text(relation, new, "seq")?.parse().ok()?;
    let created_at = protocol::pg_timestamp_to_rfc3339(text(relation, new, "created_at")?);
    let expires_at = protocol::pg_timestamp_to_rfc3339(text(relation, new, "expires_at")?);
    let frame = protocol::notification_new(&protocol::NotificationEvent {
        id: text(relation, new, "id")?.parse().ok()?,
        seq,
        kind: text(relation, new, "type")?,
        priority: text(relation, new, "priority")?,
        title: text(relation, new, "title")?,
        body: text(relation, new, "body")?,
        payload: text(relation, new, "payload")?,
        created_at: &created_at,
        expires_at: &expires_at,
        read_at: None,
        dismissed_at: None,
    });
    Some(Routed::Notification {
        user: user.to_owned(),
        seq,
        frame: Frame::from(frame),
    })
}

/// PostgreSQL's text form of a `bytea` (`\\x` and hex digits).
fn bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    hex.chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

fn is(relation: &Relation, table: &str) -> bool {
    relation.namespace == "realtime" && relation.name == table
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{relation, t};
    use super::*;

    #[test]
    fn message_inserts_become_room_frames() {
        let rel = relation(
            "messages",
            &[
                "room",
                "seq",
                "event",
                "payload",
                "sender",
                "idempotency_key",
                "created_at",
            ],
        );
        let new = Tuple(vec![
            t("trip:42"),
            t("7"),
            t("itinerary.updated"),
            t(r#"{"a": 1}"#),
            Value::Null,
            Value::Null,
            t("2026-11-28 10:00:00.5+00"),
        ]);
        let Some(Routed::Message { room, seq, frame }) =
            route(&Change::Insert { relation: rel, new })
        else {
            panic!("not routed");
        };
        assert_eq!((room.as_str(), seq), ("trip:42", 7));
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["data"]["payload"]["a"], 1);
        assert_eq!(v["timestamp"], "2026-11-28T10:00:00.5+00:00");
    }

    #[test]
    fn member_deletes_are_routed_and_other_tables_ignored() {
        let rel = relation("room_members", &["room", "user_id", "role", "created_at"]);
        let key = Tuple(vec![t("r"), t("alice"), Value::Null, Value::Null]);
        assert_eq!(
            route(&Change::Delete {
                relation: rel.clone(),
                key: Some(key),
                old: None
            }),
            Some(Routed::MemberRemoved {
                room: "r".into(),
                user: "alice".into()
            })
        );
        let other = relation("other", &["room"]);
        assert_eq!(
            route(&Change::Insert {
                relation: other,
                new: Tuple(vec![t("r")])
            }),
            None
        );
        let bad = relation("messages", &["room"]);
        assert_eq!(
            route(&Change::Insert {
                relation: bad,
                new: Tuple(vec![t("r")])
            }),
            None
        );
    }

    const NOTIFICATION_COLUMNS: [&str; 14] = [
        "id",
        "user_id",
        "seq",
        "type",
        "channels",
        "priority",
        "payload",
        "title",
        "body",
        "idempotency_key",
        "created_at",
        "expires_at",
        "read_at",
        "dismissed_at",
    ];

    fn notification_row(seq: Value, read_at: Value, dismissed_at: Value) -> Tuple {
        Tuple(vec![
            t("1042"),
            t("alice"),
            seq,
            t("booking_confirmed"),
            t("{in_app}"),
            t("high"),
            t(r#"{"booking_id": "BK-1"}"#),
            t("Booking confirmed"),
            t("Your booking BK-1 is confirmed."),
            Value::Null,
            t("2026-11-28 10:00:00.5+00"),
            t("2026-12-05 10:00:00.5+00"),
            read_at,
            dismissed_at,
        ])
    }

    #[test]
    fn notifications_in_the_feed_become_frames_of_their_users_log() {
        let rel = relation("notifications", &NOTIFICATION_COLUMNS);
        let new = notification_row(t("44"), Value::Null, Value::Null);
        let Some(Routed::Notification { user, seq, frame }) = route(&Change::Insert {
            relation: rel.clone(),
            new: new.clone(),
        }) else {
            panic!("not routed");
        };
        assert_eq!((user.as_str(), seq), ("alice", 44));
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["type"], "notification:new");
        assert_eq!(v["data"]["id"], 1042);
        assert_eq!(v["data"]["payload"]["booking_id"], "BK-1");
        assert_eq!(v["data"]["created_at"], "2026-11-28T10:00:00.5+00:00");
        // Outside the feed (no seq): nothing for clients.
        let outside = notification_row(Value::Null, Value::Null, Value::Null);
        assert_eq!(
            route(&Change::Insert {
                relation: rel.clone(),
                new: outside
            }),
            None
        );
        // An update that gave it a seq (push fell back to in-app) is a new feed event.
        let update = |new| Change::Update {
            relation: rel.clone(),
            key: None,
            old: None,
            new,
        };
        assert!(matches!(
            route(&update(new)),
            Some(Routed::Notification { seq: 44, .. })
        ));
        assert_eq!(
            route(&update(notification_row(
                t("44"),
                t("2026-11-28 11:00:00+00"),
                Value::Null
            ))),
            Some(Routed::NotificationMarked {
                user: "alice".into(),
                id: 1042,
                action: "read"
            })
        );
        assert_eq!(
            route(&update(notification_row(
                t("44"),
                t("2026-11-28 11:00:00+00"),
                t("2026-11-28 12:00:00+00")
            ))),
            Some(Routed::NotificationMarked {
                user: "alice".into(),
                id: 1042,
                action: "dismiss"
            })
        );
    }

    #[test]
    fn badge_updates_are_routed_and_its_first_insert_is_not() {
        let rel = relation("notification_badges", &["user_id", "last_seq", "unread"]);
        let row = Tuple(vec![t("alice"), t("3"), t("2")]);
        assert_eq!(
            route(&Change::Update {
                relation: rel.clone(),
                key: None,
                old: None,
                new: row.clone()
            }),
            Some(Routed::Badge {
                user: "alice".into(),
                unread: 2
            })
        );
        assert_eq!(
            route(&Change::Insert {
                relation: rel,
                new: row
            }),
            None
        );
    }
}
