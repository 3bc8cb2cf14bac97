//! Log sequence numbers: positions in the WAL, written `X/Y` by PostgreSQL.

use std::fmt;
use std::str::FromStr;

/// A position in PostgreSQL's write-ahead log.
///
/// ```
/// use replication::Lsn;
/// let lsn: Lsn = "16/B374D848".parse().unwrap();
/// assert_eq!(lsn.to_string(), "16/B374D848");
/// assert_eq!(u64::from(lsn), 0x16_B374_D848);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid position `0/0`; PostgreSQL reads it as "start where the slot is".
    pub const ZERO: Lsn = Lsn(0);
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

impl From<Lsn> for u64 {
    fn from(v: Lsn) -> Self {
        v.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

/// The text is not of the form `X/Y` with two hexadecimal 32-bit halves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal halves like 16/B374D848")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_round_trip() {
        for s in ["0/0", "0/16B3748", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(s.parse::<Lsn>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_text() {
        for s in [
            "",
            "/",
            "0",
            "1/",
            "/1",
            "G/0",
            "1/2/3",
            "100000000/0",
            " 1/2",
        ] {
            assert!(s.parse::<Lsn>().is_err(), "{s:?} should not parse");
        }
    }
}
