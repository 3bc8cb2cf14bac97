//! The database: the embedded private cluster or the one `DATABASE_URL` names, a connection
//! pool, and the checks that it can do logical replication.

use anyhow::{bail, Context};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use pgcluster::{Cluster, ClusterConfig};
use tokio_postgres::NoTls;

use crate::config::Settings;

/// Name of the database the embedded cluster serves.
pub const EMBEDDED_DB: &str = "triptrip";

/// The database the server runs on. Holding the embedded cluster keeps it owned by the server,
/// which stops it on shutdown.
pub struct Database {
    pub url: String,
    pub embedded: Option<Cluster>,
}

impl Database {
    /// Uses `DATABASE_URL` if set, else opens (creating on first use) the private cluster in the
    /// data directory.
    pub async fn open(settings: &Settings) -> anyhow::Result<Database> {
        if let Some(url) = &settings.database_url {
            return Ok(Database {
                url: url.clone(),
                embedded: None,
            });
        }
        let root = settings.data_dir.join("postgres");
        let cluster = tokio::task::spawn_blocking(move || Cluster::open(ClusterConfig::new(root)))
            .await?
            .context("starting the embedded PostgreSQL")?;
        let admin = connect(&cluster.url("postgres")).await?;
        let exists = admin
            .query_opt(
                "SELECT 1 FROM pg_database WHERE datname = $1",
                &[&EMBEDDED_DB],
            )
            .await?
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("CREATE DATABASE {EMBEDDED_DB}"))
                .await?;
        }
        Ok(Database {
            url: cluster.url(EMBEDDED_DB),
            embedded: Some(cluster),
        })
    }

    /// Stops the embedded cluster, if any: the server owns it, even one it adopted from a
    /// process that died.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        if let Some(mut cluster) = self.embedded {
            tokio::task::spawn_blocking(move || cluster.stop()).await??;
        }
        Ok(())
    }

    /// For one-shot commands: stops the embedded cluster only if this process started it, so
    /// `migrate` or `status` next to a running server leaves the server's cluster alone.
    pub async fn release(self) -> anyhow::Result<()> {
        match &self.embedded {
            Some(cluster) if cluster.adopted() => Ok(()),
            _ => self.shutdown().await,
        }
    }
}

/// One unpooled connection, driven on its own task.
pub async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

pub fn pool(url: &str, size: usize) -> anyhow::Result<Pool> {
    let config: tokio_postgres::Config = url.parse().context("parsing the database URL")?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Ok(Pool::builder(manager).max_size(size).build()?)
}

/// Fails with a message naming the setting if the server cannot do logical decoding.
pub async fn check_logical_replication(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('server_version_num')::int",
            &[],
        )
        .await?;
    let wal_level: String = row.get(0);
    let version: i32 = row.get(1);
    if wal_level != "logical" {
        bail!(
            "PostgreSQL runs with wal_level={wal_level}; TripTrip Realtime needs wal_level=logical \
             (set `wal_level = logical` in postgresql.conf or ALTER SYSTEM SET wal_level = logical, \
             then restart PostgreSQL)"
        );
    }
    if version < 150000 {
        bail!("PostgreSQL {version} is too old: TripTrip Realtime needs PostgreSQL 15 or later");
    }
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A human-readable account of the slot, for `triptrip-realtime status`.
pub async fn slot_report(client: &tokio_postgres::Client, slot: &str) -> anyhow::Result<String> {
    let row = client
        .query_opt(
            "SELECT active, active_pid, confirmed_flush_lsn::text, restart_lsn::text, wal_status, \
                    pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)), \
                    pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)), \
                    current_setting('max_slot_wal_keep_size') \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    let Some(row) = row else {
        return Ok(format!(
            "slot {slot}: does not exist (the server creates it when it starts)\n"
        ));
    };
    let active: bool = row.get(0);
    let pid: Option<i32> = row.get(1);
    let text = |i: usize| {
        row.get::<_, Option<String>>(i)
            .unwrap_or_else(|| "-".into())
    };
    Ok(format!(
        "slot {slot}: {}\n  confirmed_flush_lsn {}\n  restart_lsn         {}\n  wal_status          {}\n  \
         lag                 {}\n  retained WAL        {}\n  max_slot_wal_keep_size {}\n",
        match pid {
            Some(pid) if active => format!("active (walsender pid {pid})"),
            _ => "inactive".into(),
        },
        text(2),
        text(3),
        text(4),
        text(5),
        text(6),
        text(7),
    ))
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
    }
}
