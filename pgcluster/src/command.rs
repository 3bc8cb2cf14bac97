//! Running external commands: Postgres binaries (as the right user, with a
//! clean environment) and other tools, with failures quoting stderr and the
//! tail of `postgres.log`.

use crate::ownership::OS_USER;
use crate::{Cluster, Error};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;

/// `pg_ctl -t`: covers crash recovery of a large cluster.
const PG_CTL_TIMEOUT_SECS: &str = "120";
/// Lines of stderr / postgres.log quoted in errors.
pub(crate) const TAIL_LINES: usize = 30;

impl Cluster {
    /// A command for a Postgres binary that may write our files: run as the
    /// `postgres` user when we are root, in `root`, with a clean environment.
    pub(crate) fn pg_command(&self, tool: &str) -> Command {
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
    pub(crate) fn pg_ctl(&self, action: &str) -> Command {
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg(action).arg("-D").arg(&self.pgdata);
        if action != "reload" {
            cmd.args(["-w", "-t", PG_CTL_TIMEOUT_SECS]);
        }
        cmd
    }

    /// A client tool (psql, pg_isready) run as ourselves, with a clean environment.
    pub(crate) fn client_command(&self, tool: &str) -> Command {
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

    /// `psql` reading a script from stdin with `-X -q --no-align --tuples-only` and
    /// `ON_ERROR_STOP=1`, connected by `conninfo`.
    pub(crate) fn psql_command(&self, conninfo: String) -> Command {
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
        cmd
    }

    pub(crate) fn run_pg(&self, cmd: Command, with_log: bool) -> Result<Output, Error> {
        run(cmd, with_log.then_some(self.log_file.as_path()))
    }
}

/// Runs `cmd`, turning a failure into an [`Error`] quoting stderr and,
/// if given, the log's tail.
pub(crate) fn run(mut cmd: Command, log: Option<&Path>) -> Result<Output, Error> {
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: describe(&cmd),
        source,
    })?;
    check(&cmd, out, log)
}

pub(crate) fn run_with_stdin(mut cmd: Command, input: &[u8]) -> Result<Output, Error> {
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
pub(crate) fn describe(cmd: &Command) -> String {
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
pub(crate) fn sanitize_env(cmd: &mut Command) {
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
pub(crate) fn tail_file(path: &Path, n: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    tail_lines(&String::from_utf8_lossy(&bytes), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_lines("a", 5), "a");
    }
}
