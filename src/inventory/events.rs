//! Server events of the inventory channel, and which committed rows become which event. Pure:
//! no I/O.

use replication::pgoutput::{Relation, Tuple, Value as Column};
use replication::Change;
use serde_json::{json, Value};

use crate::hub::Frame;
use crate::protocol;

/// What a committed change of an inventory table means for connected clients.
#[derive(Debug, Clone, PartialEq)]
pub enum Routed {
    /// A resource was inserted or updated: its new state, for its subscribers.
    Changed {
        resource_id: String,
        version: i64,
        frame: Frame,
    },
    /// A resource was deleted.
    Removed { resource_id: String, frame: Frame },
    /// A reservation outcome or a booking status, for every connection of `user`.
    ForUser { user: String, frame: Frame },
}

/// One resource as clients see it, in `inventory:update` and over REST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    pub resource_id: String,
    pub kind: String,
    pub name: String,
    pub available: i64,
    pub total: i64,
    /// The exact decimal, as PostgreSQL writes it (`129.00`).
    pub price: String,
    pub currency: String,
    pub version: i64,
    /// RFC 3339.
    pub updated_at: String,
}

impl ResourceState {
    pub fn to_json(&self) -> Value {
        json!({
            "resource_id": self.resource_id,
            "kind": self.kind,
            "name": self.name,
            "available": self.available,
            "total": self.total,
            "price": self.price,
            "currency": self.currency,
            "version": self.version,
            "updated_at": self.updated_at,
        })
    }

    /// The `inventory:update` event carrying this state.
    pub fn frame(&self) -> Frame {
        Frame::from(
            json!({
                "type": "inventory:update",
                "id": format!("inventory:{}:{}", self.resource_id, self.version),
                "timestamp": self.updated_at,
                "data": self.to_json(),
            })
            .to_string(),
        )
    }
}

pub(super) fn removed_frame(resource_id: &str) -> Frame {
    Frame::from(
        json!({
            "type": "inventory:removed",
            "id": format!("inventory:{resource_id}:removed"),
            "timestamp": protocol::now_rfc3339(),
            "data": { "resource_id": resource_id },
        })
        .to_string(),
    )
}

/// Whether changes of `relation` are routed here.
pub fn streams(relation: &Relation) -> bool {
    relation.namespace == "realtime"
        && matches!(
            relation.name.as_str(),
            "inventory" | "reservations" | "bookings"
        )
}

/// Routes a change of an inventory table; rows that lack what routing needs give `None`.
pub fn route(change: &Change) -> Option<Routed> {
    match change {
        Change::Insert { relation, new } | Change::Update { relation, new, .. } => {
            match relation.name.as_str() {
                "inventory" => {
                    let state = resource(relation, new)?;
                    Some(Routed::Changed {
                        frame: state.frame(),
                        resource_id: state.resource_id,
                        version: state.version,
                    })
                }
                "reservations" => reservation(relation, new),
                "bookings" => booking(relation, new),
                _ => None,
            }
        }
        Change::Delete { relation, key, old } if relation.name == "inventory" => {
            let row = old.as_ref().or(key.as_ref())?;
            let resource_id = text(relation, row, "resource_id")?.to_owned();
            Some(Routed::Removed {
                frame: removed_frame(&resource_id),
                resource_id,
            })
        }
        _ => None,
    }
}

fn column<'a>(relation: &Relation, tuple: &'a Tuple, name: &str) -> Option<&'a Column> {
    let index = relation.columns.iter().position(|c| c.name == name)?;
    tuple.0.get(index)
}

fn text<'a>(relation: &Relation, tuple: &'a Tuple, name: &str) -> Option<&'a str> {
    column(relation, tuple, name).and_then(Column::as_str)
}

fn number(relation: &Relation, tuple: &Tuple, name: &str) -> Option<i64> {
    text(relation, tuple, name)?.parse().ok()
}

fn timestamp(relation: &Relation, tuple: &Tuple, name: &str) -> Option<String> {
    text(relation, tuple, name).map(protocol::pg_timestamp_to_rfc3339)
}

