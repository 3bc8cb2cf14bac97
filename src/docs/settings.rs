use std::time::Duration;

use clap::Args;

/// Collaborative document limits and timings (seed §4, §8.1).
#[derive(Debug, Clone, Args)]
pub struct DocSettings {
    /// Largest Yjs update (or y-websocket message) an editor may send, in bytes.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DOC_MAX_UPDATE_BYTES",
        default_value_t = 1 << 20
    )]
    pub max_update_bytes: usize,

    /// Shortest time between two versions of a document while it is edited (ms); a version is
    /// due every 10 updates or 5 minutes.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DOC_VERSION_INTERVAL_MS",
        default_value_t = 10_000
    )]
    pub version_interval_ms: u64,

    /// A document without editors is unloaded from memory after this long (ms).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DOC_IDLE_MS",
        default_value_t = 30_000
    )]
    pub idle_unload_ms: u64,

    /// An editor's awareness state (cursor, selection) expires after this much silence (ms).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DOC_AWARENESS_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub awareness_timeout_ms: u64,
}

impl DocSettings {
    pub fn version_interval(&self) -> Duration {
        Duration::from_millis(self.version_interval_ms)
    }

    pub fn idle_unload(&self) -> Duration {
        Duration::from_millis(self.idle_unload_ms)
    }

    pub fn awareness_timeout(&self) -> Duration {
        Duration::from_millis(self.awareness_timeout_ms)
    }
}
