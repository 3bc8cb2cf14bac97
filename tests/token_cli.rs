//! `triptrip-realtime token` prints a JWT that a verifier built from the same settings accepts.

use std::path::Path;
use std::process::{Command, Output};

use clap::Parser;
use triptrip_realtime::auth::Verifier;
use triptrip_realtime::config::Settings;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
}

fn token_command(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_triptrip-realtime"))
        .arg("token")
        .args(args)
        .env("TRIPTRIP_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run triptrip-realtime token")
}

fn verifier_for(data_dir: &Path) -> Verifier {
    let cli = Cli::try_parse_from([
        "triptrip-realtime".as_ref(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ])
    .expect("parse settings");
    Verifier::from_settings(&cli.settings).expect("build verifier")
}

#[test]
fn printed_token_is_accepted_with_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = token_command(
        &data_dir,
        &["--user", "u", "--room", "trip:*", "--ttl", "1h"],
    );
    assert!(
        output.status.success(),
        "token failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.ends_with('\n'), "{stdout:?}");
    let token = stdout.strip_suffix('\n').unwrap();
    assert!(!token.contains(char::is_whitespace), "{stdout:?}");
    assert_eq!(token.split('.').count(), 3, "{stdout:?}");

    // The secret was generated into the data directory; a verifier from the same settings
    // (as the server would build) accepts the token.
    assert!(data_dir.join("jwt.secret").is_file());
    let claims = verifier_for(&data_dir)
        .verify(token)
        .expect("token accepted");
    assert_eq!(claims.user, "u");
    assert!(claims.rooms.allows("trip:42"));
    assert!(!claims.rooms.allows("other:1"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (claims.expires_at - (now + 3600)).abs() <= 5,
        "{}",
        claims.expires_at
    );

    // A second run reuses the secret: both tokens verify with one verifier.
    let again = token_command(
        &data_dir,
        &["--user", "v", "--room", "a:*", "--room", "b:1"],
    );
    assert!(again.status.success());
    let token = String::from_utf8(again.stdout).unwrap();
    let claims = verifier_for(&data_dir).verify(token.trim_end()).unwrap();
    assert_eq!(claims.user, "v");
    assert!(
        claims.rooms.allows("a:x") && claims.rooms.allows("b:1") && !claims.rooms.allows("b:2")
    );

    // Another data directory has another secret.
    let other = dir.path().join("other");
    assert!(verifier_for(&other).verify(token.trim_end()).is_err());
}

#[test]
fn bad_ttl_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    for (ttl, expected) in [
        ("0s", "greater than zero"),
        ("abc", "expected a positive number followed by s, m, h or d"),
        ("10", "expected a positive number followed by s, m, h or d"),
    ] {
        let output = token_command(dir.path(), &["--user", "u", "--ttl", ttl]);
        assert!(!output.status.success(), "--ttl {ttl} was accepted");
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--ttl"), "--ttl {ttl}: {stderr}");
        assert!(stderr.contains(expected), "--ttl {ttl}: {stderr}");
    }
}

#[test]
fn user_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let output = token_command(dir.path(), &["--room", "trip:*"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--user"));
}
