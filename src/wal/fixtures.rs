//! Decoded rows for the tests of the WAL routers (messages, presence, inventory).

use std::sync::Arc;

use replication::pgoutput::{Column, Relation, ReplicaIdentity, Value};

/// A `realtime.<name>` relation whose columns are all text.
pub(crate) fn relation(name: &str, columns: &[&str]) -> Arc<Relation> {
    Arc::new(Relation {
        id: 1,
        namespace: "realtime".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Default,
        columns: columns
            .iter()
            .map(|c| Column {
                is_key: false,
                name: (*c).into(),
                type_oid: 25,
                type_modifier: -1,
            })
            .collect(),
    })
}

/// A column value in pgoutput's text format.
pub(crate) fn t(s: &str) -> Value {
    Value::Text(bytes::Bytes::copy_from_slice(s.as_bytes()))
}
