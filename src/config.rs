//! Server settings, from flags or environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Where the data lives and where to listen.
#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// PostgreSQL to use instead of the embedded one; it must run with `wal_level=logical`.
    #[arg(long, global = true, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory for the embedded PostgreSQL cluster and the server's own files.
    #[arg(long, global = true, env = "TRIPTRIP_DATA_DIR", default_value = ".triptrip")]
    pub data_dir: PathBuf,

    /// Address of the HTTP and WebSocket listener.
    #[arg(long, global = true, env = "TRIPTRIP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Logical replication slot the server streams from (created if missing).
    #[arg(long, global = true, env = "TRIPTRIP_SLOT", default_value = "triptrip_realtime")]
    pub slot: String,
}
