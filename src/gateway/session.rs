//! One client session, whatever its transport: authorization, joins with replay, leaves,
//! publishes and token refresh. Replies and events go to the session's [`Outbox`].
//!
//! A join subscribes first, then replays from PostgreSQL, then goes live, so an event
//! committed at any moment is either replayed or delivered live (deduplicated by seq): no gap,
//! no duplicate at the seam.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use yrs::sync::awareness::AwarenessUpdate;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use super::replay::{replay, Replayed};
use super::Gateway;
use crate::activity;
use crate::auth::Claims;
use crate::docs::{self, DocHandle, Peer};
use crate::hub::{Frame, Outbox, Subscription};
use crate::inventory::{self, InventoryCommand, Watching};
use crate::notify::inapp;
use crate::presence::{PresenceCommand, PresenceConn};
use crate::protocol::{self, ClientFrame, Command, MarkAction};

/// A refusal to send back: a protocol code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

const SETTLE_ATTEMPTS: usize = 10;
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(25);

pub struct Session {
    pub conn_id: u64,
    pub claims: Claims,
    pub outbox: Arc<Outbox>,
    gateway: Arc<Gateway>,
    rooms: HashMap<String, Arc<Subscription>>,
    /// Open documents, and whether this session may change each.
    docs: HashMap<String, (Arc<DocHandle>, bool)>,
    /// The user's notification log, once `notification:subscribe` was sent.
    notifications: Option<Arc<Subscription>>,
    /// Activity rooms, from the last `activity:subscribe`.
    activity: Vec<Arc<Subscription>>,
    /// Watched resources, and the user's reservation outcomes.
    inventory: Watching,
    /// This connection's presence session, the users it watches and its typing.
    presence: PresenceConn,
    bucket: TokenBucket,
}

impl Session {
    pub fn new(
        gateway: Arc<Gateway>,
        claims: Claims,
        outbox: Arc<Outbox>,
        conn_id: u64,
    ) -> Session {
        let rate = f64::from(gateway.settings.publish_rate.max(1));
        let presence = PresenceConn::new(
            gateway.presence.clone(),
            outbox.clone(),
            conn_id,
            &claims.user,
        );
        // A connection (the publish endpoint's one-shot session has id 0) hears of its user's
        // reservations and bookings from the start.
        let inventory = if conn_id == 0 {
            Watching::default()
        } else {
            Watching::start(&gateway.inventory, conn_id, &claims.user, &outbox)
        };
        Session {
            conn_id,
            claims,
            outbox,
            gateway,
            rooms: HashMap::new(),
            docs: HashMap::new(),
            notifications: None,
            activity: Vec::new(),
            inventory,
            presence,
            bucket: TokenBucket::new(rate, rate * 2.0),
        }
    }

    /// Queues a frame for the client.
    pub fn send(&self, frame: String) {
        self.outbox.push(Frame::from(frame));
    }

