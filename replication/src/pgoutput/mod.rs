//! The `pgoutput` logical decoding format (protocol version 1), decoded without I/O.
//!
//! [`decode`] turns the payload of one XLogData message into a [`LogicalMessage`]. Every length
//! and count is checked against the bytes actually present, so malformed input yields a
//! [`DecodeError`], never a panic or an allocation out of proportion to the input.

mod decode;

pub(crate) use decode::Reader;
pub use decode::{decode, DecodeError};

use bytes::Bytes;

use crate::Lsn;

/// Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's epoch for timestamps.
pub type PgTimestamp = i64;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin(Begin),
    Commit(Commit),
    Origin(Origin),
    Relation(Relation),
    Type(TypeInfo),
    Insert(Insert),
    Update(Update),
    Delete(Delete),
    Truncate(Truncate),
    Message(Message),
}

/// Start of a committed transaction (`B`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    pub commit_time: PgTimestamp,
    pub xid: u32,
}

/// End of a transaction (`C`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: Lsn,
    /// LSN just past the commit record: the position to confirm once the transaction is handled.
    pub end_lsn: Lsn,
    pub commit_time: PgTimestamp,
}

/// The transaction came from another node (`O`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub commit_lsn: Lsn,
    pub name: String,
}

/// What a table sends as the old row of an update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// A table's shape (`R`), sent before the first change to it in a stream and after it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity key.
    pub is_key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A non-builtin data type used by a following relation (`Y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    pub id: u32,
    pub namespace: String,
    pub name: String,
}

/// `I`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insert {
    pub relation_id: u32,
    pub new: Tuple,
}

/// `U`: `key` is sent when the replica identity columns changed (`K`), `old` under
/// `REPLICA IDENTITY FULL` (`O`); at most one of them is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub relation_id: u32,
    pub key: Option<Tuple>,
    pub old: Option<Tuple>,
    pub new: Tuple,
}

/// `D`: exactly one of `key` (`K`) and `old` (`O`, under `REPLICA IDENTITY FULL`) is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub relation_id: u32,
    pub key: Option<Tuple>,
    pub old: Option<Tuple>,
}

/// `T`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truncate {
    pub cascade: bool,
    pub restart_identity: bool,
    pub relation_ids: Vec<u32>,
}

/// A logical decoding message from `pg_logical_emit_message` (`M`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    pub content: Bytes,
}

/// A row's column values, in the relation's column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `n`
    Null,
    /// `u`: a TOASTed value that did not change; the server does not send it.
    UnchangedToast,
    /// `t`: the type's text output.
    Text(Bytes),
    /// `b`: the type's binary output (only when the `binary` option is on).
    Binary(Bytes),
}

impl Value {
    /// The text form of the value, if it is a text value holding valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
}
