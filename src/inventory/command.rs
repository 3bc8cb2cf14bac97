//! Client events of the inventory channel (`inventory:*`), parsed and validated without I/O.

use serde::Deserialize;

use crate::protocol::{valid_room, ProtocolError};

/// Most resources one `inventory:subscribe` or `inventory:unsubscribe` may name.
const MAX_RESOURCES_PER_REQUEST: usize = 100;
/// Most units one reservation may take.
pub(super) const MAX_QUANTITY: i64 = 10_000;
/// Longest reservation idempotency key.
const MAX_KEY_LEN: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventoryCommand {
    /// Current state of each resource, then every committed change.
    Subscribe {
        resources: Vec<String>,
    },
    Unsubscribe {
        resources: Vec<String>,
    },
    /// `realtime.reserve` for the connection's user; `key` makes a retry safe.
    Reserve {
        resource_id: String,
        quantity: i32,
        key: Option<String>,
    },
    /// `realtime.release` of one of the user's reservations.
    Release {
        reservation_id: i64,
    },
}

impl InventoryCommand {
    /// Whether the command writes to the database (and counts against the publish rate).
    pub fn writes(&self) -> bool {
        matches!(
            self,
            InventoryCommand::Reserve { .. } | InventoryCommand::Release { .. }
        )
    }
}

#[derive(Deserialize)]
struct ResourcesData {
    resources: Vec<String>,
}

#[derive(Deserialize)]
struct ReserveData {
    resource_id: String,
    #[serde(default)]
    quantity: Option<i64>,
    #[serde(default)]
    key: Option<String>,
}

#[derive(Deserialize)]
struct ReleaseData {
    reservation_id: i64,
}

fn invalid(field: &'static str, why: impl Into<String>) -> ProtocolError {
    ProtocolError::InvalidField {
        field,
        why: why.into(),
    }
}

fn data_as<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T, ProtocolError> {
    serde_json::from_str(data).map_err(|e| invalid("data", e.to_string()))
}

fn resource_id(id: String, field: &'static str) -> Result<String, ProtocolError> {
    if valid_room(&id) {
        Ok(id)
    } else {
        Err(invalid(field, "1 to 200 characters of A-Z a-z 0-9 _ . : -"))
    }
}

fn resources(data: &str) -> Result<Vec<String>, ProtocolError> {
    let ids = data_as::<ResourcesData>(data)?.resources;
    if ids.is_empty() || ids.len() > MAX_RESOURCES_PER_REQUEST {
        return Err(invalid(
            "data.resources",
            format!("1 to {MAX_RESOURCES_PER_REQUEST} resource ids"),
        ));
    }
    ids.into_iter()
        .map(|id| resource_id(id, "data.resources"))
        .collect()
}

