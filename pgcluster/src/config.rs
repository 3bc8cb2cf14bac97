//! Configuration files: our settings file included from `postgresql.conf`,
//! `pg_hba.conf` rules, and reloading.

use crate::command::{tail_file, TAIL_LINES};
use crate::error::io_err;
use crate::quote::quote_setting;
use crate::{Cluster, Error, HOST};
use std::fmt::Write as _;
use std::fs;
use std::io::Write;
use std::thread;
use std::time::{Duration, Instant};

/// Name of our settings file inside the data directory.
const SETTINGS_FILE: &str = "pgcluster.conf";
const INCLUDE_LINE: &str = "include 'pgcluster.conf'";

impl Cluster {
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

    /// Makes `postgresql.conf` include our settings file (once).
    pub(crate) fn ensure_include(&self) -> Result<(), Error> {
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
    pub(crate) fn write_settings(&self) -> Result<(), Error> {
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
}

pub(crate) fn validate_setting(name: &str, value: &str) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_names_are_validated() {
        assert!(validate_setting("wal_level", "logical").is_ok());
        assert!(validate_setting("auto_explain.log_min_duration", "0").is_ok());
        assert!(validate_setting("x = 1\nfsync", "off").is_err());
        assert!(validate_setting("work_mem", "1\n2").is_err());
    }
}
