//! The crate's error type.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while creating, starting, stopping or
/// talking to a private cluster.
///
/// Failures of external commands carry the command line, its exit status,
/// the tail of its stderr and (where Postgres itself was involved) the tail
/// of `postgres.log`, so the message alone is enough to diagnose a failed
/// start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No PostgreSQL server installation was found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; searched {searched}. \
         Install PostgreSQL (e.g. `apt-get install postgresql`)"
    )]
    BinariesNotFound {
        /// Human-readable list of the places that were searched.
        searched: String,
    },

    /// An external command could not be spawned at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// The error from `spawn`.
        source: io::Error,
    },

    /// An external command ran and failed.
    #[error(
        "`{command}` failed ({status}){}{}",
        section("stderr", .stderr),
        section("postgres.log", .log_tail)
    )]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its stderr (may be empty).
        stderr: String,
        /// The last lines of `postgres.log` (empty if not relevant).
        log_tail: String,
    },

    /// Postgres did not accept connections in time, or died while starting.
    #[error(
        "PostgreSQL in {} is not ready after {waited:?}: {reason}{}",
        .pgdata.display(),
        section("postgres.log", .log_tail)
    )]
    NotReady {
        /// The data directory.
        pgdata: PathBuf,
        /// How long we waited.
        waited: Duration,
        /// Why we gave up.
        reason: String,
        /// The last lines of `postgres.log`.
        log_tail: String,
    },

    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, including the path.
        context: String,
        /// The underlying error.
        source: io::Error,
    },

    /// Invalid configuration or an environment problem (e.g. the `postgres`
    /// user cannot reach the cluster directory).
    #[error("{0}")]
    Setup(String),
}

fn section(name: &str, text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- {name} (last lines) ---\n{}", text.trim_end())
    }
}

/// Builds a `map_err` closure for I/O errors: `io_err("writing", &path)`.
pub(crate) fn io_err<'a>(
    what: &'a str,
    path: &'a std::path::Path,
) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        context: format!("{what} {}", path.display()),
        source,
    }
}