    /// Handles one parsed client frame, answering with an ack for anything that has an id.
    pub async fn handle(&mut self, frame: ClientFrame) {
        let id = frame.id.clone();
        if !matches!(frame.command, Command::Ping | Command::Pong) {
            self.presence.activity();
        }
        let result = match frame.command {
            Command::Ping => {
                self.send(protocol::pong());
                return;
            }
            Command::Pong => return,
            Command::Auth { .. } => Err(Refusal::new(
                "invalid_field",
                "this connection is already authenticated; use auth:refresh",
            )),
            Command::AuthRefresh { token } => self.refresh(&token).await,
            Command::Join { room, since } => self.join(&room, since, id.as_deref()).await,
            Command::Leave { room } => self.leave(&room),
            Command::Publish {
                room,
                event,
                payload,
            } => self.publish(&room, &event, &payload, id.as_deref()).await,
            Command::Broadcast {
                room,
                event,
                payload,
            } => self.broadcast(&room, &event, &payload),
            Command::DocOpen { doc, state_vector } => {
                self.doc_open(&doc, state_vector.as_deref()).await
            }
            Command::DocUpdate { doc, update } => self.doc_update(&doc, &update, id.clone()),
            Command::DocAwareness { doc, update } => self.doc_awareness(&doc, &update),
            Command::DocClose { doc } => {
                if let Some((handle, _)) = self.docs.remove(&doc) {
                    handle.leave(self.conn_id);
                }
                Ok(Some(json!({ "doc": doc })))
            }
            Command::Presence(command) => self.presence_command(command, id.as_deref()).await,
            Command::NotificationSubscribe { since } => {
                self.notifications_subscribe(since, id.as_deref()).await
            }
            Command::ActivitySubscribe { rooms } => self.activity_subscribe(&rooms).await,
            Command::Inventory(command) => self.inventory(command, id.as_deref()).await,
            Command::NotificationMark { ids, action } => {
                self.notifications_mark(&ids, action).await
            }
        };
        match (result, id) {
            (Ok(Some(result)), Some(id)) => self.send(protocol::ack_ok(&id, result)),
            (Ok(_), _) => {}
            (Err(refusal), Some(id)) => {
                self.send(protocol::ack_error(&id, refusal.code, &refusal.message))
            }
            (Err(refusal), None) => {
                self.send(protocol::error_frame(refusal.code, &refusal.message))
            }
        }
    }

    /// Swaps in a new token for the same user. Rooms the new token no longer grants are
    /// re-checked against `realtime.can_join`; the connection leaves those it may no longer
    /// read (`room:leave`, reason `access_revoked`).
    async fn refresh(&mut self, token: &str) -> Result<Option<serde_json::Value>, Refusal> {
        let claims = self
            .gateway
            .verifier
            .verify(token)
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        if claims.user != self.claims.user {
            return Err(Refusal::new(
                "unauthorized",
                "a refreshed token must be for the same user",
            ));
        }
        let expires_at = claims.expires_at;
        self.claims = claims;
        self.rooms.retain(|_, sub| !sub.is_removed());
        let mut revoked = Vec::new();
        for (room, sub) in &self.rooms {
            let by_token = self.claims.rooms.allows(room);
            sub.granted_by_token.store(by_token, Ordering::Relaxed);
            if !by_token && !self.authorized(room, false).await? {
                revoked.push(room.clone());
            }
        }
        for room in revoked {
            if let Some(sub) = self.rooms.remove(&room) {
                self.gateway.hub.unsubscribe(&sub);
                self.send(protocol::room_left(&room, "access_revoked"));
            }
        }
        Ok(Some(json!({ "expires_at": expires_at })))
    }

    async fn authorized(&self, room: &str, publish: bool) -> Result<bool, Refusal> {
        if self.claims.rooms.allows(room) {
            return Ok(true);
        }
        let store = &self.gateway.store;
        let allowed = if publish {
            store.can_publish(&self.claims.user, room).await
        } else {
            store.can_join(&self.claims.user, room).await
        };
        allowed.map_err(|e| Refusal::new(e.code(), e.to_string()))
    }

    /// Whether this session may join `room`: the authorization [`Session::join`] applies,
    /// without joining (for transports that must answer before they start streaming).
    pub async fn check_join(&self, room: &str) -> Result<(), Refusal> {
        if self.authorized(room, false).await? {
            Ok(())
        } else {
            Err(Refusal::new(
                "forbidden",
                format!("you may not join {room}"),
            ))
        }
    }

