//! Who owns the cluster's files: the effective uid, the `postgres` OS user
//! that runs Postgres when we are root, ownership and file modes.

use crate::command::{describe, run, sanitize_env};
use crate::error::io_err;
use crate::{Cluster, Error};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The OS user Postgres runs as when we are root.
pub(crate) const OS_USER: &str = "postgres";

/// The OS identity Postgres runs as when we are root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OsUser {
    uid: u32,
    gid: u32,
}

/// The effective uid: `/proc/self` is owned by it.
pub(crate) fn effective_uid() -> Result<u32, Error> {
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

pub(crate) fn postgres_os_user() -> Result<OsUser, Error> {
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

pub(crate) fn chown(path: &Path, user: OsUser) -> Result<(), Error> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(io_err("chown postgres", path))
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), Error> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", path))
}

impl Cluster {
    /// As root: makes sure the `postgres` user can reach and write `root`.
    pub(crate) fn check_postgres_can_write(&self) -> Result<(), Error> {
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

    pub(crate) fn chown_to_postgres(&self, path: &Path) -> Result<(), Error> {
        match self.run_as {
            Some(user) => chown(path, user),
            None => Ok(()),
        }
    }
}
