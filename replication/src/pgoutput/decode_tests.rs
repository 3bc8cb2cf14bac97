use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::*;

/// Builds messages field by field, as the server writes them.
#[derive(Default)]
struct W(BytesMut);

impl W {
    fn u8(mut self, v: u8) -> Self {
        self.0.put_u8(v);
        self
    }
    fn i16(mut self, v: i16) -> Self {
        self.0.put_i16(v);
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.put_u32(v);
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.put_i32(v);
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.put_u64(v);
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.put_i64(v);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.put_slice(v);
        self
    }
    fn cstr(self, s: &str) -> Self {
        self.raw(s.as_bytes()).u8(0)
    }
    fn sized(self, v: &[u8]) -> Self {
        self.i32(len_i32(v.len())).raw(v)
    }
    fn done(self) -> Bytes {
        self.0.freeze()
    }
}

fn len_i32(len: usize) -> i32 {
    i32::try_from(len).expect("test data is small")
}

fn encode(msg: &LogicalMessage) -> Bytes {
    let w = W::default();
    match msg {
        LogicalMessage::Begin(b) => w.u8(b'B').u64(b.final_lsn.0).i64(b.commit_time).u32(b.xid),
        LogicalMessage::Commit(c) => w
            .u8(b'C')
            .u8(c.flags)
            .u64(c.commit_lsn.0)
            .u64(c.end_lsn.0)
            .i64(c.commit_time),
        LogicalMessage::Origin(o) => w.u8(b'O').u64(o.commit_lsn.0).cstr(&o.name),
        LogicalMessage::Relation(rel) => {
            let identity = match rel.replica_identity {
                ReplicaIdentity::Default => b'd',
                ReplicaIdentity::Nothing => b'n',
                ReplicaIdentity::Full => b'f',
                ReplicaIdentity::Index => b'i',
            };
            let count = i16::try_from(rel.columns.len()).expect("few columns");
            let w = w
                .u8(b'R')
                .u32(rel.id)
                .cstr(&rel.namespace)
                .cstr(&rel.name)
                .u8(identity)
                .i16(count);
            rel.columns.iter().fold(w, |w, c| {
                w.u8(c.is_key.into())
                    .cstr(&c.name)
                    .u32(c.type_oid)
                    .i32(c.type_modifier)
            })
        }
        LogicalMessage::Type(t) => w.u8(b'Y').u32(t.id).cstr(&t.namespace).cstr(&t.name),
        LogicalMessage::Insert(i) => put_tuple(w.u8(b'I').u32(i.relation_id).u8(b'N'), &i.new),
        LogicalMessage::Update(u) => {
            let mut w = w.u8(b'U').u32(u.relation_id);
            if let Some(key) = &u.key {
                w = put_tuple(w.u8(b'K'), key);
            }
            if let Some(old) = &u.old {
                w = put_tuple(w.u8(b'O'), old);
            }
            put_tuple(w.u8(b'N'), &u.new)
        }
        LogicalMessage::Delete(d) => {
            let mut w = w.u8(b'D').u32(d.relation_id);
            if let Some(key) = &d.key {
                w = put_tuple(w.u8(b'K'), key);
            }
            if let Some(old) = &d.old {
                w = put_tuple(w.u8(b'O'), old);
            }
            w
        }
        LogicalMessage::Truncate(t) => {
            let options = u8::from(t.cascade) | (u8::from(t.restart_identity) << 1);
            let count = u32::try_from(t.relation_ids.len()).expect("few relations");
            let w = w.u8(b'T').u32(count).u8(options);
            t.relation_ids.iter().fold(w, |w, &id| w.u32(id))
        }
        LogicalMessage::Message(m) => w
            .u8(b'M')
            .u8(m.transactional.into())
            .u64(m.lsn.0)
            .cstr(&m.prefix)
            .sized(&m.content),
    }
    .done()
}

fn put_tuple(w: W, t: &Tuple) -> W {
    let count = i16::try_from(t.0.len()).expect("few columns");
    t.0.iter().fold(w.i16(count), |w, v| match v {
        Value::Null => w.u8(b'n'),
        Value::UnchangedToast => w.u8(b'u'),
        Value::Text(b) => w.u8(b't').sized(b),
        Value::Binary(b) => w.u8(b'b').sized(b),
    })
}

fn text(s: &str) -> Value {
    Value::Text(Bytes::copy_from_slice(s.as_bytes()))
}