    /// Joins `room`: acknowledges, replays what followed `since` (or nothing), then goes live.
    pub async fn join(
        &mut self,
        room: &str,
        since: Option<u64>,
        id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        self.rooms.retain(|_, sub| !sub.is_removed());
        if self.rooms.contains_key(room) {
            return Ok(Some(json!({ "room": room, "already_joined": true })));
        }
        if self.rooms.len() >= self.gateway.settings.max_rooms_per_connection {
            return Err(Refusal::new(
                "too_many_rooms",
                format!(
                    "a connection may join at most {} rooms",
                    self.gateway.settings.max_rooms_per_connection
                ),
            ));
        }
        if !self.authorized(room, false).await? {
            return Err(Refusal::new(
                "forbidden",
                format!("you may not join {room}"),
            ));
        }
        let by_token = self.claims.rooms.allows(room);
        let sub = self.gateway.hub.subscribe(
            room,
            self.conn_id,
            Arc::from(self.claims.user.as_str()),
            self.outbox.clone(),
            by_token,
        );
        self.rooms.insert(room.to_owned(), sub.clone());
        let result = self.catch_up(&sub, since, id).await;
        if result.is_err() {
            self.gateway.hub.unsubscribe(&sub);
            self.rooms.remove(room);
        }
        result.map(|_| None)
    }

    /// `notification:subscribe`: the user's notification log, joined like a room (ack with
    /// the latest seq, replay after `since`, then live), followed by the unread count. What
    /// the replay sent counts as delivered in-app.
    async fn notifications_subscribe(
        &mut self,
        since: Option<u64>,
        id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        if self.notifications.is_some() {
            return Ok(Some(json!({ "already_subscribed": true })));
        }
        let user = self.claims.user.clone();
        let sub = self.gateway.hub.subscribe(
            &inapp::room(&user),
            self.conn_id,
            Arc::from(user.as_str()),
            self.outbox.clone(),
            true,
        );
        let sent = match self.catch_up(&sub, since, id).await {
            Ok(sent) => sent,
            Err(refusal) => {
                self.gateway.hub.unsubscribe(&sub);
                return Err(refusal);
            }
        };
        self.notifications = Some(sub);
        if since.is_some_and(|since| sent > since) {
            self.gateway.receipts.reached(&user, sent);
        }
        if let Ok(unread) = self.gateway.store.unread(&user).await {
            self.send(protocol::notification_badge(unread));
        }
        Ok(None)
    }

    /// `activity:subscribe`: replaces this connection's activity subscriptions with the user's
    /// own activities, the public ones of whom they follow, and those of `rooms` (each checked
    /// like a join). Acknowledged with what it subscribed to.
    async fn activity_subscribe(
        &mut self,
        rooms: &[String],
    ) -> Result<Option<serde_json::Value>, Refusal> {
        for room in rooms {
            self.check_join(room).await?;
        }
        let followees = self
            .gateway
            .store
            .followees(&self.claims.user, activity::MAX_FOLLOWEES)
            .await
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        for sub in self.activity.drain(..) {
            self.gateway.hub.unsubscribe(&sub);
        }
        let user = Arc::<str>::from(self.claims.user.as_str());
        // Room streams end when the membership that granted them is deleted; the others are
        // the user's own or public.
        let hub_rooms = std::iter::once((activity::user_room(&user), true))
            .chain(
                rooms
                    .iter()
                    .map(|r| (activity::room_room(r), self.claims.rooms.allows(r))),
            )
            .chain(followees.iter().map(|f| (activity::author_room(f), true)));
        for (hub_room, by_token) in hub_rooms {
            let sub = self.gateway.hub.subscribe(
                &hub_room,
                self.conn_id,
                user.clone(),
                self.outbox.clone(),
                by_token,
            );
            sub.go_live(0);
            self.activity.push(sub);
        }
        Ok(Some(json!({ "rooms": rooms, "following": followees })))
    }

    /// `notification:read` / `notification:dismiss`: marks the user's own notifications (ids
    /// of other users' notifications change nothing). Every connection of the user hears of it
    /// through the WAL.
    async fn notifications_mark(
        &self,
        ids: &[i64],
        action: MarkAction,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        let changed = self
            .gateway
            .store
            .mark_notifications(&self.claims.user, ids, action)
            .await
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        Ok(Some(json!({ "changed": changed })))
    }

