//! Collaborative documents (Yjs CRDTs) with PostgreSQL as the source of truth.
//!
//! Guarantees:
//! - An update from an editor is decoded, size-capped and checked for missing dependencies
//!   before it touches the in-memory document; a refused update changes nothing.
//! - An accepted update is committed to `realtime.doc_updates` (concurrent updates of a
//!   document share one transaction) before any editor receives it; the echo to the sender is
//!   its durability acknowledgement. A failed commit unloads the document and disconnects its
//!   editors, who resynchronise with what is stored.
//! - Updates committed by other nodes or by SQL arrive through the replication stream and are
//!   applied and relayed (Yjs updates are idempotent, so an update seen twice is harmless).
//! - Awareness (cursors, selections, typing) stays in memory: relayed, throttled to 20 Hz per
//!   connection, and expired after 30 s of silence or when its connection leaves.
//! - Versions are full snapshots taken from what is stored; the latest is the base documents
//!   load from, and the updates it covers are deleted (compaction) without blocking editors.

pub mod content;
mod settings;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use deadpool_postgres::Pool;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, OnceCell};
use yrs::block::ClientID;
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

pub use settings::DocSettings;

use crate::gateway::store::StoreError;
use crate::hub::{CloseReason, Outbox};
use crate::protocol;

/// Where a connection's document messages go.
#[derive(Clone)]
pub enum Peer {
    /// `/yjs/{doc}`: y-websocket binary messages.
    Binary(Arc<Outbox<Bytes>>),
    /// `/ws`: JSON envelopes with base64 payloads.
    Json(Arc<Outbox>),
}

impl Peer {
    fn close(&self, reason: CloseReason) {
        match self {
            Peer::Binary(outbox) => outbox.close(reason),
            Peer::Json(outbox) => outbox.close(reason),
        }
    }
}

/// Why an editor's message was refused; the connection is closed for a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the update is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("the update cannot be decoded: {0}")]
    Undecodable(String),
    #[error("the update depends on changes the document does not have")]
    MissingDependency,
    #[error("too many updates are waiting to be stored; slow down")]
    Overloaded,
    #[error("the document is being reloaded; reconnect")]
    Unavailable,
}

