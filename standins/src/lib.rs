//! Stand-in provider servers on 127.0.0.1 for tests and benchmarks. Each speaks the real
//! protocol of the provider it replaces, records what it received (decoded and verified), and
//! can be told to fail the way the provider fails.

pub mod apns;
pub mod fcm;
mod server;
pub mod sms;
pub mod smtp;
pub mod tls;
pub mod webhook;
pub mod webpush;
