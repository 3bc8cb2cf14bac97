//! Private PostgreSQL clusters for TripTrip Realtime.
//!
//! This crate runs PostgreSQL binaries that are already installed on the
//! machine (see [`find_bindir`]) against a directory it owns. It is shared by
//! two kinds of callers, with different guarantees:
//!
//! * **The server** ([`Cluster::open`]): an embedded private cluster under a
//!   root directory of your choice. The cluster is created on first use and
//!   its data is **kept** across restarts; the port is remembered in
//!   `root/port`, the generated superuser password in
//!   `root/postgres.password`. A postmaster that is still running for the
//!   same data directory (e.g. the server was `kill -9`ed) is adopted instead
//!   of started twice, and a stale `postmaster.pid` left by a crash does not
//!   prevent starting. Persistent clusters are **not** stopped on drop; call
//!   [`Cluster::stop`] on shutdown.
//! * **Tests** ([`Cluster::temporary`]): a **hermetic** cluster in a fresh
//!   temporary directory, on a private port, that is stopped immediately and
//!   removed when the [`Cluster`] is dropped. Any number of them may run in
//!   parallel (threads or processes); a port collision at start is retried on
//!   another port.
//!
//! Every cluster listens on `127.0.0.1` only (password authentication,
//! SCRAM) and on a private unix socket directory `root/socket` (trust, used
//! by [`Cluster::psql`]). It is configured for logical replication
//! (`wal_level = logical`, 20 replication slots, 20 WAL senders).
//!
//! When running as root (uid 0), every Postgres binary is run as the
//! `postgres` user via `runuser`, and the directories it writes are owned by
//! `postgres`; the parents of the root directory must be traversable by that
//! user.
//!
//! The API is synchronous and based on `std::process`; from async code call it
//! at startup or inside `spawn_blocking`.
//!
//! # Example
//!
//! ```no_run
//! use pgcluster::{Cluster, ClusterConfig};
//!
//! # fn main() -> Result<(), pgcluster::Error> {
//! // The server: data kept under ./data/pg across restarts.
//! let mut pg = Cluster::open(ClusterConfig::new("data/pg").setting("max_connections", "200"))?;
//! let url = pg.create_database("triptrip")?; // created if missing
//! println!("connect to {url}");
//! // ... serve ...
//! pg.stop()?;
//!
//! // A test: a throwaway cluster, removed on drop.
//! let db = Cluster::temporary()?;
//! assert_eq!(db.psql("postgres", "SHOW wal_level")?.trim(), "logical");
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod bindir;
mod command;
mod config;
mod error;
mod init;
mod ownership;
mod port;
mod process;
mod procfs;
mod quote;
mod tls;

pub use bindir::find_bindir;
pub use error::Error;

use command::{run, run_with_stdin};
use config::validate_setting;
use error::io_err;
use ownership::{chown, effective_uid, postgres_os_user, set_mode, OsUser};
use port::pick_free_port;
use process::read_pid_file;
use quote::{conninfo_quote, percent_encode, quote_ident, quote_literal};
use std::fs;
use std::path::{Path, PathBuf};

/// The only TCP address clusters listen on.
const HOST: &str = "127.0.0.1";
/// The superuser created by `initdb`.
const SUPERUSER: &str = "postgres";

/// Where and how to run a cluster; see [`Cluster::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Directory owning everything: `pgdata/`, `socket/`, `postgres.log`,
    /// `postgres.password`, `port`. Created if missing.
    pub root: PathBuf,
    /// TCP port on 127.0.0.1. `None`: the port remembered from the previous
    /// open of this root, else a free one.
    pub port: Option<u16>,
    /// Extra `postgresql.conf` settings as `(name, value)`. Values are quoted
    /// for you (a value already wrapped in single quotes is used verbatim).
    /// They come after ours, so they may override them.
    pub settings: Vec<(String, String)>,
}

