//! A PostgreSQL logical replication client.
//!
//! - [`pgoutput`] decodes the `pgoutput` plugin's messages and [`copy_data`] the streaming
//!   replication messages around them; both are pure functions over bytes.
//! - [`Connection`] speaks the replication protocol over TCP or TLS (trust, password, md5 and
//!   SCRAM-SHA-256 authentication) and runs replication commands.
//! - [`ReplicationStream`] hands out committed transactions from a slot, resuming from the
//!   confirmed position after any connection loss: at least once, never skipping one.
//!
//! ```no_run
//! # async fn demo() -> Result<(), replication::Error> {
//! use replication::{ConnectConfig, Event, ReplicationStream, StreamConfig};
//! let connect = ConnectConfig::from_url("postgres://postgres@127.0.0.1:5432/app")?;
//! let mut stream = ReplicationStream::start(StreamConfig::new(connect, "my_slot", "my_pub")).await?;
//! loop {
//!     match stream.next().await? {
//!         Event::Change(change) => println!("{change:?}"),
//!         Event::Commit(commit) => stream.confirm(commit.end_lsn),
//!         _ => {}
//!     }
//! }
//! # }
//! ```
#![forbid(unsafe_code)]

mod commands;
mod config;
mod conn;
pub mod copy_data;
mod error;
mod lsn;
pub mod pgoutput;
mod stream;
mod tls;

pub use commands::{SlotInfo, SystemInfo};
pub use config::{ConnectConfig, SslMode};
pub use conn::{Connection, QueryResult};
pub use error::{DbError, Error};
pub use lsn::{Lsn, ParseLsnError};
pub use stream::{Change, Event, ReplicationStream, StreamConfig, StreamStats};
