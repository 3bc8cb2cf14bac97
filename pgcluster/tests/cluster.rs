//! Integration tests against the real PostgreSQL installation.

use pgcluster::{Cluster, ClusterConfig};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};
use std::thread;

/// Runs one statement with psql over TCP as `user`/`password`, with extra
/// conninfo (e.g. `sslmode=require`).
fn tcp_psql(cluster: &Cluster, user: &str, password: &str, extra: &str, sql: &str) -> Output {
    let mut cmd = Command::new(cluster.bindir().join("psql"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
        "-d",
    ])
    .arg(format!(
        "host={} port={} user={user} dbname=postgres {extra}",
        cluster.host(),
        cluster.port()
    ))
    .env("PGPASSWORD", password)
    .output()
    .expect("run psql")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn postmaster_pid(cluster: &Cluster) -> String {
    fs::read_to_string(cluster.pgdata().join("postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned()
}

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

/// A directory for persistent clusters that the `postgres` user can
/// traverse (tempdirs are 0700).
fn traversable_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Stops a persistent cluster even if the test panics.
struct StopOnDrop(Option<Cluster>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.crash();
        }
    }
}

#[test]
fn bindir_has_server_binaries() {
    let dir = pgcluster::find_bindir().unwrap();
    assert!(dir.join("initdb").is_file(), "{}", dir.display());
    assert!(dir.join("pg_ctl").is_file(), "{}", dir.display());
}

#[test]
fn temporary_cluster_is_logical_and_removed_on_drop() {
    let cluster = Cluster::temporary().unwrap();
    assert!(cluster.is_running());
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(
        cluster.psql("postgres", "SHOW wal_level").unwrap().trim(),
        "logical"
    );
    assert_eq!(
        cluster
            .psql("postgres", "SHOW max_replication_slots")
            .unwrap()
            .trim(),
        "20"
    );
    assert_eq!(
        cluster.url("app"),
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/app",
            cluster.password(),
            cluster.port()
        )
    );
    let pw_mode = fs::metadata(cluster.root().join("postgres.password"))
        .unwrap()
        .mode();
    assert_eq!(pw_mode & 0o777, 0o600);

    // The superuser password works over TCP (scram).
    let out = tcp_psql(
        &cluster,
        "postgres",
        cluster.password(),
        "",
        "SELECT current_user",
    );
    assert_eq!(stdout(&out), "postgres");

    let root = cluster.root().to_owned();
    let port = cluster.port();
    assert!(root.join("pgdata").is_dir());
    drop(cluster);
    assert!(!root.exists(), "{} still exists", root.display());
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("port is free after drop");
}

#[test]
fn temporary_with_settings() {
    let cluster =
        Cluster::temporary_with(&[("work_mem", "8MB"), ("cluster_name", "it's")]).unwrap();
    assert_eq!(
        cluster.psql("postgres", "SHOW work_mem").unwrap().trim(),
        "8MB"
    );
    assert_eq!(
        cluster
            .psql("postgres", "SHOW cluster_name")
            .unwrap()
            .trim(),
        "it's"
    );
}

#[test]
fn create_database_is_idempotent() {
    let cluster = Cluster::temporary().unwrap();
    let url = cluster.create_database("my app").unwrap();
    assert!(url.ends_with("/my%20app"), "{url}");
    assert_eq!(cluster.create_database("my app").unwrap(), url);
    cluster
        .psql("my app", "CREATE TABLE t (x int)")
        .expect("database exists");
}

#[test]
fn psql_errors_are_reported() {
    let cluster = Cluster::temporary().unwrap();
    let err = cluster
        .psql("postgres", "SELECT 1; SELEC oops; SELECT 2")
        .unwrap_err()
        .to_string();
    assert!(err.contains("syntax error"), "{err}");
    assert!(err.contains("psql"), "{err}");
}

#[test]
fn open_keeps_data_and_port_and_adopts_running_postmaster() {
    let dir = traversable_tempdir();
    let root = dir.path().join("pg");

    let mut guard = StopOnDrop(Some(Cluster::open(ClusterConfig::new(&root)).unwrap()));
    let cluster = guard.0.as_mut().unwrap();
    let port = cluster.port();
    let password = cluster.password().to_owned();
    cluster
        .psql(
            "postgres",
            "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42);",
        )
        .unwrap();
    assert_eq!(
        fs::read_to_string(root.join("port")).unwrap().trim(),
        port.to_string()
    );
    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    assert!(!cluster.pgdata().join("postmaster.pid").exists());
    guard.0 = None;

    // Reopen: same data, same port, same password.
    guard.0 = Some(Cluster::open(ClusterConfig::new(&root)).unwrap());
    let cluster = guard.0.as_mut().unwrap();
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.password(), password);
    assert_eq!(
        cluster
            .psql("postgres", "SELECT x FROM kept")
            .unwrap()
            .trim(),
        "42"
    );
    let pid = postmaster_pid(cluster);

    // Dropping a persistent cluster leaves Postgres running ...
    guard.0 = None;
    // ... and opening it again adopts that postmaster.
    guard.0 = Some(Cluster::open(ClusterConfig::new(&root)).unwrap());
    let cluster = guard.0.as_mut().unwrap();
    assert!(cluster.is_running());
    assert_eq!(postmaster_pid(cluster), pid);
    assert_eq!(cluster.port(), port);
    assert_eq!(
        cluster
            .psql("postgres", "SELECT x FROM kept")
            .unwrap()
            .trim(),
        "42"
    );

    // An explicit port different from the running one is refused.
    let other = if port == 65535 { port - 1 } else { port + 1 };
    let err = Cluster::open(ClusterConfig::new(&root).port(other)).unwrap_err();
    assert!(err.to_string().contains("already running"), "{err}");

    guard.0.as_mut().unwrap().stop().unwrap();
}