impl ClusterConfig {
    /// A configuration for the cluster under `root`, with an automatic port
    /// and no extra settings.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ClusterConfig {
            root: root.into(),
            port: None,
            settings: Vec::new(),
        }
    }

    /// Use this TCP port.
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Adds a `postgresql.conf` setting.
    #[must_use]
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }
}

/// A private PostgreSQL cluster; see the [crate docs](crate).
pub struct Cluster {
    root: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    log_file: PathBuf,
    bindir: PathBuf,
    port: u16,
    /// The port was requested explicitly, so never move to another one.
    port_fixed: bool,
    password: String,
    settings: Vec<(String, String)>,
    /// `Some` when we are root and must run Postgres as `postgres`.
    run_as: Option<OsUser>,
    /// `Some` for temporary clusters: removed (after an immediate stop) on drop.
    temp_dir: Option<tempfile::TempDir>,
    /// `open` found the postmaster already running and took it over.
    adopted: bool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("root", &self.root)
            .field("port", &self.port)
            .field("bindir", &self.bindir)
            .field("temporary", &self.temp_dir.is_some())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens the cluster under `config.root`, creating it on first use, and
    /// starts it (or adopts a postmaster already running for its data
    /// directory).
    ///
    /// Layout: `root/pgdata` (initdb: UTF8, C locale, superuser `postgres`,
    /// trust over the unix socket, SCRAM over TCP), `root/socket`,
    /// `root/postgres.log`, `root/postgres.password` (0600), `root/port`.
    /// Our settings live in `pgdata/pgcluster.conf` (included from
    /// `postgresql.conf`, rewritten on every open); `ALTER SYSTEM` still
    /// overrides them.
    ///
    /// Port: `config.port`, else the one remembered in `root/port`, else a
    /// free one. Unless it was given explicitly, a port found taken at start
    /// is replaced by a free one.
    pub fn open(config: ClusterConfig) -> Result<Cluster, Error> {
        Self::open_impl(config, None)
    }

    /// A hermetic cluster in a new temporary directory, on a free port,
    /// stopped immediately and removed on drop.
    pub fn temporary() -> Result<Cluster, Error> {
        Self::temporary_with(&[])
    }

