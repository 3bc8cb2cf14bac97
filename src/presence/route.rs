//! From a committed change of a presence table to what the node does with it. Pure: no I/O.

use replication::pgoutput::{Relation, Tuple};
use replication::Change;

use crate::hub::Frame;
use crate::protocol;

/// What a committed presence change means for this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A user's presence as others see it (`realtime.presence`), for their presence room.
    Update {
        user: String,
        version: u64,
        frame: Frame,
    },
    /// A user chose a mode (`realtime.presence_settings`).
    Mode { user: String, mode: String },
    /// A block was added or removed (`realtime.blocks`).
    Block {
        user: String,
        blocked: String,
        added: bool,
    },
}

/// Whether changes of `relation` are presence's to route.
pub fn streams(relation: &Relation) -> bool {
    relation.namespace == "realtime"
        && matches!(
            relation.name.as_str(),
            "presence" | "presence_settings" | "blocks"
        )
}

fn text<'a>(relation: &Relation, tuple: &'a Tuple, name: &str) -> Option<&'a str> {
    let index = relation.columns.iter().position(|c| c.name == name)?;
    tuple.0.get(index)?.as_str()
}

/// Routes a change of a table [`streams`] accepts; `None` for changes that mean nothing live.
pub fn route(change: &Change) -> Option<Routed> {
    match change {
        Change::Insert { relation, new } | Change::Update { relation, new, .. }
            if relation.name == "presence" =>
        {
            let user = text(relation, new, "user_id")?;
            let status = text(relation, new, "status")?;
            let version: u64 = text(relation, new, "version")?.parse().ok()?;
            let last_seen = protocol::pg_timestamp_to_rfc3339(text(relation, new, "last_seen")?);
            Some(Routed::Update {
                user: user.to_owned(),
                version,
                frame: Frame::from(protocol::presence_update(
                    user,
                    status,
                    Some(&last_seen),
                    Some(version),
                )),
            })
        }
        Change::Insert { relation, new } | Change::Update { relation, new, .. }
            if relation.name == "presence_settings" =>
        {
            Some(Routed::Mode {
                user: text(relation, new, "user_id")?.to_owned(),
                mode: text(relation, new, "mode")?.to_owned(),
            })
        }
        Change::Insert { relation, new } if relation.name == "blocks" => Some(Routed::Block {
            user: text(relation, new, "user_id")?.to_owned(),
            blocked: text(relation, new, "blocked_id")?.to_owned(),
            added: true,
        }),
        Change::Delete { relation, key, old } if relation.name == "blocks" => {
            let row = old.as_ref().or(key.as_ref())?;
            Some(Routed::Block {
                user: text(relation, row, "user_id")?.to_owned(),
                blocked: text(relation, row, "blocked_id")?.to_owned(),
                added: false,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use replication::pgoutput::Value;

    use super::*;
    use crate::wal::fixtures::{relation, t};

    #[test]
    fn presence_rows_become_updates_of_their_users_room() {
        let rel = relation(
            "presence",
            &["user_id", "status", "last_seen", "version", "updated_at"],
        );
        assert!(streams(&rel));
        let new = Tuple(vec![
            t("bob"),
            t("away"),
            t("2026-11-28 10:00:00.5+00"),
            t("7"),
            t("2026-11-28 10:05:00+00"),
        ]);
        let Some(Routed::Update {
            user,
            version,
            frame,
        }) = route(&Change::Update {
            relation: rel,
            key: None,
            old: None,
            new,
        })
        else {
            panic!("not routed");
        };
        assert_eq!((user.as_str(), version), ("bob", 7));
        let v: serde_json::Value = serde_json::from_str(frame.as_str()).unwrap();
        assert_eq!(v["type"], "presence:update");
        assert_eq!(v["data"]["status"], "away");
        assert_eq!(v["data"]["last_seen"], "2026-11-28T10:00:00.5+00:00");
        assert_eq!(v["data"]["version"], 7);
    }

    #[test]
    fn modes_and_blocks_are_routed_and_bad_rows_are_not() {
        let settings = relation("presence_settings", &["user_id", "mode", "updated_at"]);
        assert_eq!(
            route(&Change::Insert {
                relation: settings,
                new: Tuple(vec![t("bob"), t("invisible"), t("2026-11-28 10:00:00+00")]),
            }),
            Some(Routed::Mode {
                user: "bob".into(),
                mode: "invisible".into()
            })
        );
        let blocks = relation("blocks", &["user_id", "blocked_id", "created_at"]);
        assert_eq!(
            route(&Change::Delete {
                relation: blocks.clone(),
                key: Some(Tuple(vec![t("a"), t("b"), Value::Null])),
                old: None,
            }),
            Some(Routed::Block {
                user: "a".into(),
                blocked: "b".into(),
                added: false
            })
        );
        let bad = relation("presence", &["user_id", "status", "last_seen", "version"]);
        assert_eq!(
            route(&Change::Insert {
                relation: bad,
                new: Tuple(vec![t("bob"), t("online"), t("x"), t("not a number")]),
            }),
            None
        );
        assert!(!streams(&relation("presence_sessions", &[])));
    }
}
