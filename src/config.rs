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
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_DATA_DIR",
        default_value = ".triptrip"
    )]
    pub data_dir: PathBuf,

    /// Address of the HTTP and WebSocket listener.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub listen: SocketAddr,

    /// Logical replication slot the server streams from (created if missing).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_SLOT",
        default_value = "triptrip_realtime"
    )]
    pub slot: String,

    /// HS256 secret that client JWTs are signed with (text; prefer the environment variable over
    /// the flag, which other local users can see in the process list). Without this and without
    /// --jwt-public-key, a random secret is generated once and kept in the data directory's
    /// jwt.secret file (mode 0600).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<crate::auth::JwtSecret>,

    /// Path to a PEM public key (RSA for RS256, EC P-256 for ES256; the algorithm follows the key
    /// type) that client JWTs are verified with.
    #[arg(long, global = true, env = "TRIPTRIP_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Path to the PEM (PKCS#8) private key matching --jwt-public-key; lets the `token` command
    /// sign RS256/ES256 tokens. The server itself never needs it.
    #[arg(long, global = true, env = "TRIPTRIP_JWT_PRIVATE_KEY")]
    pub jwt_private_key: Option<PathBuf>,

    /// Required `iss` claim of client JWTs (not checked when unset).
    #[arg(long, global = true, env = "TRIPTRIP_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim of client JWTs, a string or one entry of an array (not checked when
    /// unset).
    #[arg(long, global = true, env = "TRIPTRIP_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    #[command(flatten)]
    pub gateway: crate::gateway::GatewaySettings,
    #[command(flatten)]
    pub docs: crate::docs::DocSettings,
    #[command(flatten)]
    pub notify: crate::notify::NotifySettings,
    #[command(flatten)]
    pub presence: crate::presence::PresenceSettings,
}
