//! TripTrip Realtime: PostgreSQL is the single source of truth; committed rows stream through
//! logical replication into rooms and out to clients.
#![forbid(unsafe_code)]

pub mod activity;
pub mod auth;
pub mod config;
pub mod db;
pub mod docs;
pub mod gateway;
pub mod hub;
pub mod inventory;
pub mod maintenance;
pub mod migrate;
pub mod notify;
pub mod ops;
pub mod outbox;
pub mod presence;
pub mod protocol;
pub mod server;
pub mod wal;
