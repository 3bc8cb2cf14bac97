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

mod error;
mod procfs;

pub use error::Error;

use error::io_err;
use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The only TCP address clusters listen on.
const HOST: &str = "127.0.0.1";
/// The superuser created by `initdb`.
const SUPERUSER: &str = "postgres";
/// The OS user Postgres runs as when we are root.
const OS_USER: &str = "postgres";
/// How long [`Cluster::start`] waits for connections to be accepted.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// `pg_ctl -t`: covers crash recovery of a large cluster.
const PG_CTL_TIMEOUT_SECS: &str = "120";
/// Start attempts on fresh ports when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;
/// Name of our settings file inside the data directory.
const SETTINGS_FILE: &str = "pgcluster.conf";
const INCLUDE_LINE: &str = "include 'pgcluster.conf'";
/// Lines of stderr / postgres.log quoted in errors.
const TAIL_LINES: usize = 30;

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

/// The OS identity Postgres runs as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OsUser {
    uid: u32,
    gid: u32,
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

/// Finds the directory holding the PostgreSQL server binaries: `pg_config
/// --bindir` if it has `initdb`, else the newest `/usr/lib/postgresql/*/bin`,
/// else the directory of `initdb` on `PATH` (symlinks resolved).
pub fn find_bindir() -> Result<PathBuf, Error> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(dir) = FOUND.get() {
        return Ok(dir.clone());
    }
    let dir = search_bindir()?;
    Ok(FOUND.get_or_init(|| dir).clone())
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| dir.join(b).is_file())
}

