//! The node's presence sessions in memory, driven by the clock it is given: what to write at
//! each flush. Pure: no I/O, no clock of its own (times are Unix milliseconds passed in).
//!
//! A session is online until it is idle for `away_after`, then away until its next activity.
//! A closed connection's session lingers for `grace` before it ends (a new connection of the
//! same user on this node ends it at once: a reconnect within the grace changes nothing
//! others see). A user's changes are written at most once per `throttle`; what happens in
//! between is coalesced into the next write.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{json, Value};

/// Unix milliseconds.
pub type Millis = u64;

/// What the user chose (`presence:set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Online or away, from the sessions (`presence:set` with `online`).
    Auto,
    Dnd,
    Invisible,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Dnd => "dnd",
            Mode::Invisible => "invisible",
        }
    }

    /// The stored form (`auto`, `dnd`, `invisible`).
    pub fn parse(text: &str) -> Option<Mode> {
        match text {
            "auto" => Some(Mode::Auto),
            "dnd" => Some(Mode::Dnd),
            "invisible" => Some(Mode::Invisible),
            _ => None,
        }
    }
}

/// A session's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Online,
    Away,
}

impl Activity {
    fn as_str(self) -> &'static str {
        match self {
            Activity::Online => "online",
            Activity::Away => "away",
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The grace period after the connection closed passed.
    Disconnect,
    /// The user connected again on this node within the grace period.
    Replaced,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Disconnect => "disconnect",
            EndReason::Replaced => "replaced",
        }
    }
}

/// The machine's timings, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub away_after: Millis,
    pub grace: Millis,
    pub throttle: Millis,
}

/// One change to write (`realtime.presence_apply`). A batch holds at most one op per session
/// and one mode per user.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// The session as it is now.
    Upsert(SessionRow),
    /// The session ended at `at`.
    End {
        row: SessionRow,
        at: Millis,
        reason: EndReason,
    },
    Mode {
        user: Arc<str>,
        mode: Mode,
    },
}

/// What the store keeps of a session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// The connection (not stored).
    pub conn: u64,
    pub session: String,
    pub user: Arc<str>,
    pub device: Option<String>,
    pub state: Activity,
    pub started: Millis,
    pub active: Millis,
}

impl Op {
    /// The JSON `realtime.presence_apply` takes.
    pub fn to_json(&self) -> Value {
        match self {
            Op::Upsert(row) => json!({
                "op": "upsert", "session": row.session, "user": &*row.user,
                "device": row.device, "state": row.state.as_str(),
                "started": row.started, "active": row.active,
            }),
            Op::End { row, at, reason } => json!({
                "op": "end", "session": row.session, "user": &*row.user,
                "device": row.device, "started": row.started, "at": at,
                "reason": reason.as_str(),
            }),
            Op::Mode { user, mode } => {
                json!({ "op": "mode", "user": &**user, "mode": mode.as_str() })
            }
        }
    }

    fn user(&self) -> &Arc<str> {
        match self {
            Op::Upsert(row) | Op::End { row, .. } => &row.user,
            Op::Mode { user, .. } => user,
        }
    }
}

struct Session {
    row: SessionRow,
    /// When the connection closed (the session lingers for the grace period).
    gone_at: Option<Millis>,
    /// Changed since it was last handed out for writing.
    dirty: bool,
}

#[derive(Default)]
struct User {
    /// Connections with a session on this node, lingering ones included.
    conns: Vec<u64>,
    /// The mode as this node knows it (None: not loaded yet).
    mode: Option<Mode>,
    /// A mode set here and not yet written.
    pending_mode: Option<Mode>,
    /// Ended sessions not yet written.
    ended: Vec<Op>,
    /// The user's changes are not written again before this (the throttle).
    next_write: Millis,
}

/// The node's sessions, keyed by connection id.
pub struct Machine {
    timings: Timings,
    sessions: HashMap<u64, Session>,
    users: HashMap<Arc<str>, User>,
}

impl Machine {
    pub fn new(timings: Timings) -> Machine {
        Machine {
            timings,
            sessions: HashMap::new(),
            users: HashMap::new(),
        }
    }

