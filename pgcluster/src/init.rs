//! Creating the cluster on first use (`initdb`, superuser password) and
//! checking an existing one.

use crate::command::run;
use crate::error::io_err;
use crate::ownership::set_mode;
use crate::{Cluster, Error, SUPERUSER};
use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

impl Cluster {
    /// Runs initdb unless `pgdata` already holds a cluster; returns the
    /// superuser password.
    pub(crate) fn init_if_needed(&self) -> Result<String, Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_random_alphanumeric() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
