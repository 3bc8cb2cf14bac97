//! Process control: starting, stopping, crashing and killing the
//! postmaster, waiting until it accepts connections, and clearing the stale
//! locks a crash leaves behind.

use crate::command::{describe, run, tail_file, TAIL_LINES};
use crate::error::io_err;
use crate::port::pick_free_port;
use crate::{procfs, Cluster, Error, SUPERUSER};
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long [`Cluster::start`] waits for connections to be accepted.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Start attempts on fresh ports when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 5;

impl Cluster {
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

    /// The pid of the live postmaster for our data directory, if any.
    pub(crate) fn running_postmaster(&self) -> Option<u32> {
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
}

/// What we need from `postmaster.pid`.
pub(crate) struct PidFile {
    pid: u32,
    pub(crate) port: Option<u16>,
}

pub(crate) fn read_pid_file(pgdata: &Path) -> Option<PidFile> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    // Line 4 is the port.
    let port = lines.nth(2).and_then(|l| l.trim().parse().ok());
    Some(PidFile { pid, port })
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