    /// Acknowledges the join with the room's current seq, then replays from `since`. Fails only
    /// before the ack; a replay that cannot complete answers `resume:failed` and goes live.
    /// Returns the last seq the client has been sent (or `since`).
    async fn catch_up(
        &self,
        sub: &Subscription,
        since: Option<u64>,
        id: Option<&str>,
    ) -> Result<u64, Refusal> {
        let store = &self.gateway.store;
        let last_seq = || async {
            store
                .last_seq(&sub.room)
                .await
                .map_err(|e| Refusal::new(e.code(), e.to_string()))
        };
        let mut current = last_seq().await?;
        // Logical decoding can send a commit a moment before new snapshots see it, so a client
        // coming straight back with the seq it just received may look ahead of the table.
        // Wait briefly before calling it ahead (a restored database, a bogus since).
        for _ in 0..SETTLE_ATTEMPTS {
            if since.is_none_or(|since| since <= current) {
                break;
            }
            tokio::time::sleep(SETTLE_WAIT).await;
            current = last_seq().await?;
        }
        if let Some(id) = id {
            self.send(protocol::ack_ok(
                id,
                json!({ "room": &*sub.room, "seq": current }),
            ));
        }
        let Some(since) = since else {
            sub.go_live(current);
            return Ok(0);
        };
        if since > current {
            self.send(protocol::resume_failed(&sub.room, since, current));
            sub.go_live(current);
            return Ok(since);
        }
        let sent = match replay(
            &self.gateway.store,
            &self.outbox,
            &sub.room,
            since,
            Some(current),
        )
        .await
        {
            Replayed::Reached(position) => sub.go_live(position),
            Replayed::Unavailable => {
                self.send(protocol::resume_failed(&sub.room, since, current));
                sub.go_live(current);
                since
            }
            Replayed::Closed => since,
        };
        Ok(sent)
    }

    fn leave(&mut self, room: &str) -> Result<Option<serde_json::Value>, Refusal> {
        match self.rooms.remove(room) {
            Some(sub) => {
                self.gateway.hub.unsubscribe(&sub);
                self.presence.left(room);
                Ok(Some(json!({ "room": room })))
            }
            None => Err(Refusal::new("not_joined", format!("not in room {room}"))),
        }
    }

    /// Publishes through PostgreSQL; the ack follows the commit, and the event itself reaches
    /// every subscriber (this one included) through the WAL. A retry with the same message id
    /// is applied once.
    pub async fn publish(
        &mut self,
        room: &str,
        event: &str,
        payload: &str,
        id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        self.take_token()?;
        if !self.authorized(room, true).await? {
            return Err(Refusal::new(
                "forbidden",
                format!("you may not publish to {room}"),
            ));
        }
        let key = id.map(|id| idempotency_key(&self.claims.user, id));
        let seq = self
            .gateway
            .store
            .publish(room, event, payload, key.as_deref(), &self.claims.user)
            .await
            .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
        self.gateway.stats.publishes.fetch_add(1, Ordering::Relaxed);
        Ok(Some(json!({ "room": room, "seq": seq })))
    }

    /// Relays an ephemeral signal to the room's other members. Only members may signal, and
    /// signals count against the publish rate.
    fn broadcast(
        &mut self,
        room: &str,
        event: &str,
        payload: &str,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        self.take_token()?;
        self.rooms.retain(|_, sub| !sub.is_removed());
        if !self.rooms.contains_key(room) {
            return Err(Refusal::new(
                "not_joined",
                format!("join {room} before signalling in it"),
            ));
        }
        let frame = Frame::from(protocol::room_broadcast(
            room,
            event,
            payload,
            &self.claims.user,
        ));
        let delivered = self.gateway.hub.relay(room, self.conn_id, &frame);
        Ok(Some(json!({ "room": room, "delivered": delivered })))
    }

    /// `inventory:*`; reserving and releasing count against the publish rate.
    async fn inventory(
        &mut self,
        command: InventoryCommand,
        id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        if command.writes() {
            self.take_token()?;
        }
        let cx = inventory::Context {
            conn_id: self.conn_id,
            user: &self.claims.user,
            outbox: &self.outbox,
            max_resources: self.gateway.settings.max_rooms_per_connection,
            id,
        };
        self.inventory
            .handle(&self.gateway.inventory, cx, command)
            .await
    }

