//! A resumable stream of committed transactions from one logical slot.
//!
//! Guarantees: every transaction committed after the slot's confirmed position is handed out
//! at least once, in commit order. The position confirmed to PostgreSQL never passes what the
//! caller [`confirm`](ReplicationStream::confirm)ed, except while idle, when everything handed
//! out is confirmed and the server reports a later position with nothing for us before it.
//! After a connection loss the stream reconnects with exponential backoff and jitter and
//! resumes from the confirmed position, so a transaction may arrive again, never be skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rand::Rng;
use tokio::time::{sleep, timeout_at, Instant};

use crate::commands::start_replication_sql;
use crate::conn::{Connection, CopyMessage};
use crate::copy_data::{self, pg_now, ReplicationMessage, StandbyStatus};
use crate::pgoutput::{self, Begin, Commit, LogicalMessage, Message, Relation, Tuple};
use crate::{ConnectConfig, Error, Lsn};

/// What to stream and how to behave on failures.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub connect: ConnectConfig,
    pub slot: String,
    pub publications: Vec<String>,
    /// Create the slot when it does not exist, at start and after it was dropped.
    pub create_slot: bool,
    /// A temporary slot disappears with the connection.
    pub temporary_slot: bool,
    /// Also stream `pg_logical_emit_message` messages.
    pub messages: bool,
    /// Where to start; `Lsn::ZERO` starts at the slot's confirmed position.
    pub start_lsn: Lsn,
    /// How often the standby status (the confirmed position) is sent.
    pub status_interval: Duration,
    /// A connection that has heard nothing from the server for this long is dropped.
    pub silence_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl StreamConfig {
    pub fn new(connect: ConnectConfig, slot: &str, publication: &str) -> StreamConfig {
        StreamConfig {
            connect,
            slot: slot.to_owned(),
            publications: vec![publication.to_owned()],
            create_slot: true,
            temporary_slot: false,
            messages: true,
            start_lsn: Lsn::ZERO,
            status_interval: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// One step of the stream. A transaction is `Begin`, its changes and transactional messages,
/// then `Commit`; with pgoutput protocol version 1 only committed transactions are sent, so
/// a change is final when it arrives. Memory use does not depend on transaction size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Begin(Begin),
    Change(Change),
    /// A logical decoding message: inside a transaction if `transactional`, else on its own.
    Message(Message),
    /// The transaction is complete; confirm `end_lsn` once it is handled.
    Commit(Commit),
    /// The connection was re-established. A transaction that was cut short will be sent again
    /// whole; `slot_created` means the slot had vanished and was created anew, so changes
    /// committed meanwhile are not in the stream and must be recovered from the tables.
    Reconnected {
        resume_from: Lsn,
        slot_created: bool,
    },
}

/// A row change, with the shape of its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Insert {
        relation: Arc<Relation>,
        new: Tuple,
    },
    Update {
        relation: Arc<Relation>,
        key: Option<Tuple>,
        old: Option<Tuple>,
        new: Tuple,
    },
    Delete {
        relation: Arc<Relation>,
        key: Option<Tuple>,
        old: Option<Tuple>,
    },
    Truncate {
        relations: Vec<Arc<Relation>>,
        cascade: bool,
        restart_identity: bool,
    },
}

/// Counters for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Highest WAL position the server said it sent.
    pub received: Lsn,
    /// Position reported to the server as flushed.
    pub acknowledged: Lsn,
    pub reconnects: u64,
    pub bytes: u64,
    pub transactions: u64,
    pub changes: u64,
}

pub struct ReplicationStream {
    config: StreamConfig,
    conn: Option<Connection>,
    relations: HashMap<u32, Arc<Relation>>,
    confirmed: Lsn,
    /// Positions the caller reported for the status's write and apply fields, if any.
    written: Option<Lsn>,
    applied: Option<Lsn>,
    delivered_end: Lsn,
    in_transaction: bool,
    next_status: Instant,
    last_heard: Instant,
    failures: u32,
    pending: Option<Event>,
    stats: StreamStats,
    scratch: BytesMut,
}

