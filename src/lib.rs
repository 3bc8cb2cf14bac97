//! TripTrip Realtime: PostgreSQL is the single source of truth; committed rows stream through
//! logical replication into rooms and out to clients.
#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod migrate;
pub mod ops;
pub mod server;
pub mod wal;