impl Refused {
    pub fn code(&self) -> &'static str {
        match self {
            Refused::TooLarge { .. } => "update_too_large",
            Refused::Undecodable(_) => "invalid_update",
            Refused::MissingDependency => "missing_dependency",
            Refused::Overloaded => "overloaded",
            Refused::Unavailable => "unavailable",
        }
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct DocStats {
    pub updates_stored: AtomicU64,
    pub commits: AtomicU64,
    pub commit_failures: AtomicU64,
    pub refused: AtomicU64,
    pub remote_updates: AtomicU64,
    pub versions: AtomicU64,
}

/// The loaded documents of this node.
pub struct Docs {
    pool: Pool,
    /// This process's id in `realtime.doc_updates.origin`.
    node: String,
    pub settings: DocSettings,
    pub stats: DocStats,
    loaded: Mutex<HashMap<String, Arc<DocHandle>>>,
}

/// An update waiting for the group commit.
struct Pending {
    update: Vec<u8>,
    user: String,
    ack: Option<oneshot::Sender<Result<i64, String>>>,
}

struct Aware {
    clock: u32,
    json: Arc<str>,
    conn: u64,
    seen: Instant,
}

struct PeerState {
    peer: Peer,
    user: String,
    /// Access came from the token's `rooms` patterns, not from a membership row.
    by_token: bool,
    awareness_sent: Instant,
    /// Awareness changes held back by the 20 Hz throttle.
    held: Vec<ClientID>,
}

struct State {
    doc: Doc,
    ready: bool,
    /// Updates from the replication stream that arrived while the document was loading.
    early: Vec<Vec<u8>>,
    closed: bool,
    peers: HashMap<u64, PeerState>,
    awareness: HashMap<ClientID, Aware>,
    queued: usize,
    /// Latest update seq stored (by this node or seen in the replication stream).
    seq: i64,
    content_seq: i64,
    content_at: Instant,
    unversioned: u64,
    versioned_at: Instant,
    cutting: bool,
    idle_since: Option<Instant>,
}

pub struct DocHandle {
    pub name: String,
    state: Mutex<State>,
    commits: mpsc::UnboundedSender<Pending>,
    loaded: OnceCell<()>,
}

fn has_missing(doc: &Doc) -> bool {
    let txn = doc.transact();
    let store = txn.store();
    store.pending_update().is_some() || store.pending_ds().is_some()
}

/// What [`DocHandle::accept`] does with an editor's update, and nothing else: the size cap,
/// decoding (a yrs panic refuses like an error), the missing-dependency pre-check, the apply
/// (under `catch_unwind`), and the check that it left nothing pending. `Ok` holds the update's
/// effect, `None` when it changed nothing. A refusal with a reason left `doc` partly applied or
/// broken (the caller must discard it); one without left `doc` unchanged.
pub fn check_and_apply(
    doc: &Doc,
    bytes: &[u8],
    limit: usize,
) -> Result<Option<Vec<u8>>, (Refused, Option<&'static str>)> {
    if bytes.len() > limit {
        let size = bytes.len();
        return Err((Refused::TooLarge { size, limit }, None));
    }
    if !plausible_count(bytes, 2) {
        return Err((
            Refused::Undecodable("implausible client count".into()),
            None,
        ));
    }
    let update = match std::panic::catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(update)) => update,
        Ok(Err(e)) => return Err((Refused::Undecodable(e.to_string()), None)),
        Err(_) => return Err((Refused::Undecodable("malformed update".into()), None)),
    };
    let sv = doc.transact().state_vector();
    if update
        .state_vector_lower()
        .iter()
        .any(|(client, clock)| *clock > sv.get(client))
    {
        return Err((Refused::MissingDependency, None));
    }
    let pending_before = has_missing(doc);
    let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut txn = doc.transact_mut();
        txn.apply_update(update)
            .map(|()| txn.has_changes().then(|| txn.encode_update_v1()))
    }));
    let changes = match applied {
        Ok(Ok(changes)) => changes,
        Ok(Err(e)) => {
            let why = "an update that failed to apply";
            return Err((Refused::Undecodable(e.to_string()), Some(why)));
        }
        Err(_) => {
            let why = "an update that made yrs panic";
            return Err((Refused::Undecodable("malformed update".into()), Some(why)));
        }
    };
    if !pending_before && has_missing(doc) {
        let why = "an update with missing dependencies";
        return Err((Refused::MissingDependency, Some(why)));
    }
    Ok(changes)
}

/// Reads a lib0 variable-length unsigned integer at `*at`.
fn varuint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Whether the count that starts `encoded` fits in what follows, at `min_entry` bytes per entry
/// at least. yrs reserves memory for such counts before reading the entries, so an 8-byte
/// message could otherwise make it allocate gigabytes. Applies to state vectors (2 bytes per
/// entry), awareness updates (3) and updates (2 per client).
pub fn plausible_count(encoded: &[u8], min_entry: usize) -> bool {
    let mut at = 0;
    varuint(encoded, &mut at)
        .is_some_and(|count| count.saturating_mul(min_entry as u64) <= (encoded.len() - at) as u64)
}

/// [`plausible_count`] for the payload of a y-protocols message (`frame`), before yrs decodes it.
pub fn plausible_message(frame: &[u8]) -> bool {
    let mut at = 0;
    let (tag, sub) = match varuint(frame, &mut at) {
        Some(0) => (0, varuint(frame, &mut at)),
        Some(1) => (1, None),
        _ => return true,
    };
    let Some(len) = varuint(frame, &mut at) else {
        return true;
    };
    let Some(payload) = usize::try_from(len)
        .ok()
        .and_then(|len| frame.get(at..at.checked_add(len)?))
    else {
        return true;
    };
    match (tag, sub) {
        (1, _) => plausible_count(payload, 3),
        (0, Some(0)) => plausible_count(payload, 2),
        (0, Some(1 | 2)) => payload.is_empty() || plausible_count(payload, 2),
        _ => true,
    }
}

