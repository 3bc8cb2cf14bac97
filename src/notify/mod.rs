//! Notifications (seed chapter 5): services insert rows in their own transactions; the server
//! routes them to channels by type and user preference and delivers them at least once.
//!
//! Routing happens in SQL, in the writer's transaction (`realtime.notifications` triggers):
//! a committed notification always has its delivery rows. In-app delivery follows the WAL
//! ([`inapp`]); the outside channels are sent by the [`dispatch`]er through [`channels`].

pub mod channels;
pub mod dispatch;
pub mod inapp;
pub mod listen;

use clap::Args;

/// Notification settings: the dispatcher and every provider.
#[derive(Debug, Clone, Args)]
pub struct NotifySettings {
    /// Deliveries one dispatcher round claims and sends concurrently (1-10000).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DISPATCH_BATCH",
        default_value_t = 100
    )]
    pub dispatch_batch: i32,

    /// Dispatchers on this node (0: this node sends nothing on the outside channels; other
    /// nodes do). Each holds one database connection while it sends a batch.
    #[arg(long, global = true, env = "TRIPTRIP_DISPATCHERS", default_value_t = 1)]
    pub dispatchers: usize,

    /// Outbox relays on this node (0: other nodes relay `realtime.outbox`).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_OUTBOX_RELAYS",
        default_value_t = 1
    )]
    pub outbox_relays: usize,

    #[command(flatten)]
    pub channels: channels::ChannelSettings,
}
