//! The streaming replication messages carried in CopyData during `START_REPLICATION`.
//!
//! The server sends [`XLogData`] (`w`) and [`PrimaryKeepalive`] (`k`), read by [`parse`]; the
//! client answers with a [`StandbyStatus`] (`r`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use crate::pgoutput::{DecodeError, PgTimestamp, Reader};
use crate::Lsn;

/// A message from the server during streaming replication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    XLogData(XLogData),
    PrimaryKeepalive(PrimaryKeepalive),
}

/// A chunk of WAL (`w`); for logical replication, one message of the output plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XLogData {
    /// Position of the start of `data` in the WAL.
    pub wal_start: Lsn,
    /// The end of the WAL on the server.
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// The output plugin's message, for [`pgoutput::decode`](crate::pgoutput::decode).
    pub data: Bytes,
}

/// A heartbeat from the server (`k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeepalive {
    /// The end of the WAL on the server.
    pub wal_end: Lsn,
    pub send_time: PgTimestamp,
    /// The server wants a [`StandbyStatus`] now, or it may time the connection out.
    pub reply_requested: bool,
}

/// Parses the payload of one CopyData message sent by the server.
///
/// The XLogData payload is a slice of `buf`, not a copy.
pub fn parse(buf: Bytes) -> Result<ReplicationMessage, DecodeError> {
    let mut r = Reader::new(buf);
    match r.u8("replication message tag")? {
        b'w' => Ok(ReplicationMessage::XLogData(XLogData {
            wal_start: r.lsn("XLogData WAL start")?,
            wal_end: r.lsn("XLogData WAL end")?,
            send_time: r.i64("XLogData send time")?,
            data: r.rest(),
        })),
        b'k' => {
            let keepalive = PrimaryKeepalive {
                wal_end: r.lsn("keepalive WAL end")?,
                send_time: r.i64("keepalive send time")?,
                reply_requested: r.u8("keepalive reply flag")? != 0,
            };
            r.finish("PrimaryKeepalive")?;
            Ok(ReplicationMessage::PrimaryKeepalive(keepalive))
        }
        tag => Err(DecodeError::UnknownReplicationTag(tag)),
    }
}

/// The client's progress report (`r`, Standby Status Update).
///
/// For logical replication the server takes `flush` as the position confirmed for the slot:
/// WAL before it may be recycled and a restarted stream resumes from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandbyStatus {
    /// Everything before this position has been received.
    pub write: Lsn,
    /// Everything before this position has been durably handled.
    pub flush: Lsn,
    /// Everything before this position has been applied.
    pub apply: Lsn,
    pub client_time: PgTimestamp,
    /// Ask the server to answer with a keepalive at once.
    pub reply_requested: bool,
}

impl StandbyStatus {
    /// Appends the 34-byte CopyData payload of this message to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(34);
        buf.put_u8(b'r');
        buf.put_u64(self.write.0);
        buf.put_u64(self.flush.0);
        buf.put_u64(self.apply.0);
        buf.put_i64(self.client_time);
        buf.put_u8(self.reply_requested.into());
    }
}

/// Seconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// The current time as a PostgreSQL timestamp: microseconds since 2000-01-01 UTC.
pub fn pg_now() -> PgTimestamp {
    let pg_epoch = UNIX_EPOCH + Duration::from_secs(PG_EPOCH_UNIX_SECS);
    match SystemTime::now().duration_since(pg_epoch) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn encode(msg: &ReplicationMessage) -> Bytes {
        let mut buf = BytesMut::new();
        match msg {
            ReplicationMessage::XLogData(x) => {
                buf.put_u8(b'w');
                buf.put_u64(x.wal_start.0);
                buf.put_u64(x.wal_end.0);
                buf.put_i64(x.send_time);
                buf.put_slice(&x.data);
            }
            ReplicationMessage::PrimaryKeepalive(k) => {
                buf.put_u8(b'k');
                buf.put_u64(k.wal_end.0);
                buf.put_i64(k.send_time);
                buf.put_u8(k.reply_requested.into());
            }
        }
        buf.freeze()
    }

    fn xlog_data() -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u8(b'w');
        buf.put_u64(0x1_0000_0010);
        buf.put_u64(0x1_0000_0020);
        buf.put_i64(777);
        buf.put_slice(b"B payload");
        buf.freeze()
    }

    fn keepalive(reply: u8) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u8(b'k');
        buf.put_u64(0x2_0000_0000);
        buf.put_i64(-5);
        buf.put_u8(reply);
        buf.freeze()
    }

    #[test]
    fn parses_xlog_data_without_copying() {
        let buf = xlog_data();
        let range = buf.as_ptr_range();
        let Ok(ReplicationMessage::XLogData(x)) = parse(buf.clone()) else {
            panic!("not XLogData");
        };
        assert_eq!(
            x,
            XLogData {
                wal_start: Lsn(0x1_0000_0010),
                wal_end: Lsn(0x1_0000_0020),
                send_time: 777,
                data: Bytes::from_static(b"B payload"),
            }
        );
        assert!(range.contains(&x.data.as_ptr()));
    }

    #[test]
    fn parses_xlog_data_with_empty_payload() {
        let buf = xlog_data().slice(..25);
        assert!(matches!(
            parse(buf),
            Ok(ReplicationMessage::XLogData(XLogData { data, .. })) if data.is_empty()
        ));
    }

    #[test]
    fn parses_keepalive() {
        for (byte, reply_requested) in [(0, false), (1, true)] {
            assert_eq!(
                parse(keepalive(byte)),
                Ok(ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                    wal_end: Lsn(0x2_0000_0000),
                    send_time: -5,
                    reply_requested,
                }))
            );
        }
    }

    #[test]
    fn truncated_headers_are_errors() {
        let xlog = xlog_data();
        for len in 0..25 {
            assert!(parse(xlog.slice(..len)).is_err(), "XLogData cut to {len}");
        }
        let keepalive = keepalive(1);
        for len in 0..keepalive.len() {
            assert!(
                parse(keepalive.slice(..len)).is_err(),
                "keepalive cut to {len}"
            );
        }
    }

    #[test]
    fn keepalive_with_trailing_bytes_is_an_error() {
        let mut buf = BytesMut::from(&keepalive(0)[..]);
        buf.put_u8(0);
        assert_eq!(
            parse(buf.freeze()),
            Err(DecodeError::TrailingBytes {
                message: "PrimaryKeepalive",
                count: 1,
            })
        );
    }

    #[test]
    fn unknown_tag_is_an_error() {
        assert_eq!(
            parse(Bytes::from_static(b"r")),
            Err(DecodeError::UnknownReplicationTag(b'r'))
        );
        assert!(matches!(
            parse(Bytes::new()),
            Err(DecodeError::UnexpectedEof { .. })
        ));
    }

    #[test]
    fn encodes_standby_status() {
        let status = StandbyStatus {
            write: Lsn(0x0102_0304_0506_0708),
            flush: Lsn(0x10),
            apply: Lsn(0x20),
            client_time: -2,
            reply_requested: true,
        };
        let mut buf = BytesMut::from(&b"x"[..]);
        status.encode(&mut buf);
        let mut want = vec![b'x', b'r', 1, 2, 3, 4, 5, 6, 7, 8];
        want.extend([0, 0, 0, 0, 0, 0, 0, 0x10]);
        want.extend([0, 0, 0, 0, 0, 0, 0, 0x20]);
        want.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]);
        want.push(1);
        assert_eq!(&buf[..], &want[..]);
        assert_eq!(buf.len() - 1, 34);
    }

    #[test]
    fn pg_now_is_after_2024() {
        let start_of_2024 = (1_704_067_200 - 946_684_800) * 1_000_000;
        let now = pg_now();
        assert!(now > start_of_2024, "{now}");
        assert!(pg_now() >= now);
    }

    fn message() -> impl Strategy<Value = ReplicationMessage> {
        let lsn = || any::<u64>().prop_map(Lsn);
        prop_oneof![
            (
                lsn(),
                lsn(),
                any::<i64>(),
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(wal_start, wal_end, send_time, data)| {
                    ReplicationMessage::XLogData(XLogData {
                        wal_start,
                        wal_end,
                        send_time,
                        data: data.into(),
                    })
                }),
            (lsn(), any::<i64>(), any::<bool>()).prop_map(
                |(wal_end, send_time, reply_requested)| {
                    ReplicationMessage::PrimaryKeepalive(PrimaryKeepalive {
                        wal_end,
                        send_time,
                        reply_requested,
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(Bytes::from(buf));
        }

        #[test]
        fn arbitrary_bodies_never_panic(
            tag in prop::sample::select(b"wk".to_vec()),
            body in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let mut buf = vec![tag];
            buf.extend(body);
            let _ = parse(Bytes::from(buf));
        }

        #[test]
        fn valid_messages_round_trip(msg in message()) {
            prop_assert_eq!(parse(encode(&msg)), Ok(msg));
        }
    }
}
