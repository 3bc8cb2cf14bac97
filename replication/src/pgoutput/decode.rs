use std::fmt;

use bytes::{Buf, Bytes};

use super::{
    Begin, Column, Commit, Delete, Insert, LogicalMessage, Message, Origin, Relation,
    ReplicaIdentity, Truncate, Tuple, TypeInfo, Update, Value,
};
use crate::Lsn;

/// Why a replication message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message ended in the middle of a field.
    #[error("unexpected end of data reading {what}: needed {needed} bytes, {remaining} left")]
    UnexpectedEof {
        what: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// The first byte is not a known pgoutput message type.
    #[error("unknown pgoutput message tag {}", Tag(*.0))]
    UnknownMessageTag(u8),
    /// The first byte of a CopyData payload is neither `w` nor `k`.
    #[error("unknown replication message tag {}", Tag(*.0))]
    UnknownReplicationTag(u8),
    /// A tuple column is not one of `n`, `u`, `t` or `b`.
    #[error("unknown tuple value kind {}", Tag(*.0))]
    UnknownTupleKind(u8),
    /// The byte announcing a tuple (`K`, `O` or `N`) is not one allowed at that point.
    #[error("unexpected tuple tag {} in {message} message, expected {expected}", Tag(*.tag))]
    UnexpectedTupleTag {
        message: &'static str,
        expected: &'static str,
        tag: u8,
    },
    /// A length prefix is negative.
    #[error("negative length {len} for {what}")]
    NegativeLength { what: &'static str, len: i32 },
    /// A count is negative.
    #[error("negative {what}: {count}")]
    NegativeCount { what: &'static str, count: i32 },
    /// A count announces more items than the remaining bytes could hold.
    #[error("{what} {count} cannot fit in the {remaining} bytes left")]
    CountTooLarge {
        what: &'static str,
        count: usize,
        remaining: usize,
    },
    /// A name is not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    /// A string runs to the end of the message without its NUL terminator.
    #[error("{what} is missing its NUL terminator")]
    MissingNul { what: &'static str },
    /// The replica identity byte is not one of `d`, `n`, `f` or `i`.
    #[error("unknown replica identity {}", Tag(*.0))]
    BadReplicaIdentity(u8),
    /// Bytes are left over after a complete message.
    #[error("{count} trailing bytes after a complete {message} message")]
    TrailingBytes { message: &'static str, count: usize },
}

/// Shows a tag byte as `'B' (0x42)`, or as `0x05` when it is not printable.
struct Tag(u8);

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() {
            write!(f, "'{}' ({:#04x})", char::from(self.0), self.0)
        } else {
            write!(f, "{:#04x}", self.0)
        }
    }
}

/// Decodes the payload of one XLogData message written by `pgoutput` (protocol version 1).
///
/// Text, binary and message contents are slices of `buf`, not copies.
pub fn decode(buf: Bytes) -> Result<LogicalMessage, DecodeError> {
    let mut r = Reader::new(buf);
    let (message, name) = match r.u8("message tag")? {
        b'B' => (LogicalMessage::Begin(begin(&mut r)?), "Begin"),
        b'C' => (LogicalMessage::Commit(commit(&mut r)?), "Commit"),
        b'O' => (LogicalMessage::Origin(origin(&mut r)?), "Origin"),
        b'R' => (LogicalMessage::Relation(relation(&mut r)?), "Relation"),
        b'Y' => (LogicalMessage::Type(type_info(&mut r)?), "Type"),
        b'I' => (LogicalMessage::Insert(insert(&mut r)?), "Insert"),
        b'U' => (LogicalMessage::Update(update(&mut r)?), "Update"),
        b'D' => (LogicalMessage::Delete(delete(&mut r)?), "Delete"),
        b'T' => (LogicalMessage::Truncate(truncate(&mut r)?), "Truncate"),
        b'M' => (LogicalMessage::Message(message(&mut r)?), "Message"),
        tag => return Err(DecodeError::UnknownMessageTag(tag)),
    };
    r.finish(name)?;
    Ok(message)
}

fn begin(r: &mut Reader) -> Result<Begin, DecodeError> {
    Ok(Begin {
        final_lsn: r.lsn("Begin final LSN")?,
        commit_time: r.i64("Begin commit time")?,
        xid: r.u32("Begin xid")?,
    })
}

fn commit(r: &mut Reader) -> Result<Commit, DecodeError> {
    Ok(Commit {
        flags: r.u8("Commit flags")?,
        commit_lsn: r.lsn("Commit LSN")?,
        end_lsn: r.lsn("Commit end LSN")?,
        commit_time: r.i64("Commit time")?,
    })
}

fn origin(r: &mut Reader) -> Result<Origin, DecodeError> {
    Ok(Origin {
        commit_lsn: r.lsn("Origin commit LSN")?,
        name: r.cstring("origin name")?,
    })
}

fn relation(r: &mut Reader) -> Result<Relation, DecodeError> {
    let id = r.u32("relation id")?;
    let namespace = r.cstring("relation namespace")?;
    let name = r.cstring("relation name")?;
    let replica_identity = match r.u8("replica identity")? {
        b'd' => ReplicaIdentity::Default,
        b'n' => ReplicaIdentity::Nothing,
        b'f' => ReplicaIdentity::Full,
        b'i' => ReplicaIdentity::Index,
        other => return Err(DecodeError::BadReplicaIdentity(other)),
    };
    let count = r.count16("relation column count")?;
    // flags, an empty name's NUL, type oid and type modifier
    r.check_count(count, 1 + 1 + 4 + 4, "relation column count")?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(Column {
            is_key: r.u8("column flags")? & 1 != 0,
            name: r.cstring("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn type_info(r: &mut Reader) -> Result<TypeInfo, DecodeError> {
    Ok(TypeInfo {
        id: r.u32("type oid")?,
        namespace: r.cstring("type namespace")?,
        name: r.cstring("type name")?,
    })
}

fn insert(r: &mut Reader) -> Result<Insert, DecodeError> {
    let relation_id = r.u32("relation id")?;
    match r.u8("Insert tuple tag")? {
        b'N' => Ok(Insert {
            relation_id,
            new: tuple(r)?,
        }),
        tag => Err(DecodeError::UnexpectedTupleTag {
            message: "Insert",
            expected: "'N'",
            tag,
        }),
    }
}

fn update(r: &mut Reader) -> Result<Update, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let (key, old, tag) = match r.u8("Update tuple tag")? {
        b'K' => (Some(tuple(r)?), None, r.u8("Update new tuple tag")?),
        b'O' => (None, Some(tuple(r)?), r.u8("Update new tuple tag")?),
        tag => (None, None, tag),
    };
    if tag != b'N' {
        let expected = if key.is_none() && old.is_none() {
            "'K', 'O' or 'N'"
        } else {
            "'N'"
        };
        return Err(DecodeError::UnexpectedTupleTag {
            message: "Update",
            expected,
            tag,
        });
    }
    Ok(Update {
        relation_id,
        key,
        old,
        new: tuple(r)?,
    })
}

fn delete(r: &mut Reader) -> Result<Delete, DecodeError> {
    let relation_id = r.u32("relation id")?;
    let (key, old) = match r.u8("Delete tuple tag")? {
        b'K' => (Some(tuple(r)?), None),
        b'O' => (None, Some(tuple(r)?)),
        tag => {
            return Err(DecodeError::UnexpectedTupleTag {
                message: "Delete",
                expected: "'K' or 'O'",
                tag,
            })
        }
    };
    Ok(Delete {
        relation_id,
        key,
        old,
    })
}

fn truncate(r: &mut Reader) -> Result<Truncate, DecodeError> {
    let count = r.u32("Truncate relation count")?;
    let options = r.u8("Truncate options")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    r.check_count(count, 4, "Truncate relation count")?;
    let relation_ids = (0..count)
        .map(|_| r.u32("truncated relation id"))
        .collect::<Result<_, _>>()?;
    Ok(Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relation_ids,
    })
}

fn message(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message {
        transactional: r.u8("Message flags")? & 1 != 0,
        lsn: r.lsn("Message LSN")?,
        prefix: r.cstring("Message prefix")?,
        content: r.sized("Message content")?,
    })
}

fn tuple(r: &mut Reader) -> Result<Tuple, DecodeError> {
    let count = r.count16("tuple column count")?;
    r.check_count(count, 1, "tuple column count")?;
    let mut values = Vec::with_capacity(count);
    for _ in 0..count {
        values.push(match r.u8("tuple value kind")? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => Value::Text(r.sized("text value")?),
            b'b' => Value::Binary(r.sized("binary value")?),
            kind => return Err(DecodeError::UnknownTupleKind(kind)),
        });
    }
    Ok(Tuple(values))
}

/// A cursor over a message that fails, rather than panics, when the data runs out.
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Self {
        Reader { buf }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let src = self.buf.get(..N).ok_or_else(|| self.eof(what, N))?;
        let mut out = [0; N];
        out.copy_from_slice(src);
        self.buf.advance(N);
        Ok(out)
    }

    fn eof(&self, what: &'static str, needed: usize) -> DecodeError {
        DecodeError::UnexpectedEof {
            what,
            needed,
            remaining: self.buf.len(),
        }
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|[b]| b)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, DecodeError> {
        self.array(what).map(i16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        self.array(what).map(i32::from_be_bytes)
    }

    pub(crate) fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        self.array(what).map(i64::from_be_bytes)
    }

    pub(crate) fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        self.array(what).map(|b| Lsn(u64::from_be_bytes(b)))
    }

    /// An `Int16` count, which must not be negative.
    fn count16(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let count = self.i16(what)?;
        usize::try_from(count).map_err(|_| DecodeError::NegativeCount {
            what,
            count: count.into(),
        })
    }

    /// Fails unless `count` items of at least `min_size` bytes each fit in what is left.
    fn check_count(
        &self,
        count: usize,
        min_size: usize,
        what: &'static str,
    ) -> Result<(), DecodeError> {
        let remaining = self.buf.len();
        if count.checked_mul(min_size).is_none_or(|n| n > remaining) {
            return Err(DecodeError::CountTooLarge {
                what,
                count,
                remaining,
            });
        }
        Ok(())
    }

    /// An `Int32` length followed by that many bytes.
    fn sized(&mut self, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.i32(what)?;
        let len = usize::try_from(len).map_err(|_| DecodeError::NegativeLength { what, len })?;
        if len > self.buf.len() {
            return Err(self.eof(what, len));
        }
        Ok(self.buf.split_to(len))
    }

    /// A NUL-terminated UTF-8 string.
    fn cstring(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self
            .buf
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::MissingNul { what })?;
        let bytes = self.buf.split_to(len);
        self.buf.advance(1);
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::InvalidUtf8 { what })
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if anything is left after a complete `message`.
    pub(crate) fn finish(&self, message: &'static str) -> Result<(), DecodeError> {
        match self.buf.len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { message, count }),
        }
    }
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