fn sync_update_message(update: &[u8]) -> Bytes {
    Bytes::from(Message::Sync(SyncMessage::Update(update.to_vec())).encode_v1())
}

/// Encodes bytes for a JSON message.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes base64 from a JSON client message.
pub fn from_b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

impl Docs {
    pub fn new(pool: Pool, settings: DocSettings) -> Docs {
        Docs {
            pool,
            node: uuid::Uuid::new_v4().to_string(),
            settings,
            stats: DocStats::default(),
            loaded: Mutex::default(),
        }
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Loaded documents.
    pub fn loaded(&self) -> usize {
        self.loaded.lock().len()
    }

    /// Loads `name` if needed and adds the connection as a peer. `by_token`: the user's access
    /// comes from the token (a deleted membership row does not revoke it).
    pub async fn join(
        self: &Arc<Self>,
        name: &str,
        conn: u64,
        user: &str,
        by_token: bool,
        peer: Peer,
    ) -> Result<Arc<DocHandle>, StoreError> {
        loop {
            let handle = self.handle(name);
            handle.loaded.get_or_try_init(|| self.load(&handle)).await?;
            let mut state = handle.state.lock();
            if state.closed {
                continue;
            }
            state.idle_since = None;
            state.peers.insert(
                conn,
                PeerState {
                    peer: peer.clone(),
                    user: user.to_owned(),
                    by_token,
                    awareness_sent: Instant::now(),
                    held: Vec::new(),
                },
            );
            drop(state);
            return Ok(handle);
        }
    }

    /// Loads `name` if needed and queues `change(doc)` for the group commit; resolves with
    /// the stored seq.
    async fn change(
        self: &Arc<Self>,
        name: &str,
        user: &str,
        change: impl Fn(&Doc) -> Vec<u8>,
    ) -> Result<i64, StoreError> {
        loop {
            let handle = self.handle(name);
            handle.loaded.get_or_try_init(|| self.load(&handle)).await?;
            let (ack, stored) = oneshot::channel();
            let queued = {
                let mut state = handle.state.lock();
                if state.closed {
                    continue;
                }
                state.idle_since = Some(Instant::now());
                let update = change(&state.doc);
                handle.enqueue(&mut state, update, user, Some(ack))
            };
            match queued {
                Ok(()) => {}
                Err(Refused::Unavailable) => continue,
                Err(e) => return Err(StoreError::Unavailable(e.to_string())),
            }
            return stored
                .await
                .map_err(|_| StoreError::Unavailable("the document was unloaded".into()))?
                .map_err(StoreError::Unavailable);
        }
    }

    /// The loaded handle of `name`, or a new one (not yet loaded) whose task is started.
    fn handle(self: &Arc<Self>, name: &str) -> Arc<DocHandle> {
        let mut loaded = self.loaded.lock();
        if let Some(handle) = loaded.get(name) {
            return handle.clone();
        }
        let (commits, queue) = mpsc::unbounded_channel();
        let now = Instant::now();
        let handle = Arc::new(DocHandle {
            name: name.to_owned(),
            state: Mutex::new(State {
                doc: Doc::new(),
                ready: false,
                early: Vec::new(),
                closed: false,
                peers: HashMap::new(),
                awareness: HashMap::new(),
                queued: 0,
                seq: 0,
                content_seq: 0,
                content_at: now,
                unversioned: 0,
                versioned_at: now,
                cutting: false,
                idle_since: Some(now),
            }),
            commits,
            loaded: OnceCell::new(),
        });
        loaded.insert(name.to_owned(), handle.clone());
        tokio::spawn(run(self.clone(), handle.clone(), queue));
        handle
    }

    async fn load(&self, handle: &DocHandle) -> Result<(), StoreError> {
        store::ensure(&self.pool, &handle.name).await?;
        let stored = store::load(&self.pool, &handle.name).await?;
        let name = handle.name.clone();
        let seq = stored.seq;
        let doc = tokio::task::spawn_blocking(move || stored.build(&name))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let mut state = handle.state.lock();
        {
            let mut txn = doc.transact_mut();
            for bytes in state.early.drain(..) {
                if let Ok(update) = Update::decode_v1(&bytes) {
                    let _ = txn.apply_update(update);
                }
            }
        }
        state.doc = doc;
        state.seq = state.seq.max(seq);
        state.content_seq = seq;
        state.ready = true;
        Ok(())
    }

    /// The document as JSON: from memory when loaded here, else from what is stored.
    pub async fn json(&self, name: &str) -> Result<(serde_json::Value, i64), StoreError> {
        let handle = self.loaded.lock().get(name).cloned();
        if let Some(handle) = handle {
            let state = handle.state.lock();
            if state.ready && !state.closed {
                return Ok((content::to_json(&state.doc), state.seq));
            }
        }
        let stored = store::load(&self.pool, name).await?;
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || (content::to_json(&stored.build(&name)), stored.seq))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// A committed update from the replication stream.
    pub fn remote(&self, name: &str, seq: i64, origin: Option<&str>, update: Vec<u8>) {
        let Some(handle) = self.loaded.lock().get(name).cloned() else {
            return;
        };
        let mut state = handle.state.lock();
        state.seq = state.seq.max(seq);
        if origin == Some(self.node.as_str()) {
            return;
        }
        self.stats.remote_updates.fetch_add(1, Ordering::Relaxed);
        if !state.ready {
            state.early.push(update);
            return;
        }
        let Ok(decoded) = Update::decode_v1(&update) else {
            tracing::warn!(
                doc = name,
                seq,
                "an update written to the database does not decode"
            );
            return;
        };
        let changed = {
            let mut txn = state.doc.transact_mut();
            txn.apply_update(decoded).is_ok() && txn.has_changes()
        };
        state.unversioned += 1;
        if changed {
            broadcast(&handle.name, &state.peers, &update);
        }
    }

    /// A membership row was deleted: `user`'s connections that were let in by membership leave
    /// the document (`/yjs` connections close with `access_revoked`, `/ws` sessions get
    /// `doc:closed`). Returns how many left.
    pub fn revoke(&self, name: &str, user: &str) -> usize {
        let Some(handle) = self.loaded.lock().get(name).cloned() else {
            return 0;
        };
        let mut state = handle.state.lock();
        let revoked: Vec<u64> = state
            .peers
            .iter()
            .filter(|(_, p)| p.user == user && !p.by_token)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in &revoked {
            if let Some(peer) = state.peers.remove(conn) {
                match peer.peer {
                    Peer::Binary(outbox) => outbox.close(CloseReason::Policy("access_revoked")),
                    Peer::Json(outbox) => {
                        outbox.push(crate::hub::Frame::from(protocol::doc_closed(
                            name,
                            "access_revoked",
                        )));
                    }
                }
            }
        }
        revoked.len()
    }

    /// Restores version `version` of `name` as a forward change that every editor receives,
    /// then records a version of the result. Returns the new version, or `None` if the
    /// document has no such version.
    pub async fn restore(
        self: &Arc<Self>,
        name: &str,
        version: i64,
        user: &str,
    ) -> Result<Option<i64>, StoreError> {
        let Some(target) = store::version_state(&self.pool, name, version).await? else {
            return Ok(None);
        };
        let target = Update::decode_v1(&target)
            .map_err(|e| StoreError::Invalid(format!("version {version} does not decode: {e}")))?;
        let target_doc = Doc::new();
        target_doc
            .transact_mut()
            .apply_update(target)
            .map_err(|e| StoreError::Invalid(format!("version {version} does not apply: {e}")))?;
        self.change(name, user, |doc| content::restore(doc, &target_doc))
            .await?;
        let cut =
            store::cut_version(&self.pool, name, "restore", Some(version), Some(user)).await?;
        if cut.is_some() {
            self.stats.versions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(cut)
    }

    /// Closes every peer of `handle` and forgets it (its memory may no longer match what is
    /// stored); editors reconnect and resynchronise.
    fn unload_broken(&self, handle: &Arc<DocHandle>, why: &str) {
        tracing::warn!(doc = %handle.name, why, "unloading the document");
        let mut loaded = self.loaded.lock();
        let mut state = handle.state.lock();
        state.closed = true;
        for peer in state.peers.values() {
            peer.peer.close(CloseReason::Policy("document_reloaded"));
        }
        state.peers.clear();
        if loaded
            .get(&handle.name)
            .is_some_and(|h| Arc::ptr_eq(h, handle))
        {
            loaded.remove(&handle.name);
        }
    }

    /// Forgets `handle` if it is idle; returns whether it did.
    fn unload_if_idle(&self, handle: &Arc<DocHandle>) -> bool {
        let mut loaded = self.loaded.lock();
        let mut state = handle.state.lock();
        let idle = state.peers.is_empty()
            && state.queued == 0
            && !state.cutting
            && state.unversioned == 0
            && state.content_seq >= state.seq
            && state
                .idle_since
                .is_some_and(|t| t.elapsed() >= self.settings.idle_unload());
        if idle {
            state.closed = true;
            if loaded
                .get(&handle.name)
                .is_some_and(|h| Arc::ptr_eq(h, handle))
            {
                loaded.remove(&handle.name);
            }
        }
        idle
    }
}

impl DocHandle {
    /// What a y-websocket peer gets on joining: SyncStep1 with the server's state vector, and
    /// the awareness states of the other editors.
    pub fn greeting(&self) -> Vec<Bytes> {
        let state = self.state.lock();
        let sv = state.doc.transact().state_vector();
        let mut messages = vec![Bytes::from(
            Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1(),
        )];
        if let Some(update) = awareness_of(&state.awareness, state.awareness.keys().copied()) {
            messages.push(Bytes::from(Message::Awareness(update).encode_v1()));
        }
        messages
    }

    /// The changes a replica with state vector `sv` lacks (SyncStep2), and the server's state
    /// vector.
    pub fn diff(&self, sv: &StateVector) -> (Vec<u8>, Vec<u8>) {
        let state = self.state.lock();
        let txn = state.doc.transact();
        (txn.encode_diff_v1(sv), txn.state_vector().encode_v1())
    }

    /// The awareness states of every editor, if any.
    pub fn awareness_all(&self) -> Option<AwarenessUpdate> {
        let state = self.state.lock();
        awareness_of(&state.awareness, state.awareness.keys().copied())
    }

    /// Validates and applies an editor's update and queues it for the group commit. `ack`
    /// receives the stored seq (or the error) once it is committed.
    pub fn accept(
        self: &Arc<Self>,
        docs: &Docs,
        bytes: &[u8],
        user: &str,
        ack: Option<oneshot::Sender<Result<i64, String>>>,
    ) -> Result<(), Refused> {
        let refuse = |e: Refused| {
            docs.stats.refused.fetch_add(1, Ordering::Relaxed);
            Err(e)
        };
        let mut state = self.state.lock();
        if state.closed || !state.ready {
            return refuse(Refused::Unavailable);
        }
        let changes = match check_and_apply(&state.doc, bytes, docs.settings.max_update_bytes) {
            Ok(changes) => changes,
            Err((e, None)) => return refuse(e),
            Err((e, Some(why))) => {
                // The memory no longer matches what is stored: start over from the database.
                drop(state);
                docs.unload_broken(self, why);
                return refuse(e);
            }
        };
        match changes {
            Some(changes) => self.enqueue(&mut state, changes, user, ack),
            None => {
                if let Some(ack) = ack {
                    let _ = ack.send(Ok(state.seq));
                }
                Ok(())
            }
        }
    }

    fn enqueue(
        &self,
        state: &mut State,
        update: Vec<u8>,
        user: &str,
        ack: Option<oneshot::Sender<Result<i64, String>>>,
    ) -> Result<(), Refused> {
        if state.queued >= 10_000 {
            return Err(Refused::Overloaded);
        }
        let pending = Pending {
            update,
            user: user.to_owned(),
            ack,
        };
        if self.commits.send(pending).is_err() {
            return Err(Refused::Unavailable);
        }
        state.queued += 1;
        Ok(())
    }

    /// An editor's awareness update: stored, then relayed (at most 20 times a second per
    /// connection; held-back changes go out with the next tick).
    pub fn awareness(&self, conn: u64, update: AwarenessUpdate) {
        let mut state = self.state.lock();
        let now = Instant::now();
        let mut changed = Vec::new();
        for (client, entry) in update.clients {
            let newer = state.awareness.get(&client).is_none_or(|a| {
                entry.clock > a.clock || (entry.clock == a.clock && &*entry.json == "null")
            });
            if !newer {
                continue;
            }
            if &*entry.json == "null" {
                state.awareness.remove(&client);
                broadcast_awareness_removal(&self.name, &state.peers, client, entry.clock);
                continue;
            }
            state.awareness.insert(
                client,
                Aware {
                    clock: entry.clock,
                    json: entry.json,
                    conn,
                    seen: now,
                },
            );
            changed.push(client);
        }
        let Some(peer) = state.peers.get_mut(&conn) else {
            return;
        };
        if peer.awareness_sent.elapsed() < Duration::from_millis(50) {
            for client in changed {
                if !peer.held.contains(&client) {
                    peer.held.push(client);
                }
            }
            return;
        }
        peer.awareness_sent = now;
        if let Some(update) = awareness_of(&state.awareness, changed) {
            broadcast_awareness(&self.name, &state.peers, &update);
        }
    }

    /// Whether the connection is (still) an editor of this document.
    pub fn has_peer(&self, conn: u64) -> bool {
        self.state.lock().peers.contains_key(&conn)
    }

    /// Removes a connection; its awareness states are removed for everyone.
    pub fn leave(&self, conn: u64) {
        let mut state = self.state.lock();
        state.peers.remove(&conn);
        let gone: Vec<(ClientID, u32)> = state
            .awareness
            .iter()
            .filter(|(_, a)| a.conn == conn)
            .map(|(client, a)| (*client, a.clock))
            .collect();
        for (client, clock) in gone {
            state.awareness.remove(&client);
            broadcast_awareness_removal(&self.name, &state.peers, client, clock + 1);
        }
        if state.peers.is_empty() {
            state.idle_since = Some(Instant::now());
        }
    }
}

fn awareness_of(
    awareness: &HashMap<ClientID, Aware>,
    clients: impl IntoIterator<Item = ClientID>,
) -> Option<AwarenessUpdate> {
    let clients: HashMap<_, _> = clients
        .into_iter()
        .filter_map(|client| {
            let a = awareness.get(&client)?;
            Some((
                client,
                AwarenessUpdateEntry {
                    clock: a.clock,
                    json: a.json.clone(),
                },
            ))
        })
        .collect();
    (!clients.is_empty()).then_some(AwarenessUpdate { clients })
}

fn broadcast_awareness_removal(
    name: &str,
    peers: &HashMap<u64, PeerState>,
    client: ClientID,
    clock: u32,
) {
    let update = AwarenessUpdate {
        clients: HashMap::from([(
            client,
            AwarenessUpdateEntry {
                clock,
                json: Arc::from("null"),
            },
        )]),
    };
    broadcast_awareness(name, peers, &update);
}

fn broadcast_awareness(name: &str, peers: &HashMap<u64, PeerState>, update: &AwarenessUpdate) {
    let encoded = update.encode_v1();
    let mut binary = None;
    let mut json = None;
    for peer in peers.values() {
        match &peer.peer {
            Peer::Binary(outbox) => {
                let message = binary.get_or_insert_with(|| {
                    Bytes::from(Message::Awareness(update.clone()).encode_v1())
                });
                outbox.push(message.clone());
            }
            Peer::Json(outbox) => {
                let frame = json.get_or_insert_with(|| {
                    crate::hub::Frame::from(protocol::doc_awareness(name, &b64(&encoded)))
                });
                outbox.push(frame.clone());
            }
        }
    }
}

/// Sends stored changes to every peer, each kind encoded once.
fn broadcast(name: &str, peers: &HashMap<u64, PeerState>, update: &[u8]) {
    let mut binary = None;
    let mut json = None;
    for peer in peers.values() {
        match &peer.peer {
            Peer::Binary(outbox) => {
                outbox.push(
                    binary
                        .get_or_insert_with(|| sync_update_message(update))
                        .clone(),
                );
            }
            Peer::Json(outbox) => {
                let frame = json.get_or_insert_with(|| {
                    crate::hub::Frame::from(protocol::doc_update(name, &b64(update)))
                });
                outbox.push(frame.clone());
            }
        }
    }
}

/// The document's task: group commits, and every 100 ms the housekeeping (held awareness,
/// awareness expiry, the JSON projection, versions, unloading when idle).
async fn run(docs: Arc<Docs>, handle: Arc<DocHandle>, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, 1024) => {
                if n == 0 {
                    return;
                }
                if !commit(&docs, &handle, &mut batch).await {
                    docs.unload_broken(&handle, "storing updates failed");
                    fail_queued(&mut queue);
                    return;
                }
            }
            _ = tick.tick() => {
                if handle.state.lock().closed {
                    fail_queued(&mut queue);
                    return;
                }
                housekeeping(&docs, &handle);
                if handle.loaded.initialized() && docs.unload_if_idle(&handle) {
                    return;
                }
            }
        }
    }
}