impl ReplicationStream {
    /// Connects and starts streaming. Errors of the first attempt are returned as they are,
    /// so a misconfiguration shows at once; later losses are retried inside [`Self::next`].
    pub async fn start(config: StreamConfig) -> Result<ReplicationStream, Error> {
        let now = Instant::now();
        let mut stream = ReplicationStream {
            confirmed: config.start_lsn,
            config,
            conn: None,
            written: None,
            applied: None,
            relations: HashMap::new(),
            delivered_end: Lsn::ZERO,
            in_transaction: false,
            next_status: now,
            last_heard: now,
            failures: 0,
            pending: None,
            stats: StreamStats::default(),
            scratch: BytesMut::with_capacity(64),
        };
        stream.stats.acknowledged = stream.confirmed;
        stream.open().await?;
        Ok(stream)
    }

    /// The next event. Transient failures are retried with backoff and surface as
    /// [`Event::Reconnected`]; definite ones (authentication, missing publication, undecodable
    /// data) are returned, and calling `next` again retries.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(event) = self.pending.take() {
                return Ok(event);
            }
            if self.conn.is_none() {
                self.reconnect().await?;
                continue;
            }
            match self.step().await {
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(e) => {
                    self.conn = None;
                    if !e.is_transient() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, slot = %self.config.slot, "replication connection lost");
                }
            }
        }
    }

    /// Marks everything up to `lsn` (a commit's `end_lsn`) as handled; it is reported to the
    /// server with the next status update.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
        self.stats.acknowledged = self.stats.acknowledged.max(lsn);
    }

    /// Sets all three positions of the standby status, for a caller that tells apart data
    /// received (`write`), made durable (`flush`, which is what the slot keeps) and acted on
    /// (`apply`). Positions never move backwards. [`Self::confirm`] is `flush` alone; without
    /// this call `write` is what arrived and `apply` equals `flush`.
    pub fn report_positions(&mut self, write: Lsn, flush: Lsn, apply: Lsn) {
        self.written = Some(self.written.unwrap_or(Lsn::ZERO).max(write));
        self.applied = Some(self.applied.unwrap_or(Lsn::ZERO).max(apply));
        self.confirm(flush);
    }

    /// The position the caller confirmed.
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Sends the standby status now instead of at the next interval.
    pub async fn send_status(&mut self) -> Result<(), Error> {
        self.status(false).await
    }

    /// Reports the confirmed position and ends streaming cleanly.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if self.conn.is_none() {
            return Ok(());
        }
        self.status(false).await?;
        match self.conn.take() {
            Some(conn) => conn.finish_copy().await,
            None => Ok(()),
        }
    }

    async fn reconnect(&mut self) -> Result<(), Error> {
        loop {
            if self.failures > 0 {
                sleep(self.backoff()).await;
            }
            self.failures = self.failures.saturating_add(1);
            match self.open().await {
                Ok(slot_created) => {
                    self.stats.reconnects += 1;
                    self.pending = Some(Event::Reconnected {
                        resume_from: self.stats.acknowledged,
                        slot_created,
                    });
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    tracing::warn!(error = %e, attempt = self.failures, "replication reconnect failed");
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn backoff(&self) -> Duration {
        let exp = self.failures.saturating_sub(1).min(16);
        let ceiling = self
            .config
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max);
        let jitter = rand::rng().random_range(0.5..=1.0);
        ceiling.mul_f64(jitter)
    }

    /// Opens a connection and starts streaming; returns whether the slot had to be created.
    async fn open(&mut self) -> Result<bool, Error> {
        let mut conn = Connection::connect(&self.config.connect).await?;
        let mut created = false;
        if self.config.create_slot {
            match conn
                .create_slot(&self.config.slot, self.config.temporary_slot)
                .await
            {
                Ok(slot) => {
                    tracing::info!(slot = %slot.name, consistent_point = %slot.consistent_point, "created replication slot");
                    created = true;
                }
                Err(e) if e.code() == Some("42710") => {}
                Err(e) => return Err(e),
            }
        }
        let sql = start_replication_sql(
            &self.config.slot,
            self.stats.acknowledged,
            &self.config.publications,
            self.config.messages,
        )?;
        conn.start_copy_both(&sql).await?;
        tracing::info!(slot = %self.config.slot, from = %self.stats.acknowledged, "replication streaming");
        self.conn = Some(conn);
        self.relations.clear();
        self.in_transaction = false;
        self.delivered_end = self.confirmed;
        self.last_heard = Instant::now();
        self.next_status = self.last_heard + self.config.status_interval;
        self.failures = 0;
        Ok(created)
    }

    async fn step(&mut self) -> Result<Option<Event>, Error> {
        if Instant::now() >= self.next_status {
            let silent = self.last_heard.elapsed();
            if silent >= self.config.silence_timeout {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no message from the server for {silent:?}"),
                )));
            }
            self.status(silent >= self.config.status_interval).await?;
        }
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let message = match timeout_at(self.next_status, conn.read_copy()).await {
            Err(_) => return Ok(None),
            Ok(message) => message?,
        };
        self.last_heard = Instant::now();
        let data = match message {
            CopyMessage::Done => {
                return Err(Error::Protocol(
                    "the server ended the replication stream".into(),
                ))
            }
            CopyMessage::Data(data) => data,
        };
        self.stats.bytes += data.len() as u64;
        match copy_data::parse(data)? {
            ReplicationMessage::XLogData(x) => {
                self.stats.received = self.stats.received.max(x.wal_end);
                self.on_logical(pgoutput::decode(x.data)?)
            }
            ReplicationMessage::PrimaryKeepalive(k) => {
                self.stats.received = self.stats.received.max(k.wal_end);
                if !self.in_transaction && self.confirmed >= self.delivered_end {
                    self.stats.acknowledged = self.stats.acknowledged.max(k.wal_end);
                }
                if k.reply_requested {
                    self.status(false).await?;
                }
                Ok(None)
            }
        }
    }

    fn on_logical(&mut self, message: LogicalMessage) -> Result<Option<Event>, Error> {
        let change = match message {
            LogicalMessage::Begin(begin) => {
                self.in_transaction = true;
                return Ok(Some(Event::Begin(begin)));
            }
            LogicalMessage::Commit(commit) => {
                self.in_transaction = false;
                self.delivered_end = self.delivered_end.max(commit.end_lsn);
                self.stats.transactions += 1;
                return Ok(Some(Event::Commit(commit)));
            }
            LogicalMessage::Message(message) => return Ok(Some(Event::Message(message))),
            LogicalMessage::Relation(relation) => {
                self.relations.insert(relation.id, Arc::new(relation));
                return Ok(None);
            }
            LogicalMessage::Origin(_) | LogicalMessage::Type(_) => return Ok(None),
            LogicalMessage::Insert(i) => Change::Insert {
                relation: self.relation(i.relation_id)?,
                new: i.new,
            },
            LogicalMessage::Update(u) => Change::Update {
                relation: self.relation(u.relation_id)?,
                key: u.key,
                old: u.old,
                new: u.new,
            },
            LogicalMessage::Delete(d) => Change::Delete {
                relation: self.relation(d.relation_id)?,
                key: d.key,
                old: d.old,
            },
            LogicalMessage::Truncate(t) => Change::Truncate {
                relations: t
                    .relation_ids
                    .iter()
                    .map(|id| self.relation(*id))
                    .collect::<Result<_, _>>()?,
                cascade: t.cascade,
                restart_identity: t.restart_identity,
            },
        };
        self.stats.changes += 1;
        Ok(Some(Event::Change(change)))
    }

    fn relation(&self, id: u32) -> Result<Arc<Relation>, Error> {
        self.relations.get(&id).cloned().ok_or_else(|| {
            Error::Protocol(format!("change for relation {id} before its description"))
        })
    }

    async fn status(&mut self, reply_requested: bool) -> Result<(), Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        let acked = self.stats.acknowledged;
        self.scratch.clear();
        StandbyStatus {
            write: self.written.unwrap_or(self.stats.received).max(acked),
            flush: acked,
            apply: self.applied.unwrap_or(acked),
            client_time: pg_now(),
            reply_requested,
        }
        .encode(&mut self.scratch);
        conn.queue_copy_data(&self.scratch)?;
        conn.flush().await?;
        self.next_status = Instant::now() + self.config.status_interval;
        Ok(())
    }
}