    /// `presence:*` (see [`crate::presence`]); any client frame counts as activity.
    async fn presence_command(
        &mut self,
        command: PresenceCommand,
        id: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        match command {
            PresenceCommand::Subscribe { device } => {
                // Each one reads the database: it counts against the publish rate.
                self.take_token()?;
                self.presence.subscribe(device.as_deref(), id).await
            }
            PresenceCommand::Set { mode } => self.presence.set(mode),
            PresenceCommand::Activity => Ok(Some(json!({}))),
            PresenceCommand::Typing { room, typing } => {
                self.rooms.retain(|_, sub| !sub.is_removed());
                let joined = self.rooms.contains_key(&room);
                self.presence.typing(&room, typing, joined).await
            }
        }
    }

    fn take_token(&mut self) -> Result<(), Refusal> {
        if self.bucket.take(Instant::now()) {
            return Ok(());
        }
        Err(Refusal::new(
            "rate_limited",
            format!(
                "at most {} publishes per second per connection",
                self.gateway.settings.publish_rate
            ),
        ))
    }

    /// Leaves every room; called once when the connection ends.
    pub fn close(&mut self) {
        let activity = self.activity.drain(..).collect::<Vec<_>>();
        for sub in self
            .rooms
            .values()
            .chain(self.notifications.iter())
            .chain(activity.iter())
        {
            self.gateway.hub.unsubscribe(sub);
        }
        self.notifications = None;
        self.rooms.clear();
        self.presence.close();
        self.inventory.close(&self.gateway.inventory);
        for (handle, _) in self.docs.values() {
            handle.leave(self.conn_id);
        }
        self.docs.clear();
    }

    /// `doc:open`: joins the document and sends `doc:sync` with what the client lacks.
    async fn doc_open(
        &mut self,
        doc: &str,
        state_vector: Option<&str>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        let invalid =
            |why: &str| Refusal::new("invalid_field", format!("data.state_vector: {why}"));
        let sv = match state_vector {
            None => StateVector::default(),
            Some(text) => {
                let bytes = docs::from_b64(text).ok_or_else(|| invalid("not base64"))?;
                if !docs::plausible_count(&bytes, 2) {
                    return Err(invalid("not a Yjs state vector"));
                }
                StateVector::decode_v1(&bytes).map_err(|_| invalid("not a Yjs state vector"))?
            }
        };
        if !self.docs.contains_key(doc) {
            if self.rooms.len() + self.docs.len() >= self.gateway.settings.max_rooms_per_connection
            {
                return Err(Refusal::new(
                    "too_many_rooms",
                    format!(
                        "at most {} rooms and documents per connection",
                        self.gateway.settings.max_rooms_per_connection
                    ),
                ));
            }
            let access = self.gateway.doc_access(&self.claims, doc).await?;
            let handle = self
                .gateway
                .docs
                .join(
                    doc,
                    self.conn_id,
                    &self.claims.user,
                    self.claims.rooms.allows(doc),
                    Peer::Json(self.outbox.clone()),
                )
                .await
                .map_err(|e| Refusal::new(e.code(), e.to_string()))?;
            self.docs.insert(doc.to_owned(), (handle, access.write));
        }
        let (handle, write) = &self.docs[doc];
        let (update, server_sv) = handle.diff(&sv);
        let awareness = handle.awareness_all().map(|a| docs::b64(&a.encode_v1()));
        self.send(protocol::doc_sync(
            doc,
            &docs::b64(&update),
            &docs::b64(&server_sv),
            awareness.as_deref(),
        ));
        Ok(Some(json!({ "doc": doc, "write": write })))
    }