fn fail_queued(queue: &mut mpsc::UnboundedReceiver<Pending>) {
    queue.close();
    while let Ok(pending) = queue.try_recv() {
        if let Some(ack) = pending.ack {
            let _ = ack.send(Err("the document was reloaded; not stored".into()));
        }
    }
}

/// Stores a batch in one transaction, then relays it (merged) to every peer and acknowledges
/// it. Returns false if it could not be stored.
async fn commit(docs: &Docs, handle: &DocHandle, batch: &mut Vec<Pending>) -> bool {
    let updates: Vec<Vec<u8>> = batch
        .iter_mut()
        .map(|p| std::mem::take(&mut p.update))
        .collect();
    let users: Vec<&str> = batch.iter().map(|p| p.user.as_str()).collect();
    let result = store::commit(&docs.pool, &handle.name, &docs.node, &updates, &users).await;
    let n = batch.len();
    match result {
        Ok(last) => {
            docs.stats.commits.fetch_add(1, Ordering::Relaxed);
            docs.stats
                .updates_stored
                .fetch_add(n as u64, Ordering::Relaxed);
            // One update is relayed as is; a batch is merged into one message.
            let merged = if n == 1 {
                Ok(None)
            } else {
                yrs::merge_updates_v1(&updates).map(Some)
            };
            {
                let mut state = handle.state.lock();
                state.queued -= n;
                state.seq = state.seq.max(last);
                state.unversioned += n as u64;
                match merged {
                    Ok(None) => broadcast(&handle.name, &state.peers, &updates[0]),
                    Ok(Some(merged)) => broadcast(&handle.name, &state.peers, &merged),
                    Err(_) => {
                        for update in &updates {
                            broadcast(&handle.name, &state.peers, update);
                        }
                    }
                }
            }
            for (i, pending) in batch.drain(..).enumerate() {
                if let Some(ack) = pending.ack {
                    let _ = ack.send(Ok(last - (n - 1 - i) as i64));
                }
            }
            true
        }
        Err(e) => {
            docs.stats.commit_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(doc = %handle.name, error = %e, "storing document updates failed");
            handle.state.lock().queued -= n;
            for pending in batch.drain(..) {
                if let Some(ack) = pending.ack {
                    let _ = ack.send(Err(e.to_string()));
                }
            }
            false
        }
    }
}