fn search_bindir() -> Result<PathBuf, Error> {
    let mut searched = Vec::new();

    match Command::new("pg_config").arg("--bindir").output() {
        Ok(out) if out.status.success() => {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if has_server_binaries(&dir) {
                return Ok(dir);
            }
            searched.push(format!("`pg_config --bindir` ({})", dir.display()));
        }
        _ => searched.push("`pg_config --bindir` (no usable pg_config)".to_owned()),
    }

    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_server_binaries(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    searched.push("/usr/lib/postgresql/*/bin".to_owned());

    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if !initdb.is_file() {
                continue;
            }
            let real = fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(bin) = real.parent().filter(|d| has_server_binaries(d)) {
                return Ok(bin.to_owned());
            }
        }
    }
    searched.push("`initdb` on PATH".to_owned());

    Err(Error::BinariesNotFound {
        searched: searched.join(", "),
    })
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

    /// TCP port on [`Cluster::host`].
    /// Whether `open` found this cluster already running (left by an earlier process) instead
    /// of starting it.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

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

    /// Starts Postgres (`pg_ctl start -w`) and waits until it accepts
    /// connections. A no-op (apart from waiting for readiness) if a postmaster
    /// for this data directory is already running.
    pub fn start(&mut self) -> Result<(), Error> {
        if self.is_running() {
            match self.wait_ready(READY_TIMEOUT) {
                Ok(()) => return Ok(()),
                Err(e) if self.is_running() => return Err(e),
                // It exited while we waited (it was shutting down): start it.
                Err(_) => {}
            }
        }
        self.clear_stale_locks()?;
        let mut attempt = 1;
        loop {
            let log_offset = fs::metadata(&self.log_file).map_or(0, |m| m.len());
            let mut cmd = self.pg_ctl("start");
            cmd.arg("-l").arg(&self.log_file);
            match self.run_pg(cmd, true) {
                Ok(_) => break,
                Err(err) => {
                    if self.port_fixed
                        || attempt >= PORT_ATTEMPTS
                        || !self.port_taken_since(log_offset)
                    {
                        return Err(err);
                    }
                    attempt += 1;
                    self.port = pick_free_port()?;
                    self.write_port_file()?;
                    self.write_settings()?;
                }
            }
        }
        self.wait_ready(READY_TIMEOUT)
    }

    /// Stops Postgres cleanly (`pg_ctl stop -m fast`). A no-op if not running.
    pub fn stop(&mut self) -> Result<(), Error> {
        self.pg_ctl_stop("fast")
    }

    /// Stops Postgres like a crash would (`pg_ctl stop -m immediate`): no
    /// checkpoint, so crash recovery runs at the next start.
    pub fn crash(&mut self) -> Result<(), Error> {
        self.pg_ctl_stop("immediate")
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), Error> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = self.pg_ctl("stop");
        cmd.args(["-m", mode]);
        self.run_pg(cmd, true).map(drop)
    }

    /// SIGKILLs the postmaster, then waits until all its children have
    /// exited and the port is free, so [`Cluster::start`] works right after.
    /// Children that do not exit on their own within 10 s are SIGKILLed too.
    /// A no-op if not running.
    pub fn kill(&mut self) -> Result<(), Error> {
        let Some(pid) = self.running_postmaster() else {
            return Ok(());
        };
        signal_kill(pid)?;
        self.wait_for_postgres_exit(Duration::from_secs(10), true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "port {} is still in use 10 s after killing the postmaster (pid {pid})",
                    self.port
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether a postmaster for this data directory is running.
    pub fn is_running(&self) -> bool {
        self.running_postmaster().is_some()
    }

    /// Waits until the server accepts connections on its unix socket
    /// (`pg_isready`), failing early if the postmaster is gone.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let started = Instant::now();
        loop {
            let mut cmd = self.client_command("pg_isready");
            cmd.arg("-q")
                .arg("-h")
                .arg(&self.socket_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-U", SUPERUSER, "-d", "postgres", "-t", "2"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let ready = cmd
                .status()
                .map_err(|source| Error::Spawn {
                    command: describe(&cmd),
                    source,
                })?
                .success();
            if ready {
                return Ok(());
            }
            let reason = if !self.is_running() {
                "the postmaster is not running"
            } else if started.elapsed() >= timeout {
                "timed out waiting for connections to be accepted"
            } else {
                thread::sleep(Duration::from_millis(100));
                continue;
            };
            return Err(Error::NotReady {
                pgdata: self.pgdata.clone(),
                waited: started.elapsed(),
                reason: reason.to_owned(),
                log_tail: tail_file(&self.log_file, TAIL_LINES),
            });
        }
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
        let mut cmd = self.client_command("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-d",
        ])
        .arg(conninfo);
        let out = run_with_stdin(cmd, sql.as_bytes())?;
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

    /// Inserts a `pg_hba.conf` line before the existing ones (so it wins),
    /// e.g. `host all md5_user 127.0.0.1/32 md5`, and reloads. A line that
    /// Postgres rejects is removed again and reported as an error (a
    /// `hostssl` rule added before [`enable_tls`](Self::enable_tls) is fine).
    pub fn add_hba_rule(&self, line: &str) -> Result<(), Error> {
        if line.contains(['\n', '\r']) {
            return Err(Error::Setup(format!(
                "pg_hba.conf rule must be a single line: {line:?}"
            )));
        }
        let hba = self.pgdata.join("pg_hba.conf");
        let old = fs::read_to_string(&hba).map_err(io_err("reading", &hba))?;
        fs::write(&hba, format!("{line}\n{old}")).map_err(io_err("writing", &hba))?;
        let problems = self.psql(
            "postgres",
            // "hostssl record cannot match because SSL is disabled" and the
            // like are warnings: the line still loads (e.g. before enable_tls).
            "SELECT line_number || ': ' || error FROM pg_hba_file_rules \
             WHERE error IS NOT NULL AND error NOT LIKE '%record cannot match because%'",
        );
        match problems {
            Ok(p) if p.trim().is_empty() => self.reload(),
            Ok(p) => {
                fs::write(&hba, old).map_err(io_err("restoring", &hba))?;
                Err(Error::Setup(format!(
                    "pg_hba.conf rule {line:?} rejected by Postgres: {}",
                    p.trim()
                )))
            }
            Err(e) => {
                fs::write(&hba, old).map_err(io_err("restoring", &hba))?;
                Err(e)
            }
        }
    }

    /// Reloads the configuration (`pg_reload_conf()`) and waits until new
    /// connections see it, so e.g. a new `pg_hba.conf` rule applies to the
    /// very next connection.
    pub fn reload(&self) -> Result<(), Error> {
        const LOAD_TIME: &str = "SELECT pg_conf_load_time()";
        let before = self.psql("postgres", LOAD_TIME)?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.psql("postgres", LOAD_TIME)? == before {
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    pgdata: self.pgdata.clone(),
                    waited: Duration::from_secs(10),
                    reason: "configuration reload did not take effect".to_owned(),
                    log_tail: tail_file(&self.log_file, TAIL_LINES),
                });
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Turns on TLS (`ALTER SYSTEM SET ssl = on`, reload) with certificates
    /// generated by the `openssl` CLI: a throwaway CA, and a server
    /// certificate for `127.0.0.1`/`localhost` signed by it in
    /// `pgdata/server.crt` and `pgdata/server.key` (owned by the server
    /// user, 0600). Returns the path of the CA certificate (`root/ca.crt`)
    /// for clients to trust (it also works with `sslmode=verify-full`).
    /// Checks a `sslmode=verify-full` connection before returning.
    pub fn enable_tls(&self) -> Result<PathBuf, Error> {
        let work = tempfile::Builder::new()
            .prefix("tls-")
            .tempdir_in(&self.root)
            .map_err(io_err("creating a temporary directory in", &self.root))?;
        let dir = work.path();
        let cnf = dir.join("openssl.cnf");
        fs::write(&cnf, OPENSSL_CNF).map_err(io_err("writing", &cnf))?;
        let openssl = |args: &[&str]| -> Result<(), Error> {
            let mut cmd = Command::new("openssl");
            cmd.args(args).current_dir(dir).stdin(Stdio::null());
            run(cmd, None).map(drop)
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &[
                    "req",
                    "-x509",
                    "-config",
                    "openssl.cnf",
                    "-extensions",
                    "v3_ca",
                ][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "3650",
                    "-subj",
                    "/CN=pgcluster test CA",
                ],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req", "-new", "-config", "openssl.cnf"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=localhost",
                ],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-CAserial",
            "ca.srl",
            "-days",
            "3650",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "v3_leaf",
            "-out",
            "server.crt",
        ])?;

        for name in ["server.crt", "server.key"] {
            let target = self.pgdata.join(name);
            copy_file(&dir.join(name), &target)?;
            set_mode(&target, 0o600)?;
            self.chown_to_postgres(&target)?;
        }
        let ca = self.root.join("ca.crt");
        copy_file(&dir.join("ca.crt"), &ca)?;
        set_mode(&ca, 0o644)?;
        drop(work);

        self.psql("postgres", "ALTER SYSTEM SET ssl = on")?;
        self.reload()?;

        let conninfo = format!(
            "host={HOST} port={} user={SUPERUSER} dbname=postgres sslmode=verify-full sslrootcert={}",
            self.port,
            conninfo_quote(&ca.to_string_lossy())
        );
        let mut cmd = self.client_command("psql");
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "-",
            "-d",
        ])
        .arg(conninfo)
        .env("PGPASSWORD", &self.password);
        let out = run_with_stdin(
            cmd,
            b"SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        )?;
        if String::from_utf8_lossy(&out.stdout).trim() != "t" {
            return Err(Error::Setup(format!(
                "TLS was enabled but a sslmode=verify-full connection is not encrypted{}",
                tail_file(&self.log_file, TAIL_LINES)
            )));
        }
        Ok(ca)
    }

    // ----- internals -------------------------------------------------------

    /// Runs initdb unless `pgdata` already holds a cluster; returns the
    /// superuser password.
    fn init_if_needed(&self) -> Result<String, Error> {
        let pw_file = self.root.join("postgres.password");
        if self.pgdata.join("PG_VERSION").is_file() {
            self.check_version()?;
            let password = fs::read_to_string(&pw_file)
                .map_err(io_err("reading the superuser password from", &pw_file))?
                .trim()
                .to_owned();
            if password.is_empty() {
                return Err(Error::Setup(format!("{} is empty", pw_file.display())));
            }
            self.ensure_include()?;
            return Ok(password);
        }
        if let Ok(mut entries) = fs::read_dir(&self.pgdata) {
            if entries.next().is_some() {
                return Err(Error::Setup(format!(
                    "{} exists but is not a PostgreSQL data directory (no PG_VERSION); remove it or use another root",
                    self.pgdata.display()
                )));
            }
        }

        let password = generate_password()?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&pw_file)
            .map_err(io_err("creating", &pw_file))?;
        writeln!(file, "{password}").map_err(io_err("writing", &pw_file))?;
        drop(file);
        set_mode(&pw_file, 0o600)?;
        self.chown_to_postgres(&pw_file)?;

        let mut pwfile_arg = OsString::from("--pwfile=");
        pwfile_arg.push(&pw_file);
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D")
            .arg(&self.pgdata)
            .args([
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(pwfile_arg);
        if self.temp_dir.is_some() {
            // Throwaway cluster: skip the final fsync of initdb.
            cmd.arg("--no-sync");
        }
        self.run_pg(cmd, false)?;
        self.ensure_include()?;
        Ok(password)
    }

    /// Fails clearly if the data directory was made by another major version.
    fn check_version(&self) -> Result<(), Error> {
        let path = self.pgdata.join("PG_VERSION");
        let data_version = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        let data_version = data_version.trim();
        let mut cmd = Command::new(self.bindir.join("postgres"));
        cmd.arg("--version");
        let out = run(cmd, None)?;
        // "postgres (PostgreSQL) 15.8 (Debian 15.8-1)"
        let text = String::from_utf8_lossy(&out.stdout);
        let bin_major = text
            .split(") ")
            .nth(1)
            .and_then(|v| v.split(['.', ' ']).next())
            .unwrap_or_default()
            .trim()
            .to_owned();
        if !bin_major.is_empty() && bin_major != data_version {
            return Err(Error::Setup(format!(
                "{} was created by PostgreSQL {data_version}, but the binaries in {} are PostgreSQL {bin_major}",
                self.pgdata.display(),
                self.bindir.display()
            )));
        }
        Ok(())
    }

    /// Makes `postgresql.conf` include our settings file (once).
    fn ensure_include(&self) -> Result<(), Error> {
        let conf = self.pgdata.join("postgresql.conf");
        let text = fs::read_to_string(&conf).map_err(io_err("reading", &conf))?;
        if text.lines().any(|l| l.trim() == INCLUDE_LINE) {
            return Ok(());
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err("opening", &conf))?;
        write!(
            file,
            "\n# Added by pgcluster: its settings, rewritten on every open (ALTER SYSTEM still wins).\n{INCLUDE_LINE}\n"
        )
        .map_err(io_err("writing", &conf))
    }

    /// Writes `pgdata/pgcluster.conf`.
    fn write_settings(&self) -> Result<(), Error> {
        let mut text = String::from(
            "# Managed by pgcluster: rewritten every time the cluster is opened.\n\
             # Use ALTER SYSTEM (postgresql.auto.conf) for lasting changes.\n",
        );
        let socket_dir = self.socket_dir.to_string_lossy();
        let port = self.port.to_string();
        let ours = [
            ("listen_addresses", HOST),
            ("port", port.as_str()),
            ("unix_socket_directories", socket_dir.as_ref()),
            ("wal_level", "logical"),
            ("max_replication_slots", "20"),
            ("max_wal_senders", "20"),
        ];
        let extra = self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (name, value) in ours.into_iter().chain(extra) {
            let _ = writeln!(text, "{name} = {}", quote_setting(value));
        }
        let path = self.pgdata.join(SETTINGS_FILE);
        fs::write(&path, text).map_err(io_err("writing", &path))?;
        self.chown_to_postgres(&path)
    }

    fn remembered_port(&self) -> Option<u16> {
        fs::read_to_string(self.root.join("port"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_port_file(&self) -> Result<(), Error> {
        let path = self.root.join("port");
        fs::write(&path, format!("{}\n", self.port)).map_err(io_err("writing", &path))
    }

    /// Whether postgres.log, from `offset` on, says the port was taken.
    fn port_taken_since(&self, offset: u64) -> bool {
        let Ok(mut file) = fs::File::open(&self.log_file) else {
            return false;
        };
        let mut text = String::new();
        let _ = file.seek(SeekFrom::Start(offset));
        let _ = file.take(1 << 20).read_to_string(&mut text);
        text.contains("Address already in use")
    }

    /// The pid of the live postmaster for our data directory, if any.
    fn running_postmaster(&self) -> Option<u32> {
        let pid = read_pid_file(&self.pgdata)?.pid;
        if !procfs::is_alive(pid) {
            return None;
        }
        let ours = match procfs::cwd(pid) {
            // The postmaster chdirs into its data directory.
            Some(cwd) => fs::canonicalize(&self.pgdata).is_ok_and(|d| d == cwd),
            // Not allowed to look (another user's process): trust the pid file.
            None => procfs::is_postgres(pid),
        };
        ours.then_some(pid)
    }

    /// Called before starting when no postmaster is running. Makes sure no
    /// orphaned backend of a killed postmaster still uses the data directory,
    /// then removes lock files Postgres would wrongly believe live: a
    /// `postmaster.pid` whose pid is a zombie or was reused by an unrelated
    /// process, and the lock files in our private socket directory. (A pid
    /// file naming a dead pid is left for Postgres, which handles it and
    /// cleans up the old shared memory.)
    fn clear_stale_locks(&self) -> Result<(), Error> {
        let Some(info) = read_pid_file(&self.pgdata) else {
            return Ok(());
        };
        self.wait_for_postgres_exit(Duration::from_secs(30), false)?;
        if procfs::exists(info.pid) {
            let pid_file = self.pgdata.join("postmaster.pid");
            match fs::remove_file(&pid_file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("removing stale", &pid_file)(e)),
            }
        }
        if let Ok(entries) = fs::read_dir(&self.socket_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(".s.PGSQL.") && name.ends_with(".lock") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(())
    }

    /// Waits until no Postgres process uses our data directory any more. With
    /// `escalate`, processes still there after `grace` get SIGKILL.
    fn wait_for_postgres_exit(&self, grace: Duration, escalate: bool) -> Result<(), Error> {
        let Ok(pgdata) = fs::canonicalize(&self.pgdata) else {
            return Ok(());
        };
        let start = Instant::now();
        let mut escalated = false;
        loop {
            let left = procfs::postgres_processes_in(&pgdata);
            if left.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= grace {
                if escalate && !escalated {
                    for pid in &left {
                        let _ = signal_kill(*pid);
                    }
                    escalated = true;
                } else if !escalate || start.elapsed() >= grace * 2 {
                    return Err(Error::Setup(format!(
                        "PostgreSQL processes {left:?} are still using {} after {:?}; \
                         stop them before starting this cluster",
                        pgdata.display(),
                        start.elapsed()
                    )));
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// As root: makes sure the `postgres` user can reach and write `root`.
    fn check_postgres_can_write(&self) -> Result<(), Error> {
        let mut cmd = Command::new("runuser");
        cmd.args([
            "-u",
            OS_USER,
            "--",
            "/bin/sh",
            "-c",
            r#"test -x "$1" && test -w "$1""#,
            "sh",
        ])
        .arg(&self.root)
        .current_dir("/")
        .stdin(Stdio::null());
        sanitize_env(&mut cmd);
        let ok = cmd
            .output()
            .map_err(|source| Error::Spawn {
                command: describe(&cmd),
                source,
            })?
            .status
            .success();
        if ok {
            Ok(())
        } else {
            Err(Error::Setup(format!(
                "we run as root, so PostgreSQL runs as user `{OS_USER}`, which cannot access {}: \
                 every parent directory must be traversable by `{OS_USER}` (e.g. `chmod o+x` on them), \
                 or choose a root elsewhere (e.g. under /tmp or /var/lib)",
                self.root.display()
            )))
        }
    }

    fn chown_to_postgres(&self, path: &Path) -> Result<(), Error> {
        match self.run_as {
            Some(user) => chown(path, user),
            None => Ok(()),
        }
    }

    /// A command for a Postgres binary that may write our files: run as the
    /// `postgres` user when we are root, in `root`, with a clean environment.
    fn pg_command(&self, tool: &str) -> Command {
        let exe = self.bindir.join(tool);
        let mut cmd = if self.run_as.is_some() {
            let mut c = Command::new("runuser");
            c.args(["-u", OS_USER, "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        sanitize_env(&mut cmd);
        cmd.env("LC_ALL", "C")
            .current_dir(&self.root)
            .stdin(Stdio::null());
        cmd
    }

    /// `pg_ctl <action> -D pgdata -w -t ...`.
    fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg(action).arg("-D").arg(&self.pgdata);
        if action != "reload" {
            cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS]);
        }
        cmd
    }

    /// A client tool (psql, pg_isready) run as ourselves, with a clean environment.
    fn client_command(&self, tool: &str) -> Command {
        let exe = self.bindir.join(tool);
        let mut cmd = Command::new(if exe.is_file() {
            exe.into_os_string()
        } else {
            tool.into()
        });
        sanitize_env(&mut cmd);
        cmd.current_dir(&self.root).stdin(Stdio::null());
        cmd
    }

    fn run_pg(&self, cmd: Command, with_log: bool) -> Result<Output, Error> {
        run(cmd, with_log.then_some(self.log_file.as_path()))
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

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = pgcluster

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[v3_leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// What we need from `postmaster.pid`.
struct PidFile {
    pid: u32,
    port: Option<u16>,
}

fn read_pid_file(pgdata: &Path) -> Option<PidFile> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    // Line 4 is the port.
    let port = lines.nth(2).and_then(|l| l.trim().parse().ok());
    Some(PidFile { pid, port })
}

/// Runs `cmd`, turning a failure into an [`Error`] quoting stderr and,
/// if given, the log's tail.
fn run(mut cmd: Command, log: Option<&Path>) -> Result<Output, Error> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: describe(&cmd),
        source,
    })?;
    check(&cmd, out, log)
}

fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Result<Output, Error> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |cmd: &Command, source| Error::Spawn {
        command: describe(cmd),
        source,
    };
    let mut child = cmd.spawn().map_err(|e| spawn_err(&cmd, e))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let out = thread::scope(|s| {
        // Feed stdin from another thread so a large output cannot deadlock us.
        s.spawn(move || {
            let _ = stdin.write_all(input);
        });
        child.wait_with_output()
    })
    .map_err(|e| spawn_err(&cmd, e))?;
    check(&cmd, out, None)
}

fn check(cmd: &Command, out: Output, log: Option<&Path>) -> Result<Output, Error> {
    if out.status.success() {
        return Ok(out);
    }
    Err(Error::CommandFailed {
        command: describe(cmd),
        status: out.status.to_string(),
        stderr: tail_lines(&String::from_utf8_lossy(&out.stderr), TAIL_LINES),
        log_tail: log.map(|l| tail_file(l, TAIL_LINES)).unwrap_or_default(),
    })
}

/// The command line, shell-quoted where needed (environment not shown).
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.into_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Removes every `PG*` variable so the caller's environment (PGHOST,
/// PGPORT, PGDATA, PGPASSWORD, ...) cannot leak into our clusters.
fn sanitize_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of a (possibly large) file; empty if unreadable.
fn tail_file(path: &Path, n: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    tail_lines(&String::from_utf8_lossy(&bytes), n)
}

/// The effective uid: `/proc/self` is owned by it.
fn effective_uid() -> Result<u32, Error> {
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let mut cmd = Command::new("id");
    cmd.arg("-u");
    let out = run(cmd, None)?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|_| Error::Setup("could not determine the effective uid (`id -u`)".to_owned()))
}

fn postgres_os_user() -> Result<OsUser, Error> {
    static USER: OnceLock<Result<OsUser, String>> = OnceLock::new();
    let lookup = || -> Result<OsUser, String> {
        let id = |flag: &str| -> Result<u32, String> {
            let out = Command::new("id")
                .args([flag, OS_USER])
                .output()
                .map_err(|e| format!("could not run `id {flag} {OS_USER}`: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "we run as root, so PostgreSQL must run as user `{OS_USER}`, but `id {flag} {OS_USER}` failed: {}\
                     (create the user, e.g. by installing the postgresql package, or run as non-root)",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| format!("unexpected output of `id {flag} {OS_USER}`"))
        };
        Ok(OsUser {
            uid: id("-u")?,
            gid: id("-g")?,
        })
    };
    USER.get_or_init(lookup).clone().map_err(Error::Setup)
}

fn chown(path: &Path, user: OsUser) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(io_err("chown postgres", path))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

fn copy_file(from: &Path, to: &Path) -> Result<(), Error> {
    fs::copy(from, to)
        .map(drop)
        .map_err(io_err("copying to", to))
}

fn signal_kill(pid: u32) -> Result<(), Error> {
    let mut cmd = Command::new("kill");
    cmd.args(["-9", &pid.to_string()]).stdin(Stdio::null());
    match run(cmd, None) {
        // Already gone: fine.
        Err(_) if !procfs::is_alive(pid) => Ok(()),
        other => other.map(drop),
    }
}

/// A port on 127.0.0.1 that is free now and was not handed out before by
/// this process.
fn pick_free_port() -> Result<u16, Error> {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|source| Error::Io {
                context: "binding 127.0.0.1:0 to find a free port".to_owned(),
                source,
            })?
            .port();
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Setup(
        "could not find a free TCP port on 127.0.0.1".to_owned(),
    ))
}

/// 32 random alphanumeric characters from /dev/urandom.
fn generate_password() -> Result<String, Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let urandom = Path::new("/dev/urandom");
    let mut file = fs::File::open(urandom).map_err(io_err("opening", urandom))?;
    let mut password = String::with_capacity(32);
    let mut buf = [0u8; 64];
    while password.len() < 32 {
        file.read_exact(&mut buf)
            .map_err(io_err("reading", urandom))?;
        // Rejection sampling: 248 = 4 * 62, so no modulo bias.
        for b in buf.iter().filter(|&&b| b < 248) {
            if password.len() < 32 {
                password.push(char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]));
            }
        }
    }
    Ok(password)
}

fn validate_setting(name: &str, value: &str) -> Result<(), Error> {
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !valid_name {
        return Err(Error::Setup(format!("invalid setting name {name:?}")));
    }
    if value.contains(['\n', '\r']) {
        return Err(Error::Setup(format!(
            "setting {name} has a multi-line value"
        )));
    }
    Ok(())
}

/// Quotes a value for postgresql.conf (already-quoted values are kept).
fn quote_setting(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
    }
}

/// Quotes a value for a libpq connection string.
fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', r"\'"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_setting("logical"), "'logical'");
        assert_eq!(quote_setting("it's"), "'it''s'");
        assert_eq!(quote_setting("'already'"), "'already'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("o'k"), "'o''k'");
        assert_eq!(conninfo_quote(r"a'b\c"), r"'a\'b\\c'");
        assert_eq!(percent_encode("aZ9-._~ @/:%"), "aZ9-._~%20%40%2F%3A%25");
    }

    #[test]
    fn passwords_are_random_alphanumeric() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }

    #[test]
    fn setting_names_are_validated() {
        assert!(validate_setting("wal_level", "logical").is_ok());
        assert!(validate_setting("auto_explain.log_min_duration", "0").is_ok());
        assert!(validate_setting("x = 1\nfsync", "off").is_err());
        assert!(validate_setting("work_mem", "1\n2").is_err());
    }

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
