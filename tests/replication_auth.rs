//! The authentication matrix against a real server: trust, md5, SCRAM-SHA-256, TLS.

mod common;

use pgcluster::Cluster;
use replication::{ConnectConfig, Connection, Error, SslMode};

fn config(cluster: &Cluster, user: &str, password: Option<&str>, ssl: SslMode) -> ConnectConfig {
    ConnectConfig {
        host: "127.0.0.1".into(),
        port: cluster.port(),
        user: user.into(),
        password: password.map(Into::into),
        ssl_mode: ssl,
        ..ConnectConfig::default()
    }
}

async fn identify(config: &ConnectConfig) -> Result<Connection, Error> {
    let mut conn = Connection::connect(config).await?;
    let system = conn.identify_system().await?;
    assert_eq!(system.dbname.as_deref(), Some("postgres"));
    assert!(system.timeline >= 1);
    Ok(conn)
}

fn cluster_with_users() -> Cluster {
    let cluster = Cluster::temporary().expect("cluster");
    cluster
        .psql(
            "postgres",
            "SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 secret';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scräm secret';
             CREATE ROLE trust_user LOGIN REPLICATION;
             CREATE ROLE tls_user LOGIN REPLICATION PASSWORD 'tls secret';",
        )
        .unwrap();
    for rule in [
        "host all trust_user 127.0.0.1/32 trust",
        "host all md5_user 127.0.0.1/32 md5",
        "host all scram_user 127.0.0.1/32 scram-sha-256",
        "hostssl all tls_user 127.0.0.1/32 scram-sha-256",
        "hostnossl all tls_user 127.0.0.1/32 reject",
    ] {
        cluster.add_hba_rule(rule).unwrap();
    }
    cluster
}

#[tokio::test]
async fn trust_md5_and_scram_users_connect_and_wrong_passwords_fail() {
    let cluster = tokio::task::spawn_blocking(cluster_with_users)
        .await
        .unwrap();
    let plain = SslMode::Disable;
    identify(&config(&cluster, "trust_user", None, plain))
        .await
        .unwrap();
    identify(&config(&cluster, "md5_user", Some("md5 secret"), plain))
        .await
        .unwrap();
    identify(&config(&cluster, "scram_user", Some("scräm secret"), plain))
        .await
        .unwrap();
    for (user, password) in [
        ("md5_user", Some("wrong")),
        ("scram_user", Some("wrong")),
        ("scram_user", None),
        ("nobody", Some("x")),
    ] {
        let err = identify(&config(&cluster, user, password, plain))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::Auth(_)), "{user}: {err}");
        assert!(!err.is_transient(), "{user}: bad credentials are definite");
    }
}

#[tokio::test]
async fn tls_require_encrypts_and_verify_full_checks_the_certificate() {
    let cluster = tokio::task::spawn_blocking(cluster_with_users)
        .await
        .unwrap();
    let cert = cluster.enable_tls().unwrap();

    let conn = identify(&config(
        &cluster,
        "tls_user",
        Some("tls secret"),
        SslMode::Require,
    ))
    .await
    .unwrap();
    assert!(conn.is_tls());
    let conn = identify(&config(
        &cluster,
        "scram_user",
        Some("scräm secret"),
        SslMode::Prefer,
    ))
    .await
    .unwrap();
    assert!(conn.is_tls(), "prefer uses TLS when offered");

    let err = identify(&config(
        &cluster,
        "tls_user",
        Some("tls secret"),
        SslMode::Disable,
    ))
    .await
    .err()
    .unwrap();
    assert!(
        matches!(err, Error::Auth(ref m) if m.contains("28000")),
        "{err}"
    );

    let mut verified = config(
        &cluster,
        "tls_user",
        Some("tls secret"),
        SslMode::VerifyFull,
    );
    verified.ssl_root_cert = Some(cert);
    assert!(identify(&verified).await.unwrap().is_tls());

    let mut untrusted = verified.clone();
    untrusted.ssl_root_cert = None;
    let err = identify(&untrusted).await.err().unwrap();
    assert!(matches!(err, Error::Tls(_)), "{err}");
}