    /// Like [`Cluster::temporary`], with extra `postgresql.conf` settings.
    pub fn temporary_with(settings: &[(&str, &str)]) -> Result<Cluster, Error> {
        let dir = tempfile::Builder::new()
            .prefix("pgcluster-")
            .tempdir()
            .map_err(|source| Error::Io {
                context: "creating a temporary directory".to_owned(),
                source,
            })?;
        let config = ClusterConfig {
            root: dir.path().to_owned(),
            port: None,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        Self::open_impl(config, Some(dir))
    }

    fn open_impl(
        config: ClusterConfig,
        temp_dir: Option<tempfile::TempDir>,
    ) -> Result<Cluster, Error> {
        let ClusterConfig {
            root,
            port,
            settings,
        } = config;
        for (name, value) in &settings {
            validate_setting(name, value)?;
        }
        let bindir = find_bindir()?;
        let run_as = if effective_uid()? == 0 {
            Some(postgres_os_user()?)
        } else {
            None
        };

        fs::create_dir_all(&root).map_err(io_err("creating", &root))?;
        let root = fs::canonicalize(&root).map_err(io_err("resolving", &root))?;
        let socket_dir = root.join("socket");
        // sun_path is 108 bytes including the terminating NUL.
        let socket_path_len = socket_dir.join(".s.PGSQL.65535.lock").as_os_str().len();
        if socket_path_len > 107 {
            return Err(Error::Setup(format!(
                "cluster root {} is too deep: the unix socket path would be {socket_path_len} bytes (max 107); choose a shorter root",
                root.display()
            )));
        }

        let mut cluster = Cluster {
            pgdata: root.join("pgdata"),
            log_file: root.join("postgres.log"),
            socket_dir,
            root,
            bindir,
            port: 0,
            port_fixed: port.is_some(),
            password: String::new(),
            settings,
            run_as,
            temp_dir,
            adopted: false,
        };

        if cluster.temp_dir.is_some() {
            // Hermetic: nobody but the server user (and root) looks inside.
            set_mode(&cluster.root, 0o700)?;
        }
        if let Some(user) = run_as {
            chown(&cluster.root, user)?;
            cluster.check_postgres_can_write()?;
        }
        fs::create_dir_all(&cluster.socket_dir).map_err(io_err("creating", &cluster.socket_dir))?;
        set_mode(&cluster.socket_dir, 0o700)?;
        cluster.chown_to_postgres(&cluster.socket_dir)?;

        cluster.password = cluster.init_if_needed()?;

        let running_port = cluster
            .running_postmaster()
            .and_then(|_| read_pid_file(&cluster.pgdata))
            .and_then(|info| info.port);
        cluster.port = match (running_port, port) {
            (Some(running), Some(wanted)) if running != wanted => {
                return Err(Error::Setup(format!(
                    "a postmaster for {} is already running on port {running}, but port {wanted} was requested; stop it first",
                    cluster.pgdata.display()
                )));
            }
            (Some(running), _) => running,
            (None, Some(wanted)) => wanted,
            (None, None) => match cluster.remembered_port() {
                Some(p) => p,
                None => pick_free_port()?,
            },
        };
        cluster.write_port_file()?;
        cluster.write_settings()?;
        cluster.adopted = running_port.is_some();
        if running_port.is_some() {
            // Adopting: apply whatever settings can change without a restart.
            let _ = cluster.run_pg(cluster.pg_ctl("reload"), false);
        }
        cluster.start()?;
        Ok(cluster)
    }

    /// Whether `open` found this cluster already running (left by an earlier process) instead
    /// of starting it.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// TCP port on [`Cluster::host`].
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The superuser (`postgres`) password, for TCP connections.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's root directory (canonical path).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The data directory, `root/pgdata`.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// The unix socket directory, `root/socket` (trust authentication).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The server log, `root/postgres.log`.
    pub fn log_path(&self) -> &Path {
        &self.log_file
    }

    /// The directory of the PostgreSQL binaries in use.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// `postgres://postgres:<password>@127.0.0.1:<port>/<db>`, percent-encoded.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@{HOST}:{}/{}",
            percent_encode(&self.password),
            self.port,
            percent_encode(db)
        )
    }

    /// Runs `sql` with `psql` as the superuser over the unix socket
    /// (`-X -q --no-align --tuples-only`, `ON_ERROR_STOP=1`, script read from
    /// stdin so it may hold several statements and psql meta-commands) and
    /// returns its stdout. Meant for test setup.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
        let conninfo = format!(
            "host={} port={} user={SUPERUSER} dbname={}",
            conninfo_quote(&self.socket_dir.to_string_lossy()),
            self.port,
            conninfo_quote(db)
        );
        let out = run_with_stdin(self.psql_command(conninfo), sql.as_bytes())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Creates database `name` unless it exists; returns its [`url`](Self::url).
    pub fn create_database(&self, name: &str) -> Result<String, Error> {
        let exists = self.psql(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(name)
            ),
        )?;
        if exists.trim().is_empty() {
            self.psql(
                "postgres",
                &format!("CREATE DATABASE {}", quote_ident(name)),
            )?;
        }
        Ok(self.url(name))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.temp_dir.is_none() {
            return; // persistent: keeps running until stop()
        }
        if self.is_running() {
            let mut cmd = self.pg_ctl("stop");
            cmd.args(["-m", "immediate"]);
            let _ = run(cmd, None);
            if self.is_running() {
                let _ = self.kill();
            }
        }
        // `temp_dir` is dropped after this, removing the directory.
    }
}
