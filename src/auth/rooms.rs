//! Room patterns from the `rooms` claim: `*` matches any run of characters (including none);
//! every other character matches itself.
//!
//! Matching never backtracks: a pattern is split at its stars into a prefix, a suffix and the
//! literal pieces in between; the prefix and suffix are anchored, and each middle piece is found
//! left-most in what remains (`str::find`, a linear-time substring search). Taking the left-most
//! occurrence of each piece is always safe because a star may absorb anything between pieces, so
//! one check costs O(room + pattern) even for adversarial patterns such as `*a*a*a*…*b`.

use std::fmt;
use std::sync::Arc;

/// The room patterns a token grants (`rooms` claim); cheap to clone.
#[derive(Clone, Default)]
pub struct RoomPatterns(Arc<[Pattern]>);

#[derive(Debug)]
struct Pattern {
    source: Box<str>,
    /// `None` for a pattern without `*` (an exact room name).
    glob: Option<Glob>,
}

#[derive(Debug)]
struct Glob {
    prefix: Box<str>,
    /// Non-empty literal pieces between stars, in order.
    middle: Box<[Box<str>]>,
    suffix: Box<str>,
}

impl RoomPatterns {
    /// Compiles patterns. Any string is a valid pattern; the size limits on the claim are enforced
    /// by the verifier.
    pub fn new<I, S>(patterns: I) -> RoomPatterns
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        RoomPatterns(
            patterns
                .into_iter()
                .map(|p| Pattern::compile(p.as_ref()))
                .collect(),
        )
    }

    /// Whether any pattern matches `room`.
    pub fn allows(&self, room: &str) -> bool {
        self.0.iter().any(|pattern| pattern.matches(room))
    }

    /// No patterns: the token grants no room by itself.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of patterns.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The patterns as written in the token.
    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.iter().map(|p| &*p.source)
    }
}

/// Equal when the same patterns appear in the same order.
impl PartialEq for RoomPatterns {
    fn eq(&self, other: &RoomPatterns) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for RoomPatterns {}

impl fmt::Debug for RoomPatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Pattern {
    fn compile(source: &str) -> Pattern {
        let glob = source.find('*').map(|_| {
            let mut pieces = source.split('*');
            // `split` always yields at least one piece, and at least two here (there is a star).
            let prefix = pieces.next().unwrap_or_default();
            let mut rest: Vec<&str> = pieces.collect();
            let suffix = rest.pop().unwrap_or_default();
            Glob {
                prefix: prefix.into(),
                middle: rest
                    .into_iter()
                    .filter(|piece| !piece.is_empty())
                    .map(Box::from)
                    .collect(),
                suffix: suffix.into(),
            }
        });
        Pattern {
            source: source.into(),
            glob,
        }
    }

    fn matches(&self, room: &str) -> bool {
        let Some(glob) = &self.glob else {
            return *self.source == *room;
        };
        if room.len() < glob.prefix.len() + glob.suffix.len()
            || !room.starts_with(&*glob.prefix)
            || !room.ends_with(&*glob.suffix)
        {
            return false;
        }
        // Both ends lie on character boundaries (they end a prefix / start a suffix of `room`).
        let Some(mut rest) = room.get(glob.prefix.len()..room.len() - glob.suffix.len()) else {
            return false;
        };
        for piece in glob.middle.iter() {
            match rest.find(&**piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        true
    }
}