fn housekeeping(docs: &Arc<Docs>, handle: &Arc<DocHandle>) {
    let mut state = handle.state.lock();
    if !state.ready {
        return;
    }
    let state = &mut *state;
    // Awareness held back by the throttle, then expiry.
    let mut held = Vec::new();
    for peer in state.peers.values_mut() {
        if !peer.held.is_empty() && peer.awareness_sent.elapsed() >= Duration::from_millis(50) {
            held.append(&mut peer.held);
            peer.awareness_sent = Instant::now();
        }
    }
    if let Some(update) = awareness_of(&state.awareness, held) {
        broadcast_awareness(&handle.name, &state.peers, &update);
    }
    let timeout = docs.settings.awareness_timeout();
    let expired: Vec<(ClientID, u32)> = state
        .awareness
        .iter()
        .filter(|(_, a)| a.seen.elapsed() >= timeout)
        .map(|(client, a)| (*client, a.clock))
        .collect();
    for (client, clock) in expired {
        state.awareness.remove(&client);
        broadcast_awareness_removal(&handle.name, &state.peers, client, clock + 1);
    }
    // The JSON projection, at most once a second.
    if state.seq > state.content_seq
        && state.content_at.elapsed() >= Duration::from_secs(1)
        && state.queued == 0
    {
        let json = content::to_json(&state.doc);
        let seq = state.seq;
        state.content_seq = seq;
        state.content_at = Instant::now();
        let (docs, name) = (docs.clone(), handle.name.clone());
        tokio::spawn(async move {
            if let Err(e) = store::write_content(&docs.pool, &name, &json, seq).await {
                tracing::warn!(doc = %name, error = %e, "writing the JSON projection failed");
            }
        });
    }
    // Versions: every 10 updates or 5 minutes while edited, at most one per interval; and a
    // last one before an idle document is unloaded.
    let since = state.versioned_at.elapsed();
    let idle = state.peers.is_empty() && state.queued == 0;
    let due = state.unversioned >= 10
        || (state.unversioned > 0 && (idle || since >= Duration::from_secs(300)));
    if due && !state.cutting && (since >= docs.settings.version_interval() || idle) {
        state.cutting = true;
        let counted = state.unversioned;
        let (docs, handle) = (docs.clone(), handle.clone());
        tokio::spawn(async move {
            let cut = store::cut_version(&docs.pool, &handle.name, "edit", None, None).await;
            let mut state = handle.state.lock();
            state.cutting = false;
            state.versioned_at = Instant::now();
            match cut {
                Ok(version) => {
                    if version.is_some() {
                        docs.stats.versions.fetch_add(1, Ordering::Relaxed);
                    }
                    state.unversioned = state.unversioned.saturating_sub(counted);
                }
                Err(e) => tracing::warn!(doc = %handle.name, error = %e, "taking a version failed"),
            }
        });
    }
}

