//! Small helpers over `/proc` (Linux) to find out which processes are alive
//! and which of them belong to a given data directory, without `unsafe`.

use std::fs;
use std::path::Path;

/// The single-letter state of `pid` (`R`, `S`, `Z`, ...), or `None` if there
/// is no such process.
fn state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ppid ..." - comm may contain spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Whether a process with this pid exists at all (zombies included).
pub(crate) fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `pid` is a live process (zombies and dead processes are not).
pub(crate) fn is_alive(pid: u32) -> bool {
    matches!(state(pid), Some(s) if s != 'Z' && s != 'X' && s != 'x')
}

/// The process' `comm` (executable name; Postgres processes keep
/// `postgres` here even though they rewrite their argv).
fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// Whether `pid` looks like a Postgres server process.
pub(crate) fn is_postgres(pid: u32) -> bool {
    comm(pid).is_some_and(|c| c.starts_with("postgres") || c.starts_with("postmaster"))
}

/// The process' working directory, if we may read it. Every Postgres
/// server process (postmaster and children) runs with the data directory as
/// its working directory.
pub(crate) fn cwd(pid: u32) -> Option<std::path::PathBuf> {
    fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Live Postgres processes whose working directory is `dir` (a canonical
/// path): the postmaster of that data directory and its children, including
/// children orphaned by a killed postmaster.
pub(crate) fn postgres_processes_in(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| cwd(pid).is_some_and(|c| c == dir) && is_alive(pid) && is_postgres(pid))
        .collect()
}
