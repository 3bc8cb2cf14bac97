//! Finding the installed PostgreSQL server binaries.

use crate::Error;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

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