fn all_kinds_tuple() -> Tuple {
    Tuple(vec![
        text("42"),
        Value::Null,
        Value::UnchangedToast,
        Value::Binary(Bytes::from_static(&[0, 1, 2])),
        text(""),
    ])
}

/// One valid encoding of every message kind, tuple kind and tuple position.
fn samples() -> Vec<Bytes> {
    let tuple = |w: W| {
        w.i16(5)
            .u8(b't')
            .sized(b"42")
            .u8(b'n')
            .u8(b'u')
            .u8(b'b')
            .sized(&[0, 1, 2])
            .u8(b't')
            .sized(b"")
    };
    vec![
        W::default()
            .u8(b'B')
            .u64(0x16_B374_D848)
            .i64(1)
            .u32(7)
            .done(),
        W::default().u8(b'C').u8(0).u64(10).u64(20).i64(30).done(),
        W::default().u8(b'O').u64(5).cstr("node").done(),
        W::default()
            .u8(b'R')
            .u32(16384)
            .cstr("public")
            .cstr("trips")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .cstr("id")
            .u32(20)
            .i32(-1)
            .u8(0)
            .cstr("title")
            .u32(1043)
            .i32(104)
            .done(),
        W::default()
            .u8(b'Y')
            .u32(70000)
            .cstr("")
            .cstr("mood")
            .done(),
        tuple(W::default().u8(b'I').u32(16384).u8(b'N')).done(),
        tuple(W::default().u8(b'U').u32(16384).u8(b'N')).done(),
        tuple(tuple(W::default().u8(b'U').u32(16384).u8(b'K')).u8(b'N')).done(),
        tuple(tuple(W::default().u8(b'U').u32(16384).u8(b'O')).u8(b'N')).done(),
        tuple(W::default().u8(b'D').u32(16384).u8(b'K')).done(),
        tuple(W::default().u8(b'D').u32(16384).u8(b'O')).done(),
        W::default().u8(b'T').u32(2).u8(3).u32(1).u32(2).done(),
        W::default()
            .u8(b'M')
            .u8(1)
            .u64(99)
            .cstr("app")
            .sized(b"hello")
            .done(),
    ]
}

#[test]
fn decodes_begin_from_literal_bytes() {
    let buf = Bytes::from_static(
        b"B\x00\x00\x00\x16\xb3\x74\xd8\x48\x00\x00\x00\x00\x00\x00\x00\x2a\x00\x00\x03\xe8",
    );
    assert_eq!(
        decode(buf),
        Ok(LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: 42,
            xid: 1000,
        }))
    );
}

#[test]
fn decodes_insert_from_literal_bytes() {
    let buf =
        Bytes::from_static(b"I\x00\x00\x40\x00N\x00\x03t\x00\x00\x00\x011t\x00\x00\x00\x05hellon");
    assert_eq!(
        decode(buf),
        Ok(LogicalMessage::Insert(Insert {
            relation_id: 16384,
            new: Tuple(vec![text("1"), text("hello"), Value::Null]),
        }))
    );
}

#[test]
fn decodes_every_sample() {
    let tuple = all_kinds_tuple;
    let expected = [
        LogicalMessage::Begin(Begin {
            final_lsn: Lsn(0x16_B374_D848),
            commit_time: 1,
            xid: 7,
        }),
        LogicalMessage::Commit(Commit {
            flags: 0,
            commit_lsn: Lsn(10),
            end_lsn: Lsn(20),
            commit_time: 30,
        }),
        LogicalMessage::Origin(Origin {
            commit_lsn: Lsn(5),
            name: "node".into(),
        }),
        LogicalMessage::Relation(Relation {
            id: 16384,
            namespace: "public".into(),
            name: "trips".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![
                Column {
                    is_key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    is_key: false,
                    name: "title".into(),
                    type_oid: 1043,
                    type_modifier: 104,
                },
            ],
        }),
        LogicalMessage::Type(TypeInfo {
            id: 70000,
            namespace: String::new(),
            name: "mood".into(),
        }),
        LogicalMessage::Insert(Insert {
            relation_id: 16384,
            new: tuple(),
        }),
        LogicalMessage::Update(Update {
            relation_id: 16384,
            key: None,
            old: None,
            new: tuple(),
        }),
        LogicalMessage::Update(Update {
            relation_id: 16384,
            key: Some(tuple()),
            old: None,
            new: tuple(),
        }),
        LogicalMessage::Update(Update {
            relation_id: 16384,
            key: None,
            old: Some(tuple()),
            new: tuple(),
        }),
        LogicalMessage::Delete(Delete {
            relation_id: 16384,
            key: Some(tuple()),
            old: None,
        }),
        LogicalMessage::Delete(Delete {
            relation_id: 16384,
            key: None,
            old: Some(tuple()),
        }),
        LogicalMessage::Truncate(Truncate {
            cascade: true,
            restart_identity: true,
            relation_ids: vec![1, 2],
        }),
        LogicalMessage::Message(Message {
            transactional: true,
            lsn: Lsn(99),
            prefix: "app".into(),
            content: Bytes::from_static(b"hello"),
        }),
    ];
    let samples = samples();
    assert_eq!(samples.len(), expected.len());
    for (buf, want) in samples.into_iter().zip(expected) {
        assert_eq!(encode(&want), buf, "test encoder disagrees on {want:?}");
        assert_eq!(decode(buf), Ok(want));
    }
}

