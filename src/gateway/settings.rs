use std::time::Duration;

use clap::Args;

/// Client-facing limits and timings (seed §3.1, §3.3, §8.2).
#[derive(Debug, Clone, Args)]
pub struct GatewaySettings {
    /// Browser origins allowed to connect, comma-separated (`https://app.example`); empty
    /// allows any origin (non-browser clients send none).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Largest client frame, in bytes.
    #[arg(long, global = true, env = "TRIPTRIP_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Rooms one connection may join.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_MAX_ROOMS_PER_CONNECTION",
        default_value_t = 200
    )]
    pub max_rooms_per_connection: usize,

    /// Open connections per user (all transports).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_MAX_CONNECTIONS_PER_USER",
        default_value_t = 20
    )]
    pub max_connections_per_user: usize,

    /// Sustained publishes per second per connection (bursts up to twice that).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_PUBLISH_RATE",
        default_value_t = 50
    )]
    pub publish_rate: u32,

    /// Bytes queued for one connection before it is cut as a slow consumer.
    #[arg(long, global = true, env = "TRIPTRIP_CONNECTION_QUEUE_BYTES", default_value_t = 1 << 20)]
    pub connection_queue_bytes: usize,

    /// Server ping interval, in milliseconds.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_HEARTBEAT_INTERVAL_MS",
        default_value_t = 25_000
    )]
    pub heartbeat_interval_ms: u64,

    /// A connection silent for this long (milliseconds) is closed.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_HEARTBEAT_TIMEOUT_MS",
        default_value_t = 60_000
    )]
    pub heartbeat_timeout_ms: u64,

    /// How long a connection without a token in its URL or headers has to send `auth` (ms).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_AUTH_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub auth_timeout_ms: u64,

    /// On SIGTERM, how long (ms) clients get to reconnect elsewhere before being closed.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DRAIN_MS",
        default_value_t = 30_000
    )]
    pub drain_ms: u64,

    /// How far back (seconds) a join's `since` can replay from; older answers `resume:failed`.
    #[arg(long, global = true, env = "TRIPTRIP_REPLAY_RETENTION_SECS", default_value_t = 24 * 3600)]
    pub replay_retention_secs: u64,

    /// Days of message history kept in `realtime.messages` for analysts; older daily partitions
    /// are dropped hourly. Unset keeps everything.
    #[arg(long, global = true, env = "TRIPTRIP_HISTORY_RETENTION_DAYS")]
    pub history_retention_days: Option<u32>,
}

impl GatewaySettings {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_millis(self.heartbeat_timeout_ms)
    }

    pub fn auth_timeout(&self) -> Duration {
        Duration::from_millis(self.auth_timeout_ms)
    }

    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }

    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match origin {
            None => true,
            Some(_) if self.allowed_origins.is_empty() => true,
            Some(origin) => self.allowed_origins.iter().any(|o| o == origin),
        }
    }
}