    /// The open document `doc`; one whose access was revoked is forgotten here too.
    fn open_doc(&mut self, doc: &str) -> Result<(Arc<DocHandle>, bool), Refusal> {
        if self
            .docs
            .get(doc)
            .is_some_and(|(handle, _)| !handle.has_peer(self.conn_id))
        {
            self.docs.remove(doc);
        }
        self.docs
            .get(doc)
            .cloned()
            .ok_or_else(|| Refusal::new("not_open", format!("open {doc} with doc:open first")))
    }

    /// `doc:update`: acknowledged once stored (the ack carries the update's seq).
    fn doc_update(
        &mut self,
        doc: &str,
        update: &str,
        id: Option<String>,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        let (handle, write) = self.open_doc(doc)?;
        if !write {
            return Err(Refusal::new(
                "forbidden",
                format!("you may not change {doc}"),
            ));
        }
        let bytes = docs::from_b64(update)
            .ok_or_else(|| Refusal::new("invalid_field", "data.update: not base64"))?;
        let (ack, stored) = tokio::sync::oneshot::channel();
        let accepted = handle.accept(&self.gateway.docs, &bytes, &self.claims.user, Some(ack));
        if let Err(refused) = accepted {
            // The document is unharmed; this connection leaves it (re-open to resynchronise).
            if let Some((handle, _)) = self.docs.remove(doc) {
                handle.leave(self.conn_id);
            }
            return Err(Refusal::new(refused.code(), refused.to_string()));
        }
        let outbox = self.outbox.clone();
        let doc = doc.to_owned();
        tokio::spawn(async move {
            let frame = match stored.await {
                Ok(Ok(seq)) => {
                    id.map(|id| protocol::ack_ok(&id, json!({ "doc": doc, "seq": seq })))
                }
                Ok(Err(e)) => Some(match id {
                    Some(id) => protocol::ack_error(&id, "unavailable", &e),
                    None => protocol::error_frame("unavailable", &e),
                }),
                Err(_) => None,
            };
            if let Some(frame) = frame {
                outbox.push(Frame::from(frame));
            }
        });
        Ok(None)
    }

    /// `doc:awareness`: relayed to the document's other editors, never stored.
    fn doc_awareness(
        &mut self,
        doc: &str,
        update: &str,
    ) -> Result<Option<serde_json::Value>, Refusal> {
        let (handle, _) = self.open_doc(doc)?;
        let update = docs::from_b64(update)
            .filter(|bytes| docs::plausible_count(bytes, 3))
            .and_then(|bytes| AwarenessUpdate::decode_v1(&bytes).ok())
            .ok_or_else(|| {
                Refusal::new(
                    "invalid_update",
                    "data.update: not a base64 awareness update",
                )
            })?;
        handle.awareness(self.conn_id, update);
        Ok(None)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.close();
    }
}

/// The idempotency key of a client message: its id, scoped to the user. Keys are at most 200
/// characters in the database, so long ones are replaced by their SHA-256.
fn idempotency_key(user: &str, id: &str) -> String {
    let key = format!("client:{user}:{id}");
    if key.len() <= 200 {
        return key;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("client-sha256:{hex}")
}

/// Publish rate limit: `rate` tokens a second, up to `burst`.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::TokenBucket;

    #[test]
    fn idempotency_keys_fit_the_database_limit() {
        assert_eq!(super::idempotency_key("alice", "m1"), "client:alice:m1");
        let long = super::idempotency_key(&"u".repeat(200), &"i".repeat(128));
        assert!(long.len() <= 200 && long.starts_with("client-sha256:"));
        assert_ne!(
            long,
            super::idempotency_key(&"u".repeat(200), &"j".repeat(128))
        );
    }

    #[test]
    fn token_bucket_allows_bursts_then_the_rate() {
        let start = std::time::Instant::now();
        let mut bucket = TokenBucket::new(10.0, 20.0);
        bucket.at = start;
        assert_eq!((0..25).filter(|_| bucket.take(start)).count(), 20);
        assert!(bucket.take(start + Duration::from_millis(100)));
        assert!(!bucket.take(start + Duration::from_millis(100)));
    }
}
