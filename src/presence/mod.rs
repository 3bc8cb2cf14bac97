//! Presence (seed §6.1) and typing indicators (seed §8.1).
//!
//! Each `/ws` connection is a presence session of its user, kept in memory by its node
//! ([`machine`]): online, away after 5 minutes without a client frame, ended 30 s after the
//! connection closed (a reconnect within that grace is invisible to others). A user's state is
//! derived in PostgreSQL from all their sessions on every node and the mode they chose (`dnd`,
//! `invisible`). What a node changed is written every 100 ms in one statement
//! (`realtime.presence_apply`), at most once a second per user; its sessions' liveness is one
//! heartbeat row per node. A node whose heartbeat expires is reaped by the others, which end
//! its sessions: presence is right cluster-wide without the dead node's help.
//!
//! Guarantees: `realtime.presence` (what others see: invisible is offline) changes only on a
//! visible transition, and each change reaches, through the WAL, the connections that
//! subscribed to that user's hidden hub room `@presence:<user>`: users sharing a room or a
//! friendship with them, never blocked users (a block revokes those subscriptions live). A
//! subscriber gets the current states, then changes in order (each user's `version`), no
//! change lost at the seam. In-memory state is only what is not yet written: a node that dies
//! loses at most its last 100 ms of changes, and its sessions end after the expiry. Typing
//! indicators are relayed in memory only, never stored.

mod command;
mod conn;
pub mod machine;
mod route;
pub mod store;
pub mod typing;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use deadpool_postgres::Pool;
use parking_lot::Mutex;
use tokio::sync::watch;

pub use command::{parse_command, PresenceCommand, MAX_DEVICE_LEN};
pub use conn::PresenceConn;
pub use machine::Mode;
pub use route::{route, streams, Routed};

use crate::hub::{Frame, Hub};
use crate::protocol;
use machine::{Machine, Millis, Timings};
use typing::Typing;

const PREFIX: &str = "@presence:";
/// Typing indicators are relayed at most this often per connection and room (2 Hz).
const TYPING_INTERVAL_MS: Millis = 500;
/// Most users one `presence:subscribe` watches.
pub const MAX_WATCHED: usize = 1000;

/// The hub room that carries `user`'s presence changes.
pub fn room(user: &str) -> String {
    format!("{PREFIX}{user}")
}

/// Presence timings. Every setting is in milliseconds.
#[derive(Debug, Clone, Args)]
pub struct PresenceSettings {
    /// A session without client frames for this long turns away.
    #[arg(long, global = true, env = "TRIPTRIP_PRESENCE_AWAY_MS", default_value_t = 300_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub presence_away_ms: u64,

    /// After a connection closes, its session stays this long (a reconnect within it is
    /// invisible to others).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_PRESENCE_GRACE_MS",
        default_value_t = 30_000
    )]
    pub presence_grace_ms: u64,

    /// How often this node writes its presence changes (one statement each time).
    #[arg(long, global = true, env = "TRIPTRIP_PRESENCE_FLUSH_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub presence_flush_ms: u64,

    /// A user's changes are written (and fanned out) at most once per this long.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_PRESENCE_THROTTLE_MS",
        default_value_t = 1_000
    )]
    pub presence_throttle_ms: u64,

    /// How often this node refreshes its heartbeat row and reaps dead nodes.
    #[arg(long, global = true, env = "TRIPTRIP_PRESENCE_NODE_HEARTBEAT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub presence_node_heartbeat_ms: u64,

    /// A node whose heartbeat is older than this is dead: any other node ends its sessions.
    #[arg(long, global = true, env = "TRIPTRIP_PRESENCE_NODE_EXPIRY_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(1_000..))]
    pub presence_node_expiry_ms: u64,

    /// A typing indicator with no news for this long stops.
    #[arg(long, global = true, env = "TRIPTRIP_PRESENCE_TYPING_TIMEOUT_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    pub presence_typing_timeout_ms: u64,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct PresenceStats {
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub ops: AtomicU64,
    pub rows_written: AtomicU64,
    pub heartbeats: AtomicU64,
    pub reaped: AtomicU64,
    pub typing_relayed: AtomicU64,
}

