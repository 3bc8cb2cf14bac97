//! Notifications (seed chapter 5): services insert rows in their own transactions; the server
//! routes them to channels by type and user preference and delivers them at least once.

pub mod channels;
