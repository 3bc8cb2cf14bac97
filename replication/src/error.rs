use std::fmt;
use std::io;

use crate::pgoutput::DecodeError;

/// Everything that can go wrong talking to PostgreSQL over a replication connection.
///
/// Errors are either *transient* (the connection broke, the server is restarting, the slot is
/// held by another consumer): [`ReplicationStream`](crate::ReplicationStream) retries them with
/// backoff; or *definite* (bad credentials, missing database or publication, undecodable data):
/// retrying cannot help, so they are reported to the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error talking to PostgreSQL: {0}")]
    Io(#[from] io::Error),
    #[error("PostgreSQL: {0}")]
    Db(DbError),
    #[error("protocol violation: {0}")]
    Protocol(String),
    #[error("cannot decode replication data: {0}")]
    Decode(#[from] DecodeError),
    #[error("invalid connection settings: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("authentication failed: {0}")]
    Auth(String),
}

impl Error {
    /// Whether retrying later (on a new connection) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io(_) | Error::Protocol(_) => true,
            Error::Db(e) => e.is_transient(),
            Error::Decode(_) | Error::Config(_) | Error::Tls(_) | Error::Auth(_) => false,
        }
    }

    /// The SQLSTATE code if PostgreSQL reported the error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Db(e) => Some(&e.code),
            _ => None,
        }
    }
}

/// An `ErrorResponse` from the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbError {
    pub severity: String,
    /// SQLSTATE, for example `42704` (undefined object).
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DbError {
    fn is_transient(&self) -> bool {
        let class = self.code.get(..2).unwrap_or("");
        matches!(class, "08" | "53" | "57" | "58")
            || self.code == "55006"
            || self.code == "40001"
            || self.code == "40P01"
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)?;
        if let Some(detail) = &self.detail {
            write!(f, " (detail: {detail})")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}