#[test]
fn decodes_every_replica_identity() {
    for (byte, identity) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'f', ReplicaIdentity::Full),
        (b'i', ReplicaIdentity::Index),
    ] {
        let buf = W::default()
            .u8(b'R')
            .u32(1)
            .cstr("s")
            .cstr("t")
            .u8(byte)
            .i16(0)
            .done();
        match decode(buf) {
            Ok(LogicalMessage::Relation(rel)) => assert_eq!(rel.replica_identity, identity),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn truncate_options_are_independent_bits() {
    for (options, cascade, restart_identity) in
        [(0, false, false), (1, true, false), (2, false, true)]
    {
        let buf = W::default().u8(b'T').u32(0).u8(options).done();
        assert_eq!(
            decode(buf),
            Ok(LogicalMessage::Truncate(Truncate {
                cascade,
                restart_identity,
                relation_ids: vec![],
            }))
        );
    }
}

#[test]
fn values_and_content_share_the_input_buffer() {
    let buf = W::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(2)
        .u8(b't')
        .sized(b"text")
        .u8(b'b')
        .sized(b"bin")
        .done();
    let range = buf.as_ptr_range();
    let Ok(LogicalMessage::Insert(insert)) = decode(buf.clone()) else {
        panic!("not an insert");
    };
    for value in &insert.new.0 {
        let (Value::Text(b) | Value::Binary(b)) = value else {
            panic!("unexpected {value:?}");
        };
        assert!(range.contains(&b.as_ptr()), "{value:?} was copied");
    }

    let buf = samples().pop().expect("message sample");
    let range = buf.as_ptr_range();
    let Ok(LogicalMessage::Message(m)) = decode(buf.clone()) else {
        panic!("not a message");
    };
    assert!(range.contains(&m.content.as_ptr()));
}

#[test]
fn every_truncation_is_an_error() {
    for buf in samples() {
        for len in 0..buf.len() {
            assert!(
                decode(buf.slice(..len)).is_err(),
                "{:?} cut to {len} bytes decoded",
                buf
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    for buf in samples() {
        let mut longer = BytesMut::from(&buf[..]);
        longer.put_u8(0);
        assert!(
            matches!(
                decode(longer.freeze()),
                Err(DecodeError::TrailingBytes { count: 1, .. })
            ),
            "{buf:?} with a trailing byte decoded"
        );
    }
}

#[test]
fn empty_input_is_an_error() {
    assert_eq!(
        decode(Bytes::new()),
        Err(DecodeError::UnexpectedEof {
            what: "message tag",
            needed: 1,
            remaining: 0,
        })
    );
}

#[test]
fn huge_counts_fail_before_allocating() {
    let tuple = W::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(30000)
        .raw(b"nnn")
        .done();
    assert_eq!(
        decode(tuple),
        Err(DecodeError::CountTooLarge {
            what: "tuple column count",
            count: 30000,
            remaining: 3,
        })
    );

    let relation = W::default()
        .u8(b'R')
        .u32(1)
        .cstr("s")
        .cstr("t")
        .u8(b'd')
        .i16(i16::MAX)
        .raw(&[0; 100])
        .done();
    assert!(matches!(
        decode(relation),
        Err(DecodeError::CountTooLarge { count: 32767, .. })
    ));

    let truncate = W::default().u8(b'T').u32(u32::MAX).u8(0).u32(1).done();
    assert!(matches!(
        decode(truncate),
        Err(DecodeError::CountTooLarge { remaining: 4, .. })
    ));

    let content = W::default()
        .u8(b'M')
        .u8(0)
        .u64(1)
        .cstr("p")
        .i32(i32::MAX)
        .raw(b"abc")
        .done();
    assert!(matches!(
        decode(content),
        Err(DecodeError::UnexpectedEof {
            needed: 2147483647,
            remaining: 3,
            ..
        })
    ));
}

#[test]
fn negative_lengths_and_counts_are_errors() {
    let text = W::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(-1)
        .done();
    assert_eq!(
        decode(text),
        Err(DecodeError::NegativeLength {
            what: "text value",
            len: -1,
        })
    );

    let binary = W::default()
        .u8(b'I')
        .u32(1)
        .u8(b'N')
        .i16(1)
        .u8(b'b')
        .i32(i32::MIN)
        .done();
    assert!(matches!(
        decode(binary),
        Err(DecodeError::NegativeLength { len: i32::MIN, .. })
    ));

    let content = W::default().u8(b'M').u8(0).u64(1).cstr("p").i32(-5).done();
    assert!(matches!(
        decode(content),
        Err(DecodeError::NegativeLength { len: -5, .. })
    ));

    let columns = W::default().u8(b'I').u32(1).u8(b'N').i16(-1).done();
    assert_eq!(
        decode(columns),
        Err(DecodeError::NegativeCount {
            what: "tuple column count",
            count: -1,
        })
    );

    let relation = W::default()
        .u8(b'R')
        .u32(1)
        .cstr("s")
        .cstr("t")
        .u8(b'f')
        .i16(-2)
        .done();
    assert!(matches!(
        decode(relation),
        Err(DecodeError::NegativeCount { count: -2, .. })
    ));
}

#[test]
fn bad_tags_are_errors() {
    let unknown = W::default().u8(b'Z').done();
    assert_eq!(decode(unknown), Err(DecodeError::UnknownMessageTag(b'Z')));

    let kind = W::default().u8(b'I').u32(1).u8(b'N').i16(1).u8(b'x').done();
    assert_eq!(decode(kind), Err(DecodeError::UnknownTupleKind(b'x')));

    let insert = W::default().u8(b'I').u32(1).u8(b'K').i16(0).done();
    assert!(matches!(
        decode(insert),
        Err(DecodeError::UnexpectedTupleTag { tag: b'K', .. })
    ));

    let update = W::default().u8(b'U').u32(1).u8(b'X').i16(0).done();
    assert!(matches!(
        decode(update),
        Err(DecodeError::UnexpectedTupleTag { tag: b'X', .. })
    ));

    let update_twice = W::default()
        .u8(b'U')
        .u32(1)
        .u8(b'K')
        .i16(0)
        .u8(b'O')
        .i16(0)
        .u8(b'N')
        .i16(0)
        .done();
    assert_eq!(
        decode(update_twice),
        Err(DecodeError::UnexpectedTupleTag {
            message: "Update",
            expected: "'N'",
            tag: b'O',
        })
    );

    let delete = W::default().u8(b'D').u32(1).u8(b'N').i16(0).done();
    assert!(matches!(
        decode(delete),
        Err(DecodeError::UnexpectedTupleTag { tag: b'N', .. })
    ));

    let identity = W::default()
        .u8(b'R')
        .u32(1)
        .cstr("s")
        .cstr("t")
        .u8(b'q')
        .i16(0)
        .done();
    assert_eq!(decode(identity), Err(DecodeError::BadReplicaIdentity(b'q')));
}

#[test]
fn bad_strings_are_errors() {
    let utf8 = W::default().u8(b'O').u64(1).raw(b"\xff\xfe\0").done();
    assert_eq!(
        decode(utf8),
        Err(DecodeError::InvalidUtf8 {
            what: "origin name"
        })
    );

    let nul = W::default().u8(b'O').u64(1).raw(b"node").done();
    assert_eq!(
        decode(nul),
        Err(DecodeError::MissingNul {
            what: "origin name"
        })
    );
}

#[test]
fn errors_read_well() {
    let cases = [
        (
            DecodeError::UnknownMessageTag(b'Z'),
            "unknown pgoutput message tag 'Z' (0x5a)",
        ),
        (
            DecodeError::UnknownTupleKind(0),
            "unknown tuple value kind 0x00",
        ),
        (
            DecodeError::UnexpectedEof {
                what: "Begin xid",
                needed: 4,
                remaining: 1,
            },
            "unexpected end of data reading Begin xid: needed 4 bytes, 1 left",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

fn name() -> impl Strategy<Value = String> {
    "[^\u{0}]{0,8}"
}

fn bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from)
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        Just(Value::UnchangedToast),
        bytes().prop_map(Value::Text),
        bytes().prop_map(Value::Binary),
    ]
}

fn tuple() -> impl Strategy<Value = Tuple> {
    prop::collection::vec(value(), 0..6).prop_map(Tuple)
}

fn lsn() -> impl Strategy<Value = Lsn> {
    any::<u64>().prop_map(Lsn)
}

fn message() -> impl Strategy<Value = LogicalMessage> {
    let identity = prop_oneof![
        Just(ReplicaIdentity::Default),
        Just(ReplicaIdentity::Nothing),
        Just(ReplicaIdentity::Full),
        Just(ReplicaIdentity::Index),
    ];
    let column = (any::<bool>(), name(), any::<u32>(), any::<i32>()).prop_map(
        |(is_key, name, type_oid, type_modifier)| Column {
            is_key,
            name,
            type_oid,
            type_modifier,
        },
    );
    let update_old = prop_oneof![
        Just((None, None)),
        tuple().prop_map(|t| (Some(t), None)),
        tuple().prop_map(|t| (None, Some(t))),
    ];
    let delete_old = prop_oneof![
        tuple().prop_map(|t| (Some(t), None)),
        tuple().prop_map(|t| (None, Some(t))),
    ];
    prop_oneof![
        (lsn(), any::<i64>(), any::<u32>()).prop_map(|(final_lsn, commit_time, xid)| {
            LogicalMessage::Begin(Begin {
                final_lsn,
                commit_time,
                xid,
            })
        }),
        (any::<u8>(), lsn(), lsn(), any::<i64>()).prop_map(
            |(flags, commit_lsn, end_lsn, commit_time)| {
                LogicalMessage::Commit(Commit {
                    flags,
                    commit_lsn,
                    end_lsn,
                    commit_time,
                })
            }
        ),
        (lsn(), name())
            .prop_map(|(commit_lsn, name)| { LogicalMessage::Origin(Origin { commit_lsn, name }) }),
        (
            any::<u32>(),
            name(),
            name(),
            identity,
            prop::collection::vec(column, 0..5)
        )
            .prop_map(|(id, namespace, name, replica_identity, columns)| {
                LogicalMessage::Relation(Relation {
                    id,
                    namespace,
                    name,
                    replica_identity,
                    columns,
                })
            }),
        (any::<u32>(), name(), name()).prop_map(|(id, namespace, name)| {
            LogicalMessage::Type(TypeInfo {
                id,
                namespace,
                name,
            })
        }),
        (any::<u32>(), tuple())
            .prop_map(|(relation_id, new)| { LogicalMessage::Insert(Insert { relation_id, new }) }),
        (any::<u32>(), update_old, tuple()).prop_map(|(relation_id, (key, old), new)| {
            LogicalMessage::Update(Update {
                relation_id,
                key,
                old,
                new,
            })
        }),
        (any::<u32>(), delete_old).prop_map(|(relation_id, (key, old))| {
            LogicalMessage::Delete(Delete {
                relation_id,
                key,
                old,
            })
        }),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(any::<u32>(), 0..8)
        )
            .prop_map(|(cascade, restart_identity, relation_ids)| {
                LogicalMessage::Truncate(Truncate {
                    cascade,
                    restart_identity,
                    relation_ids,
                })
            }),
        (any::<bool>(), lsn(), name(), bytes()).prop_map(
            |(transactional, lsn, prefix, content)| {
                LogicalMessage::Message(Message {
                    transactional,
                    lsn,
                    prefix,
                    content,
                })
            }
        ),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(Bytes::from(buf));
    }

    #[test]
    fn arbitrary_bodies_never_panic(
        tag in prop::sample::select(b"BCORYIUDTM".to_vec()),
        body in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut buf = vec![tag];
        buf.extend(body);
        let _ = decode(Bytes::from(buf));
    }

    #[test]
    fn mutated_messages_never_panic(
        msg in message(),
        index in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut buf = encode(&msg).to_vec();
        let i = index.index(buf.len());
        buf[i] = byte;
        let _ = decode(Bytes::from(buf));
    }

    #[test]
    fn valid_messages_round_trip(msg in message()) {
        prop_assert_eq!(decode(encode(&msg)), Ok(msg));
    }

    #[test]
    fn truncated_messages_are_errors(msg in message(), cut in any::<prop::sample::Index>()) {
        let buf = encode(&msg);
        let len = cut.index(buf.len());
        prop_assert!(decode(buf.slice(..len)).is_err());
    }
}
