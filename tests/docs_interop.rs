//! Collaborative documents with stock clients: the npm packages `yjs` and `y-websocket` 3.x,
//! run by Node (scripts in tests/yjs/), against a real server on a real PostgreSQL through
//! `/yjs/{doc}`. Each script prints its result as JSON; these tests check it, and compare it
//! with `GET /api/docs/{doc}`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use common::server::*;
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const DOC: &str = "trip:42";
/// The longest a scenario script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// Edits the kill -9 writer must see echoed before the server is killed.
const ECHOED_BEFORE_KILL: u64 = 50;

fn yjs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/yjs")
}

/// Installs tests/yjs/node_modules with `npm ci` unless it is already newer than the lock file
/// (./test.sh runs `npm ci` first); once per test process.
fn node_modules() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let dir = yjs_dir();
        let modified = |path: PathBuf| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let installed = modified(dir.join("node_modules/.package-lock.json"));
        if installed.is_some() && installed >= modified(dir.join("package-lock.json")) {
            return;
        }
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("npm (Node.js) is needed: ./test.sh installs it");
        assert!(status.success(), "npm ci in tests/yjs failed: {status}");
    });
}

/// `node tests/yjs/SCRIPT --url … --doc DOC --token TOKEN ARGS…`, not yet awaited.
fn script(server: &TestServer, name: &str, token: &str, args: &[&str]) -> Command {
    node_modules();
    let mut command = Command::new("node");
    command
        .arg(name)
        .args(["--url", &format!("ws://127.0.0.1:{}/yjs", server.port)])
        .args(["--doc", DOC, "--token", token])
        .args(args)
        .current_dir(yjs_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a scenario script to its end and returns its result, which must say `"ok": true`.
async fn run(server: &TestServer, name: &str, token: &str, args: &[&str]) -> Value {
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, script(server, name, token, args).output())
        .await
        .unwrap_or_else(|_| panic!("{name} still running after {SCRIPT_TIMEOUT:?}"))
        .expect("node (Node.js) is needed: ./test.sh installs it");
    result(
        name,
        &String::from_utf8_lossy(&output.stdout),
        &String::from_utf8_lossy(&output.stderr),
    )
}

/// The last stdout line of a script as JSON, checked for `"ok": true`.
fn result(name: &str, stdout: &str, stderr: &str) -> Value {
    let last = stdout.lines().last().unwrap_or_default();
    let value: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{name} printed no JSON result ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(
        value["ok"],
        true,
        "{name} failed: {}\nstderr:\n{stderr}",
        value["error"].as_str().unwrap_or(last)
    );
    value
}

fn editor_token() -> String {
    token("alice", &["trip:*"], 3600)
}

/// The document without its empty root types (`""`, `[]`, `{}`), which a client lists when it
/// declares the schema and the server may leave out.
fn without_empty_roots(doc: &Value) -> Map<String, Value> {
    let is_empty = |v: &Value| match v {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    };
    doc.as_object()
        .unwrap_or_else(|| panic!("a document is a JSON object: {doc}"))
        .iter()
        .filter(|(_, v)| !is_empty(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The `content` of `GET /api/docs/{DOC}` equals what the clients converged to.
async fn assert_api_doc_is(server: &TestServer, clients: &Value) {
    let (status, body) = http(
        server.port,
        "GET",
        &format!("/api/docs/{DOC}"),
        Some(&editor_token()),
        "",
    )
    .await
    .expect("GET /api/docs");
    assert_eq!(status, 200, "GET /api/docs/{DOC}: {body}");
    let api: Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("a JSON body ({e}): {body}"));
    assert_eq!(
        without_empty_roots(&api["content"]),
        without_empty_roots(clients),
        "GET /api/docs/{DOC} differs from the clients' document"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_edits_from_several_providers_converge_and_match_the_api() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let out = run(
        &server,
        "converge.mjs",
        &editor_token(),
        &["--clients", "4", "--edits", "40"],
    )
    .await;
    assert_eq!(out["edits"], 160, "{out}");
    assert!(
        !out["json"]["itinerary"].as_array().unwrap().is_empty(),
        "{out}"
    );
    assert_api_doc_is(&server, &out["json"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_merge_when_the_provider_reconnects() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let out = run(&server, "offline.mjs", &editor_token(), &[]).await;
    assert_eq!(out["json"]["title"], "Porto & Lisbon in May", "{out}");
    assert_api_doc_is(&server, &out["json"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_whole_document_in_the_sync_handshake() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let out = run(&server, "late-joiner.mjs", &editor_token(), &[]).await;
    assert_eq!(
        out["json"]["itinerary"].as_array().unwrap().len(),
        48,
        "{out}"
    );
    assert_api_doc_is(&server, &out["json"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awareness_reaches_other_clients_and_goes_when_its_client_drops() {
    let (_cluster, server, _sql) = setup(&[]).await;
    let out = run(&server, "awareness.mjs", &editor_token(), &[]).await;
    assert!(out["removed_after_ms"].as_u64().unwrap() < 10_000, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readers_edits_are_refused_while_it_receives_everyone_elses() {
    let (_cluster, server, sql) = setup(&[]).await;
    sql.execute(
        "INSERT INTO realtime.room_members (room, user_id, role) VALUES ($1, 'carol', 'reader')",
        &[&DOC],
    )
    .await
    .unwrap();
    let reader = token("carol", &[], 3600);
    let stranger = token("mallory", &["other:*"], 3600);
    let out = run(
        &server,
        "read-only.mjs",
        &editor_token(),
        &["--reader-token", &reader, "--stranger-token", &stranger],
    )
    .await;
    assert!(!out["denied"].as_array().unwrap().is_empty(), "{out}");
    assert_api_doc_is(&server, &out["json"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_edit_survives_kill_9() {
    let (_cluster, mut server, _sql) = setup(&[]).await;
    let mut writer = script(&server, "kill9-write.mjs", &editor_token(), &[])
        .spawn()
        .expect("node (Node.js) is needed: ./test.sh installs it");
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut stdout = String::new();
    tokio::time::timeout(SCRIPT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
            let progress: Value = serde_json::from_str(&line).unwrap_or_default();
            if progress["echoed"].as_u64() >= Some(ECHOED_BEFORE_KILL) {
                return;
            }
        }
        panic!("the writer ended before {ECHOED_BEFORE_KILL} echoed edits:\n{stdout}");
    })
    .await
    .expect("echoed edits in time");
    server.kill9();
    let output = tokio::time::timeout(SCRIPT_TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        writer.wait_with_output().await.unwrap()
    })
    .await
    .expect("the writer ends after the kill");
    let written = result(
        "kill9-write.mjs",
        &stdout,
        &String::from_utf8_lossy(&output.stderr),
    );
    let mut acknowledged: Vec<String> = ["echoed", "observed"]
        .iter()
        .flat_map(|k| written[k].as_array().unwrap())
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    acknowledged.sort();
    acknowledged.dedup();
    assert!(acknowledged.len() as u64 >= ECHOED_BEFORE_KILL, "{written}");

    server.kill_and_restart().await;
    let loaded = run(&server, "load.mjs", &editor_token(), &[]).await;
    let present: Vec<&str> = loaded["json"]["itinerary"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["id"].as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|id| !present.contains(&id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged edits lost after kill -9 ({} written): {lost:?}",
        lost.len(),
        acknowledged.len(),
        written["written"]
    );
    assert_api_doc_is(&server, &loaded["json"]).await;
}