fn resource(relation: &Relation, row: &Tuple) -> Option<ResourceState> {
    Some(ResourceState {
        resource_id: text(relation, row, "resource_id")?.to_owned(),
        kind: text(relation, row, "kind")?.to_owned(),
        name: text(relation, row, "name")?.to_owned(),
        available: number(relation, row, "available")?,
        total: number(relation, row, "total")?,
        price: text(relation, row, "price")?.to_owned(),
        currency: text(relation, row, "currency")?.to_owned(),
        version: number(relation, row, "version")?,
        updated_at: timestamp(relation, row, "updated_at")?,
    })
}

/// `reservation:confirmed`, `reservation:failed` (with the alternatives) or
/// `reservation:released`.
fn reservation(relation: &Relation, row: &Tuple) -> Option<Routed> {
    let id = number(relation, row, "id")?;
    let status = text(relation, row, "status")?;
    let kind = match status {
        "confirmed" => "reservation:confirmed",
        "rejected" => "reservation:failed",
        "released" => "reservation:released",
        _ => return None,
    };
    let alternatives = text(relation, row, "alternatives")
        .and_then(|a| serde_json::from_str::<Value>(a).ok())
        .unwrap_or(Value::Null);
    let created_at = timestamp(relation, row, "created_at")?;
    let released_at = timestamp(relation, row, "released_at");
    let frame = json!({
        "type": kind,
        "id": format!("reservation:{id}:{status}"),
        "timestamp": released_at.as_deref().unwrap_or(&created_at),
        "data": {
            "reservation_id": id,
            "resource_id": text(relation, row, "resource_id")?,
            "quantity": number(relation, row, "quantity")?,
            "status": status,
            "reason": text(relation, row, "reason"),
            "alternatives": alternatives,
            "idempotency_key": text(relation, row, "idempotency_key"),
            "created_at": created_at,
            "released_at": released_at,
        },
    });
    Some(Routed::ForUser {
        user: text(relation, row, "user_id")?.to_owned(),
        frame: Frame::from(frame.to_string()),
    })
}