/// Parses the `data` (JSON text, `null` when absent) of the inventory event `kind`.
pub fn parse(kind: &str, data: &str) -> Result<InventoryCommand, ProtocolError> {
    match kind {
        "inventory:subscribe" => Ok(InventoryCommand::Subscribe {
            resources: resources(data)?,
        }),
        "inventory:unsubscribe" => Ok(InventoryCommand::Unsubscribe {
            resources: resources(data)?,
        }),
        "inventory:reserve" => {
            let reserve: ReserveData = data_as(data)?;
            let quantity = reserve.quantity.unwrap_or(1);
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                return Err(invalid(
                    "data.quantity",
                    format!("an integer from 1 to {MAX_QUANTITY}, not {quantity}"),
                ));
            }
            if reserve
                .key
                .as_ref()
                .is_some_and(|k| k.is_empty() || k.len() > MAX_KEY_LEN)
            {
                return Err(invalid(
                    "data.key",
                    format!("1 to {MAX_KEY_LEN} bytes when given"),
                ));
            }
            Ok(InventoryCommand::Reserve {
                resource_id: resource_id(reserve.resource_id, "data.resource_id")?,
                quantity: i32::try_from(quantity).unwrap_or(i32::MAX),
                key: reserve.key,
            })
        }
        "inventory:release" => {
            let reservation_id = data_as::<ReleaseData>(data)?.reservation_id;
            if reservation_id < 1 {
                return Err(invalid("data.reservation_id", "a positive integer"));
            }
            Ok(InventoryCommand::Release { reservation_id })
        }
        other => {
            let mut shown = other.to_owned();
            shown.truncate(64);
            Err(ProtocolError::UnknownEvent(shown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_inventory_event() {
        assert_eq!(
            parse(
                "inventory:subscribe",
                r#"{"resources": ["hotel:1", "ticket:A-7"]}"#
            ),
            Ok(InventoryCommand::Subscribe {
                resources: vec!["hotel:1".into(), "ticket:A-7".into()]
            })
        );
        assert_eq!(
            parse("inventory:unsubscribe", r#"{"resources": ["hotel:1"]}"#),
            Ok(InventoryCommand::Unsubscribe {
                resources: vec!["hotel:1".into()]
            })
        );
        let reserve = parse(
            "inventory:reserve",
            r#"{"resource_id": "hotel:1", "quantity": 2, "key": "k"}"#,
        )
        .unwrap();
        assert!(reserve.writes());
        assert_eq!(
            reserve,
            InventoryCommand::Reserve {
                resource_id: "hotel:1".into(),
                quantity: 2,
                key: Some("k".into())
            }
        );
        assert_eq!(
            parse("inventory:reserve", r#"{"resource_id": "hotel:1"}"#),
            Ok(InventoryCommand::Reserve {
                resource_id: "hotel:1".into(),
                quantity: 1,
                key: None
            })
        );
        assert_eq!(
            parse("inventory:release", r#"{"reservation_id": 9}"#),
            Ok(InventoryCommand::Release { reservation_id: 9 })
        );
    }

    #[test]
    fn refuses_bad_input_with_the_field_named() {
        let many = serde_json::json!({ "resources": vec!["r"; MAX_RESOURCES_PER_REQUEST + 1] });
        for (kind, data, field) in [
            ("inventory:subscribe", "null", "data"),
            ("inventory:subscribe", r#"{"resources": "hotel:1"}"#, "data"),
            (
                "inventory:subscribe",
                r#"{"resources": []}"#,
                "data.resources",
            ),
            ("inventory:subscribe", &many.to_string(), "data.resources"),
            (
                "inventory:subscribe",
                r#"{"resources": ["bad id"]}"#,
                "data.resources",
            ),
            ("inventory:unsubscribe", r#"{"resources": [7]}"#, "data"),
            (
                "inventory:reserve",
                r#"{"resource_id": "h", "quantity": 0}"#,
                "data.quantity",
            ),
            (
                "inventory:reserve",
                r#"{"resource_id": "h", "quantity": -3}"#,
                "data.quantity",
            ),
            (
                "inventory:reserve",
                r#"{"resource_id": "h", "quantity": 10001}"#,
                "data.quantity",
            ),
            (
                "inventory:reserve",
                r#"{"resource_id": "h", "quantity": 1.5}"#,
                "data",
            ),
            (
                "inventory:reserve",
                r#"{"resource_id": "h", "key": ""}"#,
                "data.key",
            ),
            (
                "inventory:reserve",
                r#"{"resource_id": "a b"}"#,
                "data.resource_id",
            ),
            ("inventory:reserve", r#"{"quantity": 1}"#, "data"),
            (
                "inventory:release",
                r#"{"reservation_id": 0}"#,
                "data.reservation_id",
            ),
            ("inventory:release", r#"{"reservation_id": "1"}"#, "data"),
        ] {
            match parse(kind, data) {
                Err(ProtocolError::InvalidField { field: got, .. }) => {
                    assert_eq!(got, field, "{kind} {data}")
                }
                other => panic!("{kind} {data}: {other:?}"),
            }
        }
        assert_eq!(
            parse("inventory:explode", "null").unwrap_err().code(),
            "unknown_event"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_reservations_never_panic(id in ".{0,40}", quantity in proptest::num::i64::ANY, key in ".{0,300}") {
            let data = serde_json::json!({"resource_id": id, "quantity": quantity, "key": key});
            let _ = parse("inventory:reserve", &data.to_string());
        }
    }
}