    /// A connection of `user` opened: a new online session. The user's lingering sessions on
    /// this node end now (replaced).
    pub fn connect(&mut self, conn: u64, user: &str, session: String, now: Millis) {
        let user = self
            .users
            .get_key_value(user)
            .map_or_else(|| Arc::<str>::from(user), |(name, _)| name.clone());
        let lingering: Vec<u64> = self.users.get(&user).map_or_else(Vec::new, |entry| {
            entry
                .conns
                .iter()
                .copied()
                .filter(|c| self.sessions.get(c).is_some_and(|s| s.gone_at.is_some()))
                .collect()
        });
        for conn in lingering {
            self.end(conn, EndReason::Replaced);
        }
        self.users.entry(user.clone()).or_default().conns.push(conn);
        self.sessions.insert(
            conn,
            Session {
                row: SessionRow {
                    conn,
                    session,
                    user,
                    device: None,
                    state: Activity::Online,
                    started: now,
                    active: now,
                },
                gone_at: None,
                dirty: true,
            },
        );
    }

    /// A client frame on `conn`: the session is active (and online again if it was away).
    pub fn activity(&mut self, conn: u64, now: Millis) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            if session.gone_at.is_some() {
                return;
            }
            session.row.active = session.row.active.max(now);
            if session.row.state == Activity::Away {
                session.row.state = Activity::Online;
                session.dirty = true;
            }
        }
    }

    /// What the client calls itself.
    pub fn set_device(&mut self, conn: u64, device: &str) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            if session.row.device.as_deref() != Some(device) {
                session.row.device = Some(device.to_owned());
                session.dirty = true;
            }
        }
    }

    /// The connection closed: its session lingers for the grace period.
    pub fn disconnect(&mut self, conn: u64, now: Millis) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.gone_at.get_or_insert(now);
        }
    }

    /// The user chose a mode on this node. False if the user has no session here.
    pub fn set_mode(&mut self, user: &str, mode: Mode) -> bool {
        match self.users.get_mut(user) {
            Some(entry) => {
                entry.mode = Some(mode);
                entry.pending_mode = Some(mode);
                true
            }
            None => false,
        }
    }

    /// The user's mode, if known here.
    pub fn mode(&self, user: &str) -> Option<Mode> {
        self.users.get(user).and_then(|u| u.mode)
    }

    /// The stored mode of a user with a session here: from the database (`replace` false: only
    /// if nothing newer is known) or from the WAL (`replace` true).
    pub fn learn_mode(&mut self, user: &str, mode: Mode, replace: bool) {
        if let Some(entry) = self.users.get_mut(user) {
            if replace || entry.mode.is_none() {
                entry.mode = Some(mode);
            }
        }
    }

    /// Sessions on this node, lingering ones included.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Every session must be written again (others reaped this node while it was cut off).
    pub fn resync(&mut self) {
        for session in self.sessions.values_mut() {
            session.dirty = true;
        }
    }

    fn end(&mut self, conn: u64, reason: EndReason) {
        let Some(session) = self.sessions.remove(&conn) else {
            return;
        };
        let at = session.gone_at.unwrap_or(session.row.active);
        if let Some(user) = self.users.get_mut(&session.row.user) {
            user.conns.retain(|&c| c != conn);
            user.ended.push(Op::End {
                row: session.row,
                at,
                reason,
            });
        }
    }

    /// Advances to `now`: sessions idle for `away_after` turn away, lingering sessions past the
    /// grace end; returns the changes of the users whose throttle allows a write.
    pub fn tick(&mut self, now: Millis) -> Vec<Op> {
        let Timings {
            away_after, grace, ..
        } = self.timings;
        let mut expired = Vec::new();
        for (conn, session) in &mut self.sessions {
            match session.gone_at {
                Some(gone) if now >= gone.saturating_add(grace) => expired.push(*conn),
                _ if session.row.state == Activity::Online
                    && now >= session.row.active.saturating_add(away_after) =>
                {
                    session.row.state = Activity::Away;
                    session.dirty = true;
                }
                _ => {}
            }
        }
        for conn in expired {
            self.end(conn, EndReason::Disconnect);
        }
        self.take(now)
    }

    fn take(&mut self, now: Millis) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut wrote: HashSet<Arc<str>> = HashSet::new();
        let users = &self.users;
        for session in self.sessions.values_mut().filter(|s| s.dirty) {
            let allowed = users
                .get(&session.row.user)
                .is_some_and(|entry| now >= entry.next_write);
            if allowed {
                session.dirty = false;
                wrote.insert(session.row.user.clone());
                ops.push(Op::Upsert(session.row.clone()));
            }
        }
        let throttle = self.timings.throttle;
        self.users.retain(|user, entry| {
            let mut written = wrote.contains(user);
            if now >= entry.next_write {
                if let Some(mode) = entry.pending_mode.take() {
                    ops.push(Op::Mode {
                        user: user.clone(),
                        mode,
                    });
                    written = true;
                }
                if !entry.ended.is_empty() {
                    ops.append(&mut entry.ended);
                    written = true;
                }
            }
            if written {
                entry.next_write = now.saturating_add(throttle);
            }
            !entry.conns.is_empty()
                || entry.pending_mode.is_some()
                || !entry.ended.is_empty()
                || now < entry.next_write
        });
        ops
    }

    /// Takes back the ops of a write that failed, to be written with the next one. Changes
    /// made meanwhile win over them.
    pub fn restore(&mut self, ops: Vec<Op>) {
        for op in ops {
            match op {
                Op::Upsert(row) => {
                    if let Some(session) = self.sessions.get_mut(&row.conn) {
                        session.dirty = true;
                    }
                }
                Op::End { .. } => {
                    let user = op.user().clone();
                    self.users.entry(user).or_default().ended.push(op);
                }
                Op::Mode { user, mode } => {
                    self.users
                        .entry(user)
                        .or_default()
                        .pending_mode
                        .get_or_insert(mode);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timings = Timings {
        away_after: 300_000,
        grace: 30_000,
        throttle: 1_000,
    };

    fn machine() -> Machine {
        Machine::new(T)
    }

    /// (op kind, user, state or mode or reason) of each op, sorted.
    fn summary(ops: &[Op]) -> Vec<(String, String, String)> {
        let mut out: Vec<_> = ops
            .iter()
            .map(|op| match op {
                Op::Upsert(row) => (
                    "upsert".into(),
                    row.user.to_string(),
                    row.state.as_str().into(),
                ),
                Op::End { row, reason, .. } => {
                    ("end".into(), row.user.to_string(), reason.as_str().into())
                }
                Op::Mode { user, mode } => ("mode".into(), user.to_string(), mode.as_str().into()),
            })
            .collect();
        out.sort();
        out
    }

    fn s(kind: &str, user: &str, what: &str) -> (String, String, String) {
        (kind.into(), user.into(), what.into())
    }

    #[test]
    fn a_connection_is_written_at_the_next_tick_and_then_only_on_change() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 1_000);
        assert_eq!(summary(&m.tick(1_050)), [s("upsert", "alice", "online")]);
        assert!(m.tick(1_150).is_empty());
        // Activity keeps it online without writing anything.
        for t in (2_000..200_000).step_by(10_000) {
            m.activity(1, t);
            assert!(m.tick(t + 50).is_empty());
        }
    }

    #[test]
    fn idle_for_the_away_time_turns_away_and_activity_brings_it_back() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 0);
        m.tick(10);
        m.activity(1, 60_000);
        assert!(
            m.tick(359_999).is_empty(),
            "5 min after the last activity, not before"
        );
        let ops = m.tick(360_000);
        assert_eq!(summary(&ops), [s("upsert", "alice", "away")]);
        let Op::Upsert(row) = &ops[0] else { panic!() };
        assert_eq!(row.active, 60_000, "the last activity is kept");
        assert!(m.tick(400_000).is_empty());
        m.activity(1, 500_000);
        assert_eq!(summary(&m.tick(500_050)), [s("upsert", "alice", "online")]);
    }

    #[test]
    fn a_disconnect_ends_the_session_only_after_the_grace() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 0);
        m.tick(10);
        m.disconnect(1, 5_000);
        assert!(m.tick(34_999).is_empty(), "still within the grace");
        assert_eq!(m.sessions(), 1);
        let ops = m.tick(35_000);
        assert_eq!(summary(&ops), [s("end", "alice", "disconnect")]);
        let Op::End { at, .. } = &ops[0] else {
            panic!()
        };
        assert_eq!(*at, 5_000, "ended when the connection closed");
        assert_eq!(m.sessions(), 0);
        assert!(m.tick(60_000).is_empty());
    }

    #[test]
    fn a_reconnect_within_the_grace_replaces_the_lingering_session() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 0);
        m.tick(10);
        m.disconnect(1, 5_000);
        m.connect(2, "alice", "s2".into(), 12_000);
        assert_eq!(
            summary(&m.tick(12_050)),
            [
                s("end", "alice", "replaced"),
                s("upsert", "alice", "online")
            ]
        );
        assert_eq!(m.sessions(), 1);
        assert!(
            m.tick(60_000).is_empty(),
            "nothing more when the grace would have run out"
        );
    }

    #[test]
    fn another_device_keeps_the_user_and_each_session_is_its_own() {
        let mut m = machine();
        m.connect(1, "alice", "phone".into(), 0);
        m.connect(2, "alice", "laptop".into(), 0);
        assert_eq!(m.tick(10).len(), 2);
        m.disconnect(1, 1_000);
        m.activity(2, 20_000);
        let ops = m.tick(31_000);
        assert_eq!(summary(&ops), [s("end", "alice", "disconnect")]);
        let Op::End { row, .. } = &ops[0] else {
            panic!()
        };
        assert_eq!(row.session, "phone");
        assert_eq!(m.sessions(), 1);
    }

    #[test]
    fn a_user_is_written_at_most_once_per_throttle_and_changes_in_between_coalesce() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 0);
        assert_eq!(m.tick(100).len(), 1);
        m.set_mode("alice", Mode::Dnd);
        assert!(m.tick(200).is_empty(), "within a second of the last write");
        m.set_mode("alice", Mode::Invisible);
        m.set_mode("alice", Mode::Auto);
        assert!(m.tick(1_099).is_empty());
        assert_eq!(summary(&m.tick(1_100)), [s("mode", "alice", "auto")]);
        // Another user is not held back by alice's throttle.
        m.connect(2, "bob", "s2".into(), 1_150);
        m.set_mode("alice", Mode::Dnd);
        assert_eq!(summary(&m.tick(1_200)), [s("upsert", "bob", "online")]);
        assert_eq!(summary(&m.tick(2_100)), [s("mode", "alice", "dnd")]);
    }

    #[test]
    fn modes_need_a_session_here_and_the_wal_overrides_a_database_load() {
        let mut m = machine();
        assert!(!m.set_mode("alice", Mode::Dnd));
        assert_eq!(m.mode("alice"), None);
        m.connect(1, "alice", "s1".into(), 0);
        m.learn_mode("alice", Mode::Invisible, false);
        m.learn_mode("alice", Mode::Auto, false);
        assert_eq!(
            m.mode("alice"),
            Some(Mode::Invisible),
            "a load does not overwrite"
        );
        m.learn_mode("alice", Mode::Dnd, true);
        assert_eq!(m.mode("alice"), Some(Mode::Dnd));
        m.learn_mode("bob", Mode::Dnd, true);
        assert_eq!(m.mode("bob"), None, "not tracked without a session here");
    }

    #[test]
    fn a_failed_write_is_retried_with_what_changed_since() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 0);
        m.set_mode("alice", Mode::Dnd);
        let failed = m.tick(100);
        assert_eq!(failed.len(), 2);
        m.set_mode("alice", Mode::Invisible);
        m.restore(failed);
        assert_eq!(
            summary(&m.tick(1_100)),
            [
                s("mode", "alice", "invisible"),
                s("upsert", "alice", "online")
            ]
        );
        // An end that failed is written again, even once the user is gone from memory.
        m.disconnect(1, 2_000);
        let failed = m.tick(40_000);
        assert_eq!(summary(&failed), [s("end", "alice", "disconnect")]);
        m.restore(failed);
        assert_eq!(summary(&m.tick(41_000)), [s("end", "alice", "disconnect")]);
        assert!(m.tick(50_000).is_empty());
    }

    #[test]
    fn resync_rewrites_every_session() {
        let mut m = machine();
        m.connect(1, "alice", "s1".into(), 0);
        m.connect(2, "bob", "s2".into(), 0);
        m.tick(10);
        m.resync();
        assert_eq!(m.tick(2_000).len(), 2);
    }

    #[test]
    fn ops_are_the_json_the_store_takes() {
        let row = SessionRow {
            conn: 7,
            session: "0b6f…".into(),
            user: Arc::from("alice"),
            device: Some("phone".into()),
            state: Activity::Away,
            started: 1,
            active: 2,
        };
        assert_eq!(
            Op::Upsert(row.clone()).to_json(),
            json!({"op": "upsert", "session": "0b6f…", "user": "alice", "device": "phone",
                   "state": "away", "started": 1, "active": 2})
        );
        assert_eq!(
            Op::End {
                row,
                at: 3,
                reason: EndReason::Replaced
            }
            .to_json()["reason"],
            "replaced"
        );
        assert_eq!(
            Op::Mode {
                user: Arc::from("bob"),
                mode: Mode::Invisible
            }
            .to_json(),
            json!({"op": "mode", "user": "bob", "mode": "invisible"})
        );
        assert_eq!(Mode::parse("dnd"), Some(Mode::Dnd));
        assert_eq!(Mode::parse("online"), None);
    }
}
