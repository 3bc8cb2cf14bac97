//! The Node.js servers the benches compare against (Socket.IO, Hocuspocus): started on a free
//! port, ready once they print a line starting with `listening`, killed when dropped.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::{free_port, BoxError};

/// The `version` of the npm package whose package.json is `package`.
pub(crate) fn package_version(package: &Path) -> Option<String> {
    std::fs::read_to_string(package)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
}

/// What `node --version` says.
pub(crate) fn node_version(node: impl AsRef<OsStr>) -> std::io::Result<String> {
    std::process::Command::new(node)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// A Node.js server that has said it listens.
pub(crate) struct NodeProc {
    /// Killed when dropped.
    pub(crate) child: Child,
    pub(crate) pid: u32,
    pub(crate) port: u16,
    /// Its stdout after the `listening` line; the caller keeps draining it, so that the server
    /// never blocks on a full pipe.
    pub(crate) lines: Lines<BufReader<ChildStdout>>,
}

/// `node script` with `PORT` set to a free port and `envs`; waits up to 30 s for its
/// `listening` line. `name` names the server in errors.
pub(crate) async fn start_node(
    node: impl AsRef<OsStr>,
    script: &Path,
    envs: &[(&str, &OsStr)],
    name: &str,
) -> Result<NodeProc, BoxError> {
    let port = free_port();
    let mut child = tokio::process::Command::new(node)
        .arg(script)
        .env("PORT", port.to_string())
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("node exited")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .map_err(|_| format!("the {name} server did not start within 30 s"))??
        .ok_or_else(|| format!("the {name} server exited"))?;
    if !line.starts_with("listening") {
        return Err(format!("unexpected first line from the {name} server: {line}").into());
    }
    Ok(NodeProc {
        child,
        pid,
        port,
        lines,
    })
}