/// The JSON projection of a stored state (a version).
pub fn state_json(state: &[u8]) -> Result<serde_json::Value, String> {
    let update = Update::decode_v1(state).map_err(|e| format!("the state does not decode: {e}"))?;
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(update)
        .map_err(|e| format!("the state does not apply: {e}"))?;
    Ok(content::to_json(&doc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::Text;

    #[test]
    fn counts_that_cannot_fit_their_message_are_implausible() {
        // Found by the doc_message fuzz target: an awareness message claiming ~2^30 entries
        // made yrs reserve 2.2 GB.
        assert!(!plausible_message(&[1, 5, 255, 236, 236, 17, 59, 59]));
        // A state vector of 2^28 entries in 5 bytes; an update of 10^6 clients in 4 bytes.
        assert!(!plausible_message(&[0, 0, 5, 128, 128, 128, 128, 1]));
        assert!(!plausible_message(&[0, 2, 4, 192, 132, 61, 0]));
        assert!(!plausible_count(&[192, 132, 61, 0], 2));
        assert!(!plausible_count(&[], 2));
        assert!(!plausible_count(
            &[255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255],
            1
        ));

        let doc = Doc::new();
        let text = doc.get_or_insert_text("notes");
        let update = {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello");
            txn.encode_update_v1()
        };
        let sv = doc.transact().state_vector();
        for message in [
            Message::Sync(SyncMessage::SyncStep1(sv)),
            Message::Sync(SyncMessage::SyncStep1(StateVector::default())),
            Message::Sync(SyncMessage::Update(update.clone())),
            Message::Sync(SyncMessage::SyncStep2(update.clone())),
            Message::AwarenessQuery,
        ] {
            assert!(plausible_message(&message.encode_v1()), "{message:?}");
        }
        assert!(plausible_count(&update, 2));
        let awareness = AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(7),
                AwarenessUpdateEntry {
                    clock: 1,
                    json: Arc::from(r#"{"cursor":1}"#),
                },
            )]),
        };
        assert!(plausible_message(
            &Message::Awareness(awareness).encode_v1()
        ));
    }
}
