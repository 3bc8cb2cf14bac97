//! One connection's side of presence: its session, `presence:subscribe`, `presence:set` and
//! `presence:typing`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::{room, store, Mode, Presence, MAX_WATCHED};
use crate::gateway::store::StoreError;
use crate::gateway::Refusal;
use crate::hub::{Frame, Outbox, Subscription};
use crate::protocol;

/// A connection's presence: created with the session, closed with it.
pub struct PresenceConn {
    presence: Arc<Presence>,
    outbox: Arc<Outbox>,
    conn_id: u64,
    user: Arc<str>,
    /// Whether this connection is a presence session (one-off HTTP requests are not).
    tracked: bool,
    /// The users' presence rooms from the last `presence:subscribe`.
    watching: Vec<Arc<Subscription>>,
    /// Per room: whether this user may signal typing there, and the blocks epoch it was
    /// checked at.
    may_type: HashMap<String, (u64, bool)>,
}

fn unavailable(e: StoreError) -> Refusal {
    Refusal::new(e.code(), e.to_string())
}

impl PresenceConn {
    /// Starts the connection's presence session; `conn_id` 0 (a one-off HTTP request) has none.
    pub fn new(presence: Arc<Presence>, outbox: Arc<Outbox>, conn_id: u64, user: &str) -> Self {
        let tracked = conn_id != 0;
        if tracked {
            presence.connect(conn_id, user);
        }
        PresenceConn {
            presence,
            outbox,
            conn_id,
            user: Arc::from(user),
            tracked,
            watching: Vec::new(),
            may_type: HashMap::new(),
        }
    }

    /// A client frame arrived: the user is active.
    pub fn activity(&self) {
        if self.tracked {
            self.presence.activity(self.conn_id);
        }
    }

    /// `presence:subscribe`: (re)computes whom this user may see, subscribes to their changes,
    /// sends their current states (the ack, or `presence:state` without an id), then lets the
    /// changes through. Returns `Ok(None)`: the answer is already sent.
    pub async fn subscribe(
        &mut self,
        device: Option<&str>,
        id: Option<&str>,
    ) -> Result<Option<Value>, Refusal> {
        if let (Some(device), true) = (device, self.tracked) {
            self.presence.set_device(self.conn_id, device);
        }
        let pool = self.presence.pool().clone();
        let mut users = store::visible_to(&pool, &self.user, MAX_WATCHED + 1)
            .await
            .map_err(unavailable)?;
        let truncated = users.len() > MAX_WATCHED;
        users.truncate(MAX_WATCHED);
        let hub = self.presence.hub().clone();
        for sub in self.watching.drain(..) {
            hub.unsubscribe(&sub);
        }
        // Subscribed before the states are read: a change committed meanwhile waits in the
        // subscription and follows the ack if it is newer than what the ack says.
        let subs: Vec<Arc<Subscription>> = users
            .iter()
            .map(|u| {
                hub.subscribe(
                    &room(u),
                    self.conn_id,
                    self.user.clone(),
                    self.outbox.clone(),
                    false,
                )
            })
            .collect();
        let read = async {
            let states = store::states(&pool, &users).await?;
            let mode = self.mode().await?;
            Ok::<_, StoreError>((states, mode))
        };
        let (states, mode) = match read.await {
            Ok(read) => read,
            Err(e) => {
                for sub in &subs {
                    hub.unsubscribe(sub);
                }
                return Err(unavailable(e));
            }
        };
        let listed: Vec<Value> = states
            .iter()
            .map(|s| {
                json!({
                    "user": s.user, "status": s.status, "last_seen": s.last_seen,
                    "version": s.version,
                })
            })
            .collect();
        let result = json!({ "users": listed, "truncated": truncated, "mode": mode.as_str() });
        self.outbox.push(Frame::from(match id {
            Some(id) => protocol::ack_ok(id, result),
            None => protocol::presence_state(result),
        }));
        for (sub, state) in subs.iter().zip(&states) {
            sub.go_live(state.version);
        }
        self.watching = subs;
        Ok(None)
    }

    /// `presence:set`: the mode this user chose, for all their devices; written with the next
    /// flush.
    pub fn set(&mut self, mode: Mode) -> Result<Option<Value>, Refusal> {
        if !self.tracked || !self.presence.set_mode(&self.user, mode) {
            return Err(Refusal::new(
                "invalid_field",
                "presence:set needs a WebSocket connection",
            ));
        }
        Ok(Some(json!({ "mode": mode.as_str() })))
    }

    /// `presence:typing`: relayed in memory to the other subscribers of `room` (which this
    /// connection joined), at most twice a second; stops after the timeout. Not relayed while
    /// the user is invisible, nor in a room where a member and the user blocked one another.
    pub async fn typing(
        &mut self,
        room: &str,
        typing: bool,
        joined: bool,
    ) -> Result<Option<Value>, Refusal> {
        if !joined {
            return Err(Refusal::new(
                "not_joined",
                format!("join {room} before typing in it"),
            ));
        }
        let relayed = if !typing {
            self.presence.typing_stop(self.conn_id, room)
        } else if self.may_type(room).await? {
            self.presence.typing_start(self.conn_id, room, &self.user)
        } else {
            false
        };
        Ok(Some(
            json!({ "room": room, "typing": typing, "relayed": relayed }),
        ))
    }

    async fn may_type(&mut self, room: &str) -> Result<bool, Refusal> {
        if self.mode().await.map_err(unavailable)? == Mode::Invisible {
            return Ok(false);
        }
        let epoch = self.presence.blocks_epoch();
        if let Some(&(checked, allowed)) = self.may_type.get(room) {
            if checked == epoch {
                return Ok(allowed);
            }
        }
        let blocked = store::blocked_in_room(self.presence.pool(), &self.user, room)
            .await
            .map_err(unavailable)?;
        self.may_type.insert(room.to_owned(), (epoch, !blocked));
        Ok(!blocked)
    }

    /// The user's mode: known on this node, else read (and remembered).
    async fn mode(&self) -> Result<Mode, StoreError> {
        if let Some(mode) = self.presence.mode(&self.user) {
            return Ok(mode);
        }
        let mode = store::mode(self.presence.pool(), &self.user).await?;
        self.presence.learn_mode(&self.user, mode);
        Ok(self.presence.mode(&self.user).unwrap_or(mode))
    }

    /// The connection left `room`: its typing indicator there stops.
    pub fn left(&mut self, room: &str) {
        self.presence.typing_stop(self.conn_id, room);
        self.may_type.remove(room);
    }

    /// The connection closed: its session lingers for the grace period; its typing
    /// indicators stop. Idempotent.
    pub fn close(&mut self) {
        let hub = self.presence.hub().clone();
        for sub in self.watching.drain(..) {
            hub.unsubscribe(&sub);
        }
        if std::mem::take(&mut self.tracked) {
            self.presence.disconnect(self.conn_id);
        }
    }
}