#[test]
fn open_after_kill_with_stale_pid_file() {
    let dir = traversable_tempdir();
    let root = dir.path().join("pg");
    let mut guard = StopOnDrop(Some(Cluster::open(ClusterConfig::new(&root)).unwrap()));
    let cluster = guard.0.as_mut().unwrap();
    cluster
        .psql("postgres", "CREATE TABLE t AS SELECT 7 AS x")
        .unwrap();
    cluster.kill().unwrap();
    assert!(!cluster.is_running());
    // The killed postmaster left its pid file behind.
    assert!(cluster.pgdata().join("postmaster.pid").exists());
    guard.0 = None;

    guard.0 = Some(Cluster::open(ClusterConfig::new(&root)).unwrap());
    let cluster = guard.0.as_mut().unwrap();
    assert_eq!(
        cluster.psql("postgres", "SELECT x FROM t").unwrap().trim(),
        "7"
    );
    cluster.stop().unwrap();
}

#[test]
fn crash_and_kill_then_start_recover_committed_data() {
    let mut cluster = Cluster::temporary().unwrap();
    cluster
        .psql(
            "postgres",
            "CREATE TABLE t (x int); INSERT INTO t VALUES (1);",
        )
        .unwrap();

    cluster.crash().unwrap();
    assert!(!cluster.is_running());
    cluster.start().unwrap();
    assert_eq!(
        cluster
            .psql("postgres", "SELECT sum(x) FROM t")
            .unwrap()
            .trim(),
        "1"
    );
    let log = fs::read_to_string(cluster.log_path()).unwrap();
    assert!(log.contains("automatic recovery in progress"), "{log}");

    cluster
        .psql("postgres", "INSERT INTO t VALUES (2)")
        .unwrap();
    cluster.kill().unwrap();
    assert!(!cluster.is_running());
    cluster.start().unwrap();
    assert_eq!(
        cluster
            .psql("postgres", "SELECT sum(x) FROM t")
            .unwrap()
            .trim(),
        "3"
    );

    // start() on a running cluster is a no-op.
    let pid = postmaster_pid(&cluster);
    cluster.start().unwrap();
    assert_eq!(postmaster_pid(&cluster), pid);

    // stop() twice is fine.
    cluster.stop().unwrap();
    cluster.stop().unwrap();
    cluster.kill().unwrap();
}

