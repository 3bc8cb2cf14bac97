//! The activity feed (seed §6.2): activities recorded in `realtime.activities` reach, live, the
//! connections allowed to see them, through hidden hub rooms:
//!
//! - `@activity:user:<user>`: everything the user did (their own feed, private included);
//! - `@activity:room:<room>`: collaborators and public activities of a room, for connections
//!   that may join the room;
//! - `@activity:by:<user>`: the user's public activities, for their followers.
//!
//! A connection asks with `activity:subscribe`; access is checked once then, like a room join.
//! One activity can reach a connection through two of its rooms (the actor watching their own
//! trip): clients drop duplicates by id. The feed over HTTP is the table, keyset-paginated.

use replication::pgoutput::{Relation, Tuple};
use serde_json::{json, Value};

/// Most rooms one `activity:subscribe` may name.
pub const MAX_ROOMS: usize = 50;
/// Most followees whose public activities one connection receives live.
pub const MAX_FOLLOWEES: i64 = 1000;

pub fn user_room(user: &str) -> String {
    format!("@activity:user:{user}")
}

pub fn room_room(room: &str) -> String {
    format!("@activity:room:{room}")
}

pub fn author_room(user: &str) -> String {
    format!("@activity:by:{user}")
}

/// A committed activity and the hub rooms it goes to.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub rooms: Vec<String>,
    pub frame: String,
}

/// Routes an inserted `realtime.activities` row; `None` if it lacks what routing needs.
pub fn route(relation: &Relation, new: &Tuple) -> Option<Routed> {
    let text = |name: &str| {
        let index = relation.columns.iter().position(|c| c.name == name)?;
        new.0.get(index)?.as_str()
    };
    let json_of = |name: &str| -> Value {
        text(name)
            .and_then(|t| serde_json::from_str(t).ok())
            .unwrap_or_else(|| json!({}))
    };
    let id: i64 = text("id")?.parse().ok()?;
    let actor_id = text("actor_id")?;
    let visibility = text("visibility")?;
    let room = text("room");
    let created_at = crate::protocol::pg_timestamp_to_rfc3339(text("created_at")?);
    let mut actor = json_of("actor");
    if let Some(fields) = actor.as_object_mut() {
        fields.insert("id".into(), json!(actor_id));
    }
    let data = json!({
        "id": id,
        "type": text("type")?,
        "actor": actor,
        "target": {
            "type": text("target_type"),
            "id": text("target_id"),
            "name": text("target_name"),
        },
        "room": room,
        "context": json_of("context"),
        "visibility": visibility,
        "created_at": created_at,
    });
    let frame = json!({
        "type": "activity:new",
        "id": format!("activity:{id}"),
        "timestamp": created_at,
        "data": data,
    })
    .to_string();
    let mut rooms = vec![user_room(actor_id)];
    match (visibility, room) {
        ("private", _) => {}
        ("collaborators", Some(room)) => rooms.push(room_room(room)),
        ("public", room) => {
            rooms.extend(room.map(room_room));
            rooms.push(author_room(actor_id));
        }
        _ => return None,
    }
    Some(Routed { rooms, frame })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use replication::pgoutput::{Column, ReplicaIdentity, Value as Cell};

    use super::*;

    fn row(visibility: &str, room: Option<&str>) -> (Arc<Relation>, Tuple) {
        let names = [
            "id",
            "type",
            "actor_id",
            "actor",
            "target_type",
            "target_id",
            "target_name",
            "room",
            "context",
            "visibility",
            "created_at",
        ];
        let relation = Arc::new(Relation {
            id: 1,
            namespace: "realtime".into(),
            name: "activities".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: names
                .iter()
                .map(|n| Column {
                    is_key: false,
                    name: (*n).into(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        });
        let t = |s: &str| Cell::Text(bytes::Bytes::copy_from_slice(s.as_bytes()));
        let tuple = Tuple(vec![
            t("7"),
            t("trip.item_added"),
            t("alice"),
            t(r#"{"name": "Alice"}"#),
            t("item"),
            t("i-1"),
            t("Kinkaku-ji"),
            room.map_or(Cell::Null, t),
            t(r#"{"day": 2}"#),
            t(visibility),
            t("2026-11-29 10:00:00+00"),
        ]);
        (relation, tuple)
    }

    #[test]
    fn each_visibility_reaches_its_audience_only() {
        let (rel, new) = row("private", Some("trip:42"));
        assert_eq!(route(&rel, &new).unwrap().rooms, ["@activity:user:alice"]);
        let (rel, new) = row("collaborators", Some("trip:42"));
        assert_eq!(
            route(&rel, &new).unwrap().rooms,
            ["@activity:user:alice", "@activity:room:trip:42"]
        );
        let (rel, new) = row("public", Some("trip:42"));
        assert_eq!(
            route(&rel, &new).unwrap().rooms,
            [
                "@activity:user:alice",
                "@activity:room:trip:42",
                "@activity:by:alice"
            ]
        );
        let (rel, new) = row("public", None);
        assert_eq!(
            route(&rel, &new).unwrap().rooms,
            ["@activity:user:alice", "@activity:by:alice"]
        );
        let (rel, new) = row("collaborators", None);
        assert_eq!(route(&rel, &new), None);
    }

    #[test]
    fn the_frame_carries_the_activity() {
        let (rel, new) = row("collaborators", Some("trip:42"));
        let frame: Value = serde_json::from_str(&route(&rel, &new).unwrap().frame).unwrap();
        assert_eq!(frame["type"], "activity:new");
        assert_eq!(
            frame["data"]["actor"],
            json!({"id": "alice", "name": "Alice"})
        );
        assert_eq!(frame["data"]["target"]["name"], "Kinkaku-ji");
        assert_eq!(frame["data"]["context"]["day"], 2);
        assert_eq!(frame["data"]["created_at"], "2026-11-29T10:00:00+00:00");
    }
}
