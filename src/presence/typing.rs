//! Typing indicators (seed §8.1): who is typing in which room, per connection. Pure: the caller
//! passes the time and relays what this says.
//!
//! A connection's `typing: true` in a room is relayed at most once per `interval` (2 Hz); one
//! arriving sooner only keeps the indicator alive. Without a new one for `timeout` (3 s), or on
//! `typing: false`, leaving the room or closing, the others are told it stopped.

use std::collections::HashMap;
use std::sync::Arc;

use super::machine::Millis;

struct Entry {
    user: Arc<str>,
    relayed_at: Millis,
    expires: Millis,
}

/// A stop to relay: the connection, the room and the user who stopped typing.
pub type Stopped = (u64, String, Arc<str>);

pub struct Typing {
    interval: Millis,
    timeout: Millis,
    entries: HashMap<(u64, String), Entry>,
}

impl Typing {
    pub fn new(interval: Millis, timeout: Millis) -> Typing {
        Typing {
            interval,
            timeout,
            entries: HashMap::new(),
        }
    }

    /// `user` on `conn` is typing in `room`; true if this is to be relayed now.
    pub fn start(&mut self, conn: u64, room: &str, user: &Arc<str>, now: Millis) -> bool {
        let expires = now.saturating_add(self.timeout);
        match self.entries.get_mut(&(conn, room.to_owned())) {
            Some(entry) => {
                entry.expires = expires;
                if now >= entry.relayed_at.saturating_add(self.interval) {
                    entry.relayed_at = now;
                    true
                } else {
                    false
                }
            }
            None => {
                self.entries.insert(
                    (conn, room.to_owned()),
                    Entry {
                        user: user.clone(),
                        relayed_at: now,
                        expires,
                    },
                );
                true
            }
        }
    }

    /// `conn` stopped typing in `room`; the user, if the others had been told it was typing.
    pub fn stop(&mut self, conn: u64, room: &str) -> Option<Arc<str>> {
        self.entries
            .remove(&(conn, room.to_owned()))
            .map(|entry| entry.user)
    }

    /// Indicators silent for the timeout.
    pub fn expire(&mut self, now: Millis) -> Vec<Stopped> {
        let mut stopped = Vec::new();
        self.entries.retain(|(conn, room), entry| {
            let keep = now < entry.expires;
            if !keep {
                stopped.push((*conn, room.clone(), entry.user.clone()));
            }
            keep
        });
        stopped
    }

    /// The connection closed: every room it was typing in.
    pub fn close(&mut self, conn: u64) -> Vec<Stopped> {
        let mut stopped = Vec::new();
        self.entries.retain(|(c, room), entry| {
            let keep = *c != conn;
            if !keep {
                stopped.push((conn, room.clone(), entry.user.clone()));
            }
            keep
        });
        stopped
    }

    /// Indicators alive.
    pub fn alive(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Arc<str> {
        Arc::from("alice")
    }

    #[test]
    fn at_most_two_relays_a_second_and_the_rest_keep_it_alive() {
        let mut t = Typing::new(500, 3_000);
        let relayed = (0..20)
            .filter(|i| t.start(1, "r", &alice(), i * 100))
            .count();
        assert_eq!(
            relayed, 4,
            "2 s of keystrokes every 100 ms: relayed at 0, 0.5, 1, 1.5 s"
        );
        assert!(
            t.expire(4_800).is_empty(),
            "alive until 3 s after the last keystroke"
        );
        assert_eq!(t.expire(4_900), [(1, "r".to_owned(), alice())]);
        assert_eq!(t.alive(), 0);
        assert!(t.start(1, "r", &alice(), 5_000), "typing again is news");
    }

    #[test]
    fn rooms_and_connections_are_separate() {
        let mut t = Typing::new(500, 3_000);
        assert!(t.start(1, "r", &alice(), 0));
        assert!(t.start(1, "s", &alice(), 10));
        assert!(t.start(2, "r", &alice(), 20));
        assert_eq!(t.stop(1, "r"), Some(alice()));
        assert_eq!(t.stop(1, "r"), None, "already stopped: nothing to tell");
        let mut closed = t.close(1);
        closed.sort();
        assert_eq!(closed, [(1, "s".to_owned(), alice())]);
        assert_eq!(t.alive(), 1);
    }
}