#[test]
fn parallel_temporary_clusters() {
    let handles: Vec<_> = (0..4)
        .map(|i| {
            thread::spawn(move || {
                let cluster = Cluster::temporary().unwrap();
                let got = cluster.psql("postgres", &format!("SELECT {i}")).unwrap();
                assert_eq!(got.trim(), i.to_string());
                (cluster.port(), cluster.root().to_owned())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut ports: Vec<u16> = results.iter().map(|r| r.0).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 4, "ports collided: {results:?}");
    for (_, root) in &results {
        assert!(!root.exists());
    }
}

#[test]
fn hba_rules_and_password_logins() {
    let cluster = Cluster::temporary().unwrap();
    cluster
        .psql(
            "postgres",
            "CREATE ROLE scram_user LOGIN PASSWORD 'right-pw';\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE md5_user LOGIN PASSWORD 'md5-pw';",
        )
        .unwrap();
    cluster
        .add_hba_rule("host all scram_user 127.0.0.1/32 scram-sha-256")
        .unwrap();
    cluster
        .add_hba_rule("host all md5_user 127.0.0.1/32 md5")
        .unwrap();
    let hba = fs::read_to_string(cluster.pgdata().join("pg_hba.conf")).unwrap();
    assert!(
        hba.starts_with("host all md5_user 127.0.0.1/32 md5\n"),
        "{hba}"
    );

    let ok = tcp_psql(
        &cluster,
        "scram_user",
        "right-pw",
        "",
        "SELECT current_user",
    );
    assert_eq!(stdout(&ok), "scram_user");

    let bad = tcp_psql(&cluster, "scram_user", "wrong-pw", "", "SELECT 1");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("password authentication failed"), "{err}");

    let md5 = tcp_psql(&cluster, "md5_user", "md5-pw", "", "SELECT current_user");
    assert_eq!(stdout(&md5), "md5_user");

    // A rule Postgres cannot parse is rejected and rolled back.
    let err = cluster
        .add_hba_rule("host all nobody 127.0.0.1/32 no-such-method")
        .unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");
    let after = fs::read_to_string(cluster.pgdata().join("pg_hba.conf")).unwrap();
    assert_eq!(after, hba);
}

#[test]
fn enable_tls() {
    let cluster = Cluster::temporary().unwrap();
    let sql = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let pw = cluster.password().to_owned();

    // hostssl rules may be added before TLS is enabled (Postgres only warns).
    cluster
        .psql("postgres", "CREATE ROLE tls_user LOGIN PASSWORD 'tls-pw'")
        .unwrap();
    cluster
        .add_hba_rule("hostnossl all tls_user 127.0.0.1/32 reject")
        .unwrap();
    cluster
        .add_hba_rule("hostssl all tls_user 127.0.0.1/32 scram-sha-256")
        .unwrap();

    let ca = cluster.enable_tls().unwrap();
    assert!(ca.is_file());
    let key = fs::metadata(cluster.pgdata().join("server.key")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o600);
    let crt = fs::metadata(cluster.pgdata().join("server.crt")).unwrap();
    assert_eq!(crt.uid(), key.uid());
    let server_uid = fs::metadata(cluster.pgdata().join("PG_VERSION"))
        .unwrap()
        .uid();
    assert_eq!(key.uid(), server_uid);

    let out = tcp_psql(&cluster, "postgres", &pw, "sslmode=require", sql);
    assert_eq!(stdout(&out), "t");
    let verified = format!("sslmode=verify-full sslrootcert={}", ca.display());
    let out = tcp_psql(&cluster, "postgres", &pw, &verified, sql);
    assert_eq!(stdout(&out), "t");
    let plain = tcp_psql(&cluster, "postgres", &pw, "sslmode=disable", sql);
    assert_eq!(stdout(&plain), "f");

    let tls_user = tcp_psql(&cluster, "tls_user", "tls-pw", "sslmode=require", sql);
    assert_eq!(stdout(&tls_user), "t");
    // SCRAM-SHA-256-PLUS (tls-server-end-point) works with the certificate.
    let bound = format!("{verified} channel_binding=require");
    let out = tcp_psql(&cluster, "tls_user", "tls-pw", &bound, sql);
    assert_eq!(stdout(&out), "t");
    let refused = tcp_psql(&cluster, "tls_user", "tls-pw", "sslmode=disable", sql);
    assert!(!refused.status.success());
}

#[test]
fn unreachable_root_is_a_clear_error() {
    if !is_root() {
        return; // only relevant when Postgres runs as another user
    }
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    match Cluster::open(ClusterConfig::new(dir.path().join("pg"))) {
        Ok(mut cluster) => {
            let _ = cluster.crash();
            panic!("opened a cluster under a directory postgres cannot traverse");
        }
        Err(err) => assert!(err.to_string().contains("traversable"), "{err}"),
    }
}

#[test]
fn invalid_settings_are_rejected() {
    let err = Cluster::temporary_with(&[("bad name", "1")]).unwrap_err();
    assert!(err.to_string().contains("invalid setting name"), "{err}");
}

#[test]
fn failed_start_quotes_the_log() {
    let err = Cluster::temporary_with(&[("shared_buffers", "not-a-size")]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("pg_ctl"), "{msg}");
    assert!(msg.contains("postgres.log"), "{msg}");
    assert!(msg.contains("shared_buffers"), "{msg}");
}

#[test]
fn data_dir_is_owned_by_the_server_user() {
    let cluster = Cluster::temporary().unwrap();
    let owner = fs::metadata(cluster.pgdata()).unwrap().uid();
    if is_root() {
        assert_ne!(owner, 0);
        assert_eq!(
            fs::metadata(Path::new(cluster.root())).unwrap().uid(),
            owner
        );
    } else {
        assert_eq!(owner, fs::metadata("/proc/self").unwrap().uid());
    }
}

#[test]
fn taken_remembered_port_moves_but_explicit_port_fails_clearly() {
    let blocker = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let taken = blocker.local_addr().unwrap().port();

    // A remembered port that is now taken: the cluster moves to a free one.
    let dir = traversable_tempdir();
    let root = dir.path().join("pg");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("port"), format!("{taken}\n")).unwrap();
    let mut guard = StopOnDrop(Some(Cluster::open(ClusterConfig::new(&root)).unwrap()));
    let cluster = guard.0.as_mut().unwrap();
    assert_ne!(cluster.port(), taken);
    assert_eq!(
        fs::read_to_string(root.join("port")).unwrap().trim(),
        cluster.port().to_string()
    );
    assert_eq!(cluster.psql("postgres", "SELECT 1").unwrap().trim(), "1");
    cluster.stop().unwrap();
    guard.0 = None;

    // An explicit port that is taken: a diagnosable error.
    let err = Cluster::open(ClusterConfig::new(&root).port(taken)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("Address already in use"), "{msg}");
    assert!(msg.contains("pg_ctl"), "{msg}");
    drop(blocker);
}