/// `booking:status`: a booking was created or its status resolved.
fn booking(relation: &Relation, row: &Tuple) -> Option<Routed> {
    let booking_id = text(relation, row, "booking_id")?;
    let version = number(relation, row, "version")?;
    let updated_at = timestamp(relation, row, "updated_at")?;
    let frame = json!({
        "type": "booking:status",
        "id": format!("booking:{booking_id}:{version}"),
        "timestamp": updated_at,
        "data": {
            "booking_id": booking_id,
            "resource_id": text(relation, row, "resource_id"),
            "status": text(relation, row, "status")?,
            "version": version,
            "updated_at": updated_at,
        },
    });
    Some(Routed::ForUser {
        user: text(relation, row, "user_id")?.to_owned(),
        frame: Frame::from(frame.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::fixtures::{relation, t};

    fn json_of(frame: &Frame) -> Value {
        serde_json::from_str(frame.as_str()).unwrap()
    }

    const INVENTORY: [&str; 9] = [
        "resource_id",
        "kind",
        "name",
        "available",
        "total",
        "price",
        "currency",
        "version",
        "updated_at",
    ];

    #[test]
    fn inventory_changes_become_updates_with_the_exact_price() {
        let rel = relation("inventory", &INVENTORY);
        let row = Tuple(
            [
                "hotel:1",
                "hotel_room",
                "Hotel \"One\"",
                "3",
                "10",
                "129.50",
                "JPY",
                "7",
                "2026-11-29 10:00:00.25+00",
            ]
            .map(t)
            .to_vec(),
        );
        let Some(Routed::Changed {
            resource_id,
            version,
            frame,
        }) = route(&Change::Update {
            relation: rel.clone(),
            key: None,
            old: None,
            new: row,
        })
        else {
            panic!("not routed");
        };
        assert_eq!((resource_id.as_str(), version), ("hotel:1", 7));
        let v = json_of(&frame);
        assert_eq!(v["type"], "inventory:update");
        assert_eq!(v["id"], "inventory:hotel:1:7");
        assert_eq!(v["data"]["price"], "129.50");
        assert_eq!(v["data"]["name"], "Hotel \"One\"");
        assert_eq!(v["data"]["available"], 3);
        assert_eq!(v["data"]["updated_at"], "2026-11-29T10:00:00.25+00:00");
        // A row missing a column routes nothing.
        let short = Tuple(vec![t("hotel:1")]);
        assert_eq!(
            route(&Change::Insert {
                relation: rel.clone(),
                new: short
            }),
            None
        );
        let deleted = route(&Change::Delete {
            relation: rel,
            key: Some(Tuple(
                std::iter::once(t("hotel:1"))
                    .chain(std::iter::repeat_n(Column::Null, 8))
                    .collect(),
            )),
            old: None,
        });
        let Some(Routed::Removed { resource_id, frame }) = deleted else {
            panic!("delete not routed");
        };
        assert_eq!(resource_id, "hotel:1");
        assert_eq!(json_of(&frame)["type"], "inventory:removed");
    }

    #[test]
    fn reservations_go_to_their_user_with_alternatives() {
        let rel = relation(
            "reservations",
            &[
                "id",
                "resource_id",
                "user_id",
                "quantity",
                "status",
                "reason",
                "alternatives",
                "idempotency_key",
                "created_at",
                "released_at",
            ],
        );
        let row = |status: &str, reason: Column, alternatives: Column| {
            Tuple(vec![
                t("12"),
                t("hotel:1"),
                t("bob"),
                t("2"),
                t(status),
                reason,
                alternatives,
                Column::Null,
                t("2026-11-29 10:00:00+00"),
                Column::Null,
            ])
        };
        let rejected = row(
            "rejected",
            t("sold_out"),
            t(r#"[{"resource_id": "hotel:2", "price": "90"}]"#),
        );
        let Some(Routed::ForUser { user, frame }) = route(&Change::Insert {
            relation: rel.clone(),
            new: rejected,
        }) else {
            panic!("not routed");
        };
        assert_eq!(user, "bob");
        let v = json_of(&frame);
        assert_eq!(v["type"], "reservation:failed");
        assert_eq!(v["data"]["reservation_id"], 12);
        assert_eq!(v["data"]["reason"], "sold_out");
        assert_eq!(v["data"]["alternatives"][0]["resource_id"], "hotel:2");
        let confirmed = row("confirmed", Column::Null, Column::Null);
        let Some(Routed::ForUser { frame, .. }) = route(&Change::Insert {
            relation: rel.clone(),
            new: confirmed,
        }) else {
            panic!("not routed");
        };
        let v = json_of(&frame);
        assert_eq!(v["type"], "reservation:confirmed");
        assert_eq!(v["data"]["alternatives"], Value::Null);
        let odd = row("exploded", Column::Null, Column::Null);
        assert_eq!(
            route(&Change::Insert {
                relation: rel,
                new: odd
            }),
            None
        );
    }

    #[test]
    fn bookings_go_to_their_user_and_other_tables_are_not_ours() {
        let rel = relation(
            "bookings",
            &[
                "booking_id",
                "user_id",
                "resource_id",
                "status",
                "version",
                "created_at",
                "updated_at",
            ],
        );
        let row = Tuple(vec![
            t("BK-1"),
            t("alice"),
            Column::Null,
            t("cancelled"),
            t("3"),
            t("2026-11-29 10:00:00+00"),
            t("2026-11-29 11:00:00+00"),
        ]);
        let Some(Routed::ForUser { user, frame }) = route(&Change::Update {
            relation: rel.clone(),
            key: None,
            old: None,
            new: row,
        }) else {
            panic!("not routed");
        };
        assert_eq!(user, "alice");
        let v = json_of(&frame);
        assert_eq!(v["type"], "booking:status");
        assert_eq!(v["data"]["status"], "cancelled");
        assert_eq!(v["data"]["version"], 3);
        assert!(streams(&rel));
        assert!(!streams(&relation("messages", &["room"])));
    }
}