/// This node's presence: its sessions, typing indicators and the writer.
pub struct Presence {
    node: uuid::Uuid,
    settings: PresenceSettings,
    hub: Arc<Hub>,
    pool: Pool,
    machine: Mutex<Machine>,
    typing: Mutex<Typing>,
    /// Bumped by every committed change of `realtime.blocks`.
    blocks_epoch: AtomicU64,
    registered: AtomicBool,
    pub stats: PresenceStats,
}

/// Now, in Unix milliseconds.
fn now() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

impl Presence {
    pub fn new(hub: Arc<Hub>, pool: Pool, settings: PresenceSettings) -> Presence {
        let machine = Machine::new(Timings {
            away_after: settings.presence_away_ms,
            grace: settings.presence_grace_ms,
            throttle: settings.presence_throttle_ms,
        });
        let typing = Typing::new(TYPING_INTERVAL_MS, settings.presence_typing_timeout_ms);
        Presence {
            node: uuid::Uuid::new_v4(),
            settings,
            hub,
            pool,
            machine: Mutex::new(machine),
            typing: Mutex::new(typing),
            blocks_epoch: AtomicU64::new(0),
            registered: AtomicBool::new(false),
            stats: PresenceStats::default(),
        }
    }

    /// This node's id in `realtime.presence_nodes`.
    pub fn node(&self) -> uuid::Uuid {
        self.node
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Sessions on this node (lingering ones included).
    pub fn sessions(&self) -> usize {
        self.machine.lock().sessions()
    }

    /// Typing indicators alive on this node.
    pub fn typing_indicators(&self) -> usize {
        self.typing.lock().alive()
    }

    fn connect(&self, conn: u64, user: &str) {
        let session = uuid::Uuid::new_v4().to_string();
        self.machine.lock().connect(conn, user, session, now());
    }

    fn activity(&self, conn: u64) {
        self.machine.lock().activity(conn, now());
    }

    fn set_device(&self, conn: u64, device: &str) {
        self.machine.lock().set_device(conn, device);
    }

    fn disconnect(&self, conn: u64) {
        self.machine.lock().disconnect(conn, now());
        self.relay_stops(self.typing.lock().close(conn));
    }

    fn set_mode(&self, user: &str, mode: Mode) -> bool {
        self.machine.lock().set_mode(user, mode)
    }

    fn mode(&self, user: &str) -> Option<Mode> {
        self.machine.lock().mode(user)
    }

    fn learn_mode(&self, user: &str, mode: Mode) {
        self.machine.lock().learn_mode(user, mode, false);
    }

    /// Takes a committed presence change from the WAL; true if some subscriber's queue is
    /// filling up.
    pub fn apply(&self, routed: Routed) -> bool {
        match routed {
            Routed::Update {
                user,
                version,
                frame,
            } => self.hub.deliver(&room(&user), version, &frame).pressed,
            Routed::Mode { user, mode } => {
                self.mode_changed(&user, &mode);
                false
            }
            Routed::Block {
                user,
                blocked,
                added,
            } => {
                self.blocks_changed(&user, &blocked, added);
                false
            }
        }
    }

    fn mode_changed(&self, user: &str, mode: &str) {
        if let Some(mode) = Mode::parse(mode) {
            self.machine.lock().learn_mode(user, mode, true);
        }
    }

    /// A new block ends the live presence subscriptions between the two users, both ways;
    /// any change of blocks re-checks typing.
    fn blocks_changed(&self, user: &str, blocked: &str, added: bool) {
        self.blocks_epoch.fetch_add(1, Ordering::Relaxed);
        if !added {
            return;
        }
        for (watched, viewer) in [(user, blocked), (blocked, user)] {
            let notice = Frame::from(protocol::presence_update(watched, "offline", None, None));
            self.hub.revoke(&room(watched), viewer, &notice);
        }
    }

    fn blocks_epoch(&self) -> u64 {
        self.blocks_epoch.load(Ordering::Relaxed)
    }

    /// `user` on `conn` is typing in `room`: relayed to the room's other subscribers unless
    /// the 2 Hz throttle holds it back. True if relayed.
    fn typing_start(&self, conn: u64, room: &str, user: &Arc<str>) -> bool {
        if !self.typing.lock().start(conn, room, user, now()) {
            return false;
        }
        let frame = Frame::from(protocol::presence_typing(room, user, true));
        self.hub.relay(room, conn, &frame);
        self.stats.typing_relayed.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// `conn` stopped typing in `room`; true if the others were told.
    fn typing_stop(&self, conn: u64, room: &str) -> bool {
        let stopped = self.typing.lock().stop(conn, room);
        match stopped {
            Some(user) => {
                self.relay_stops(vec![(conn, room.to_owned(), user)]);
                true
            }
            None => false,
        }
    }

    fn relay_stops(&self, stopped: Vec<typing::Stopped>) {
        for (conn, room, user) in stopped {
            let frame = Frame::from(protocol::presence_typing(&room, &user, false));
            self.hub.relay(&room, conn, &frame);
            self.stats.typing_relayed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Registers this node (its first heartbeat, which also reaps dead nodes); call before
    /// serving clients.
    pub async fn start(&self) -> anyhow::Result<()> {
        self.beat().await
    }

    /// Writes changes every flush interval and heartbeats, until `shutdown` flips; then
    /// writes what is pending once more. Sessions are not ended on shutdown: clients
    /// reconnect elsewhere within the grace, and the node's sessions expire with its
    /// heartbeat (so nobody sees them flicker offline).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let beater = {
            let presence = self.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis(presence.settings.presence_node_heartbeat_ms);
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.changed() => return,
                    }
                    if let Err(e) = presence.beat().await {
                        tracing::warn!(error = %e, "presence heartbeat failed; will retry");
                    }
                }
            })
        };
        let every = Duration::from_millis(self.settings.presence_flush_ms);
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = ticks.tick() => false,
                _ = shutdown.changed() => true,
            };
            self.flush().await;
            if stopping {
                break;
            }
        }
        let _ = beater.await;
    }

    /// Relays expired typing indicators and writes what changed.
    async fn flush(&self) {
        let now = now();
        let expired = self.typing.lock().expire(now);
        self.relay_stops(expired);
        let ops = self.machine.lock().tick(now);
        if ops.is_empty() {
            return;
        }
        match store::apply(&self.pool, self.node, &ops).await {
            Ok(rows) => {
                self.stats.flushes.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .ops
                    .fetch_add(ops.len() as u64, Ordering::Relaxed);
                self.stats.rows_written.fetch_add(rows, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.flush_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, ops = ops.len(), "writing presence failed; will retry");
                self.machine.lock().restore(ops);
            }
        }
    }

    async fn beat(&self) -> anyhow::Result<()> {
        let beat =
            store::beat(&self.pool, self.node, self.settings.presence_node_expiry_ms).await?;
        self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        self.stats.reaped.fetch_add(beat.reaped, Ordering::Relaxed);
        if beat.reaped > 0 {
            tracing::info!(
                sessions = beat.reaped,
                "ended the presence sessions of nodes whose heartbeat expired"
            );
        }
        if beat.rejoined && self.registered.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                node = %self.node,
                "this node's presence heartbeat had expired and others ended its sessions; writing them again"
            );
            self.machine.lock().resync();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn presence_rooms_never_collide_with_client_rooms() {
        let r = super::room("alice");
        assert_eq!(r, "@presence:alice");
        assert!(!crate::protocol::valid_room(&r));
    }
}
