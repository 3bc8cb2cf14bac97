use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const RS256_PRIVATE: &str = include_str!("../../tests/keys/rs256-private.pem");
const RS256_PUBLIC: &str = include_str!("../../tests/keys/rs256-public.pem");
const ES256_PRIVATE: &str = include_str!("../../tests/keys/es256-private.pem");
const OTHER_ES256_PRIVATE: &str = include_str!("../../tests/keys/other-es256-private.pem");
const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

fn keys_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
}

fn config(data_dir: &Path) -> AuthConfig {
    AuthConfig {
        secret: None,
        public_key: None,
        private_key: None,
        issuer: None,
        audience: None,
        data_dir: data_dir.to_owned(),
    }
}

fn hs256() -> Verifier {
    let mut config = config(Path::new("/nonexistent-unused"));
    config.secret = Some(JwtSecret::new(SECRET));
    Verifier::from_config(&config).unwrap()
}

fn rs256(with_private: bool) -> Verifier {
    let mut config = config(Path::new("/nonexistent-unused"));
    config.public_key = Some(keys_dir().join("rs256-public.pem"));
    if with_private {
        config.private_key = Some(keys_dir().join("rs256-private.pem"));
    }
    Verifier::from_config(&config).unwrap()
}

fn es256(with_private: bool) -> Verifier {
    let mut config = config(Path::new("/nonexistent-unused"));
    config.public_key = Some(keys_dir().join("es256-public.pem"));
    if with_private {
        config.private_key = Some(keys_dir().join("es256-private.pem"));
    }
    Verifier::from_config(&config).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sign_hs256(claims: &Value) -> String {
    sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

fn sign_with(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

fn valid_claims() -> Value {
    json!({ "sub": "alice", "exp": now() + 600, "rooms": ["trip:*"] })
}

/// header.payload.signature from raw JSON, signature as given.
fn hand_made(header: &Value, payload: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        base64url::encode(header.to_string().as_bytes()),
        base64url::encode(payload.to_string().as_bytes()),
        signature
    )
}

fn rooms(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn hs256_round_trip() {
    let verifier = hs256();
    assert_eq!(verifier.algorithms(), ["HS256"]);
    let token = verifier
        .issue(
            "alice",
            &rooms(&["trip:*", "demo:lobby"]),
            Duration::from_secs(3600),
        )
        .unwrap();
    let claims = verifier.verify(&token).unwrap();
    assert_eq!(claims.user, "alice");
    assert!(claims.rooms.allows("trip:42"));
    assert!(claims.rooms.allows("demo:lobby"));
    assert!(!claims.rooms.allows("demo:lobby2"));
    assert!(!claims.rooms.allows("other:1"));
    assert!((claims.expires_at - (now() + 3600)).abs() <= 2);
    assert_eq!(
        claims.rooms.iter().collect::<Vec<_>>(),
        ["trip:*", "demo:lobby"]
    );
}

#[test]
fn hs256_accepts_tokens_from_other_signers() {
    let claims = hs256().verify(&sign_hs256(&valid_claims())).unwrap();
    assert_eq!(claims.user, "alice");
}

#[test]
fn rs256_round_trip_and_external_token() {
    let verifier = rs256(true);
    assert_eq!(verifier.algorithms(), ["RS256"]);
    let token = verifier
        .issue("bob", &rooms(&["*"]), Duration::from_secs(60))
        .unwrap();
    let claims = verifier.verify(&token).unwrap();
    assert_eq!(claims.user, "bob");
    assert!(claims.rooms.allows("anything:at:all"));

    // A verifier holding only the public key accepts it too, and one signed elsewhere.
    let public_only = rs256(false);
    assert!(!public_only.can_issue());
    assert!(public_only
        .issue("bob", &[], Duration::from_secs(60))
        .is_err());
    assert_eq!(public_only.verify(&token).unwrap().user, "bob");
    let external = sign_with(
        Algorithm::RS256,
        &EncodingKey::from_rsa_pem(RS256_PRIVATE.as_bytes()).unwrap(),
        &valid_claims(),
    );
    assert_eq!(public_only.verify(&external).unwrap().user, "alice");
}

#[test]
fn es256_round_trip_and_external_token() {
    let verifier = es256(true);
    assert_eq!(verifier.algorithms(), ["ES256"]);
    let token = verifier
        .issue("carol", &rooms(&["team:7:*"]), Duration::from_secs(60))
        .unwrap();
    let claims = verifier.verify(&token).unwrap();
    assert_eq!(claims.user, "carol");
    assert!(claims.rooms.allows("team:7:chat"));
    assert!(!claims.rooms.allows("team:8:chat"));

    let public_only = es256(false);
    let external = sign_with(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap(),
        &valid_claims(),
    );
    assert_eq!(public_only.verify(&external).unwrap().user, "alice");

    // Signed by another P-256 key: bad signature.
    let forged = sign_with(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(OTHER_ES256_PRIVATE.as_bytes()).unwrap(),
        &valid_claims(),
    );
    assert_eq!(public_only.verify(&forged), Err(AuthError::BadSignature));
}

#[test]
fn key_configuration_errors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut bad = config(dir.path());

    // A private key without its public key.
    bad.private_key = Some(keys_dir().join("es256-private.pem"));
    let err = Verifier::from_config(&bad).unwrap_err().to_string();
    assert!(err.contains("--jwt-public-key"), "{err}");

    // A private key given as the public key.
    bad.private_key = None;
    bad.public_key = Some(keys_dir().join("rs256-private.pem"));
    let err = Verifier::from_config(&bad).unwrap_err().to_string();
    assert!(err.contains("private key"), "{err}");

    // ES256 needs P-256.
    bad.public_key = Some(keys_dir().join("p384-public.pem"));
    let err = Verifier::from_config(&bad).unwrap_err().to_string();
    assert!(err.contains("P-256"), "{err}");

    // Not a key at all, and a missing file.
    bad.public_key = Some(keys_dir().join("README.md"));
    assert!(Verifier::from_config(&bad).is_err());
    bad.public_key = Some(dir.path().join("missing.pem"));
    assert!(Verifier::from_config(&bad).is_err());

    // A private key that does not match the public key, same type and other type.
    bad.public_key = Some(keys_dir().join("es256-public.pem"));
    bad.private_key = Some(keys_dir().join("other-es256-private.pem"));
    let err = Verifier::from_config(&bad).unwrap_err().to_string();
    assert!(err.contains("does not match"), "{err}");
    bad.private_key = Some(keys_dir().join("rs256-private.pem"));
    assert!(Verifier::from_config(&bad).is_err());

    // An empty secret.
    let mut empty = config(dir.path());
    empty.secret = Some(JwtSecret::new(""));
    assert!(Verifier::from_config(&empty).is_err());

    // Nothing above may have generated a secret file (a key was configured each time).
    assert!(!dir.path().join(SECRET_FILE_NAME).exists());
}

#[test]
fn expired_and_not_yet_valid() {
    let verifier = hs256();
    let expired = sign_hs256(&json!({ "sub": "a", "exp": now() - 120 }));
    let err = verifier.verify(&expired).unwrap_err();
    assert_eq!(err, AuthError::Expired);
    assert_eq!(err.code(), "token_expired");

    // Within the 30 s leeway.
    let just_expired = sign_hs256(&json!({ "sub": "a", "exp": now() - 5 }));
    assert!(verifier.verify(&just_expired).is_ok());

    let future = sign_hs256(&json!({ "sub": "a", "exp": now() + 600, "nbf": now() + 300 }));
    let err = verifier.verify(&future).unwrap_err();
    assert_eq!(err, AuthError::NotYetValid);
    assert_eq!(err.code(), "unauthorized");
    let almost = sign_hs256(&json!({ "sub": "a", "exp": now() + 600, "nbf": now() + 5 }));
    assert!(verifier.verify(&almost).is_ok());

    let no_exp = sign_hs256(&json!({ "sub": "a" }));
    assert!(matches!(
        verifier.verify(&no_exp),
        Err(AuthError::Malformed(_))
    ));
    let string_exp = sign_hs256(&json!({ "sub": "a", "exp": "tomorrow" }));
    assert!(matches!(
        verifier.verify(&string_exp),
        Err(AuthError::Malformed(_))
    ));
    let negative_exp = sign_hs256(&json!({ "sub": "a", "exp": -1 }));
    assert!(verifier.verify(&negative_exp).is_err());
}

#[test]
fn issuer_and_audience() {
    let mut config = config(Path::new("/nonexistent-unused"));
    config.secret = Some(JwtSecret::new(SECRET));
    config.issuer = Some("https://auth.triptrip.example".into());
    config.audience = Some("realtime".into());
    let verifier = Verifier::from_config(&config).unwrap();

    // Its own tokens carry both.
    let token = verifier.issue("u", &[], Duration::from_secs(60)).unwrap();
    assert_eq!(verifier.verify(&token).unwrap().user, "u");

    let base = |extra: Value| {
        let mut claims = json!({ "sub": "u", "exp": now() + 600 });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        sign_hs256(&claims)
    };
    let iss = "https://auth.triptrip.example";
    let ok = |extra| verifier.verify(&base(extra));
    assert!(ok(json!({ "iss": iss, "aud": "realtime" })).is_ok());
    assert!(ok(json!({ "iss": iss, "aud": ["other", "realtime"] })).is_ok());

    assert_eq!(
        ok(json!({ "iss": "https://evil.example", "aud": "realtime" })).unwrap_err(),
        AuthError::WrongIssuer
    );
    assert_eq!(
        ok(json!({ "aud": "realtime" })).unwrap_err(),
        AuthError::WrongIssuer
    );
    assert_eq!(
        ok(json!({ "iss": iss, "aud": "other" })).unwrap_err(),
        AuthError::WrongAudience
    );
    assert_eq!(
        ok(json!({ "iss": iss, "aud": ["other", "another"] })).unwrap_err(),
        AuthError::WrongAudience
    );
    assert_eq!(
        ok(json!({ "iss": iss, "aud": [] })).unwrap_err(),
        AuthError::WrongAudience
    );
    assert_eq!(
        ok(json!({ "iss": iss })).unwrap_err(),
        AuthError::WrongAudience
    );

    // Without configured iss/aud, whatever the token says is ignored.
    let plain = hs256();
    assert!(plain
        .verify(&base(json!({ "iss": "anyone", "aud": ["x"] })))
        .is_ok());
}

#[test]
fn bad_signature_and_tampered_payload() {
    let verifier = hs256();
    let other = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another secret that is long enough!!"),
        &valid_claims(),
    );
    assert_eq!(verifier.verify(&other), Err(AuthError::BadSignature));

    // Swap the payload for one granting every room, keep the signature.
    let token = verifier
        .issue("alice", &rooms(&["trip:1"]), Duration::from_secs(60))
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let payload = json!({ "sub": "alice", "exp": now() + 600, "rooms": ["*"] });
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64url::encode(payload.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(verifier.verify(&tampered), Err(AuthError::BadSignature));

    // Truncated or emptied signature.
    let truncated = &token[..token.len() - 4];
    assert!(verifier.verify(truncated).is_err());
    let unsigned = format!("{}.{}.", parts[0], parts[1]);
    assert_eq!(verifier.verify(&unsigned), Err(AuthError::BadSignature));

    // RS256 and ES256 with a flipped signature byte.
    for verifier in [rs256(true), es256(true)] {
        let token = verifier.issue("a", &[], Duration::from_secs(60)).unwrap();
        let (message, signature) = token.rsplit_once('.').unwrap();
        let mut sig = signature.as_bytes().to_vec();
        sig[5] = if sig[5] == b'A' { b'B' } else { b'A' };
        let flipped = format!("{message}.{}", String::from_utf8(sig).unwrap());
        assert_eq!(verifier.verify(&flipped), Err(AuthError::BadSignature));
    }
}

#[test]
fn alg_none_is_rejected() {
    let payload = json!({ "sub": "alice", "exp": now() + 600, "rooms": ["*"] });
    for verifier in [hs256(), rs256(false), es256(false)] {
        for alg in ["none", "None", "NONE", ""] {
            let token = hand_made(&json!({ "alg": alg, "typ": "JWT" }), &payload, "");
            let err = verifier.verify(&token).unwrap_err();
            assert_eq!(err, AuthError::UnsupportedAlgorithm(alg.into()));
            assert_eq!(err.code(), "unauthorized");
        }
        let no_alg = hand_made(&json!({ "typ": "JWT" }), &payload, "");
        assert!(matches!(
            verifier.verify(&no_alg),
            Err(AuthError::Malformed(_))
        ));
    }
}

#[test]
fn unconfigured_algorithms_are_rejected() {
    let payload = json!({ "sub": "alice", "exp": now() + 600 });
    let verifier = hs256();
    for alg in ["HS384", "HS512", "RS256", "ES256", "PS256", "EdDSA"] {
        let token = hand_made(&json!({ "alg": alg }), &payload, "c2ln");
        assert_eq!(
            verifier.verify(&token),
            Err(AuthError::UnsupportedAlgorithm(alg.into()))
        );
    }
    // ES256 key configured: an RS256 token is refused, and vice versa.
    let rs_token = rs256(true)
        .issue("a", &[], Duration::from_secs(60))
        .unwrap();
    let es_token = es256(true)
        .issue("a", &[], Duration::from_secs(60))
        .unwrap();
    assert_eq!(
        es256(false).verify(&rs_token),
        Err(AuthError::UnsupportedAlgorithm("RS256".into()))
    );
    assert_eq!(
        rs256(false).verify(&es_token),
        Err(AuthError::UnsupportedAlgorithm("ES256".into()))
    );
}

#[test]
fn algorithm_confusion_hs256_with_public_key_as_secret() {
    // The classic attack: HS256-sign with the RSA public key's PEM bytes as the HMAC secret.
    let forged = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
        &valid_claims(),
    );
    assert_eq!(
        rs256(false).verify(&forged),
        Err(AuthError::UnsupportedAlgorithm("HS256".into()))
    );
    let es_public = std::fs::read(keys_dir().join("es256-public.pem")).unwrap();
    let forged = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(&es_public),
        &valid_claims(),
    );
    assert_eq!(
        es256(false).verify(&forged),
        Err(AuthError::UnsupportedAlgorithm("HS256".into()))
    );
}

#[test]
fn both_secret_and_public_key_configured() {
    let mut config = config(Path::new("/nonexistent-unused"));
    config.secret = Some(JwtSecret::new(SECRET));
    config.public_key = Some(keys_dir().join("rs256-public.pem"));
    let verifier = Verifier::from_config(&config).unwrap();
    assert_eq!(verifier.algorithms(), ["HS256", "RS256"]);
    assert!(verifier.verify(&sign_hs256(&valid_claims())).is_ok());
    let rs_token = rs256(true)
        .issue("a", &[], Duration::from_secs(60))
        .unwrap();
    assert!(verifier.verify(&rs_token).is_ok());
    // HS256 is checked with the secret, never with the public key.
    let forged = sign_with(
        Algorithm::HS256,
        &EncodingKey::from_secret(RS256_PUBLIC.as_bytes()),
        &valid_claims(),
    );
    assert_eq!(verifier.verify(&forged), Err(AuthError::BadSignature));
}

#[test]
fn garbage_is_refused_without_panicking() {
    let verifier = hs256();
    assert_eq!(verifier.verify(""), Err(AuthError::Missing));
    assert_eq!(AuthError::Missing.code(), "unauthorized");
    let big = "a".repeat(10 * 1024);
    let valid = sign_hs256(&valid_claims());
    let padded = format!("{valid}{}", "A".repeat(10 * 1024));
    for garbage in [
        ".",
        "..",
        "...",
        "a.b.c",
        "a.b",
        "a.b.c.d",
        "not a token",
        "Bearer x.y.z",
        "\u{0}\u{1}\u{2}",
        "é.é.é",
        "////.++++.====",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        // Header "{\"alg\":\"HS256\"}" padded with '=' (JWS forbids padding).
        "eyJhbGciOiJIUzI1NiJ9=.e30.x",
        big.as_str(),
        padded.as_str(),
    ] {
        let err = verifier.verify(garbage).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::Malformed(_) | AuthError::BadSignature | AuthError::MissingSubject
            ),
            "{garbage:.40?}: {err:?}"
        );
        assert_eq!(err.code(), "unauthorized");
    }
    assert!(matches!(
        verifier.verify(&big),
        Err(AuthError::Malformed(m)) if m.contains("8 KiB")
    ));

    // Base64 of bytes that are not UTF-8 / not JSON, in each position.
    let junk = base64url::encode(&[0xff, 0xfe, 0x00, 0xc3, 0x28, 0xa0, 0xa1]);
    let header = base64url::encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = base64url::encode(valid_claims().to_string().as_bytes());
    for token in [
        format!("{junk}.{payload}.abc"),
        format!("{header}.{junk}.abc"),
        format!("{header}.{payload}.{junk}"),
        format!("{header}.{payload}.!!!"),
        format!("{header}.{}.abc", base64url::encode(b"[1,2,3]")),
        format!("{}.{payload}.abc", base64url::encode(b"[\"alg\"]")),
        format!("{}.{payload}.abc", base64url::encode(br#"{"alg":256}"#)),
    ] {
        let err = verifier.verify(&token).unwrap_err();
        assert!(
            matches!(err, AuthError::Malformed(_) | AuthError::BadSignature),
            "{token}: {err:?}"
        );
    }

    // A very long `alg` is not echoed back in full.
    let long_alg = "X".repeat(5000);
    let token = hand_made(&json!({ "alg": long_alg }), &valid_claims(), "");
    match verifier.verify(&token) {
        Err(AuthError::UnsupportedAlgorithm(alg)) => assert!(alg.len() < 64),
        other => panic!("{other:?}"),
    }

    // Unknown critical extensions are refused.
    let crit = hand_made(
        &json!({ "alg": "HS256", "crit": ["exp"], "exp": 1 }),
        &valid_claims(),
        "abc",
    );
    assert!(matches!(
        verifier.verify(&crit),
        Err(AuthError::Malformed(_))
    ));
}

#[test]
fn subject_rules() {
    let verifier = hs256();
    let exp = now() + 600;
    let check = |claims: Value| verifier.verify(&sign_hs256(&claims));
    assert_eq!(
        check(json!({ "exp": exp })).unwrap_err(),
        AuthError::MissingSubject
    );
    assert_eq!(
        check(json!({ "exp": exp, "sub": "" })).unwrap_err(),
        AuthError::MissingSubject
    );
    assert_eq!(
        check(json!({ "exp": exp, "sub": null })).unwrap_err(),
        AuthError::MissingSubject
    );
    assert!(matches!(
        check(json!({ "exp": exp, "sub": 42 })),
        Err(AuthError::Malformed(_))
    ));
    assert!(check(json!({ "exp": exp, "sub": "é".repeat(200) })).is_ok());
    assert!(matches!(
        check(json!({ "exp": exp, "sub": "x".repeat(201) })),
        Err(AuthError::Malformed(_))
    ));
    assert!(verifier.issue("", &[], Duration::from_secs(60)).is_err());
    assert!(verifier
        .issue(&"x".repeat(201), &[], Duration::from_secs(60))
        .is_err());
    assert!(verifier
        .issue("a", &[], Duration::from_millis(500))
        .is_err());
}

#[test]
fn rooms_claim_rules() {
    let verifier = hs256();
    let exp = now() + 600;
    let check = |rooms: Value| {
        verifier.verify(&sign_hs256(
            &json!({ "sub": "u", "exp": exp, "rooms": rooms }),
        ))
    };

    let none = verifier
        .verify(&sign_hs256(&json!({ "sub": "u", "exp": exp })))
        .unwrap();
    assert!(none.rooms.is_empty());
    assert!(!none.rooms.allows("trip:1"));
    assert!(!none.rooms.allows(""));
    assert!(check(json!(null)).unwrap().rooms.is_empty());
    assert!(check(json!([])).unwrap().rooms.is_empty());

    for bad in [
        json!("trip:*"),
        json!({ "trip:*": true }),
        json!(["trip:*", 7]),
        json!([["trip:*"]]),
        json!([null]),
        json!(true),
        json!(1),
        json!(vec!["r"; 201]),
        json!(["x".repeat(201)]),
    ] {
        assert!(
            matches!(check(bad.clone()), Err(AuthError::Malformed(_))),
            "{bad:.60}"
        );
    }
    // The limits themselves are accepted (within the 8 KiB token limit).
    let many: Vec<String> = (0..200).map(|i| format!("r{i}:*")).collect();
    let max = check(json!(many)).unwrap();
    assert_eq!(max.rooms.len(), 200);
    assert!(max.rooms.allows("r199:x") && !max.rooms.allows("r200:x"));
    assert!(check(json!(["é".repeat(200)])).is_ok());
    // A token that would exceed 8 KiB is not issued.
    let err = verifier
        .issue("u", &vec!["x".repeat(200); 100], Duration::from_secs(60))
        .unwrap_err();
    assert!(err.to_string().contains("8 KiB"), "{err}");
    assert!(verifier
        .issue("u", &vec!["r".to_owned(); 201], Duration::from_secs(60))
        .is_err());
    assert!(verifier
        .issue("u", &["x".repeat(201)], Duration::from_secs(60))
        .is_err());
}

#[test]
fn room_patterns() {
    let p = RoomPatterns::new(["trip:*", "team:7:*", "demo:lobby", "a*b*c"]);
    assert!(p.allows("trip:"));
    assert!(p.allows("trip:42"));
    assert!(p.allows("trip:42:chat"));
    assert!(!p.allows("trip"));
    assert!(!p.allows("xtrip:42"));
    assert!(p.allows("team:7:"));
    assert!(!p.allows("team:70:x"));
    assert!(p.allows("demo:lobby"));
    assert!(!p.allows("demo:lobby:2"));
    assert!(p.allows("abc"));
    assert!(p.allows("a-b-c"));
    assert!(p.allows("abcbc"));
    assert!(!p.allows("acb"));
    assert!(!p.allows("ab"));

    let all = RoomPatterns::new(["*"]);
    assert!(all.allows(""));
    assert!(all.allows("anything"));
    let double = RoomPatterns::new(["**"]);
    assert!(double.allows("x"));
    let overlap = RoomPatterns::new(["ab*ba"]);
    assert!(!overlap.allows("aba"));
    assert!(overlap.allows("abba"));
    assert!(overlap.allows("ab-ba"));
    let exact_empty = RoomPatterns::new([""]);
    assert!(exact_empty.allows(""));
    assert!(!exact_empty.allows("a"));
    let unicode = RoomPatterns::new(["é*ü", "*日本"]);
    assert!(unicode.allows("éü"));
    assert!(unicode.allows("é-ß-ü"));
    assert!(unicode.allows("東京日本"));
    assert!(!unicode.allows("ü"));
    // Other glob metacharacters are literal.
    let literal = RoomPatterns::new(["a?c", "[ab]", "x.y"]);
    assert!(literal.allows("a?c"));
    assert!(!literal.allows("abc"));
    assert!(literal.allows("[ab]"));
    assert!(!literal.allows("a"));
    assert!(!literal.allows("xzy"));
    assert_eq!(format!("{literal:?}"), r#"["a?c", "[ab]", "x.y"]"#);
}

#[test]
fn room_matching_is_linear_on_adversarial_input() {
    // 200-char pattern `*a*a*...*b` against a long run of `a`: backtracking matchers explode.
    let pattern = format!("{}b", "*a".repeat(99));
    let room = "a".repeat(100_000);
    let patterns = RoomPatterns::new(vec![pattern; 200]);
    let started = std::time::Instant::now();
    assert!(!patterns.allows(&room));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn generated_secret_is_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("nested").join("data");
    let config = config(&data_dir);

    let first = Verifier::from_config(&config).unwrap();
    let path = data_dir.join(SECRET_FILE_NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    let secret = text.trim_end();
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // No temporary files left behind.
    let names: Vec<_> = std::fs::read_dir(&data_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [SECRET_FILE_NAME]);

    // A restart reuses it: tokens stay valid, the file is unchanged.
    let token = first.issue("u", &[], Duration::from_secs(60)).unwrap();
    let second = Verifier::from_config(&config).unwrap();
    assert_eq!(second.verify(&token).unwrap().user, "u");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // The file's content works as --jwt-secret (for other services).
    let mut explicit = config.clone();
    explicit.secret = Some(JwtSecret::new(secret));
    explicit.data_dir = dir.path().join("elsewhere");
    assert_eq!(
        Verifier::from_config(&explicit)
            .unwrap()
            .verify(&token)
            .unwrap()
            .user,
        "u"
    );
    assert!(!dir.path().join("elsewhere").exists());

    // Another data directory gets another secret.
    let other = Verifier::from_config(&super::AuthConfig {
        data_dir: dir.path().join("other"),
        ..config.clone()
    })
    .unwrap();
    assert_eq!(other.verify(&token), Err(AuthError::BadSignature));

    // An emptied file is an error, not a silent new secret.
    std::fs::write(&path, "").unwrap();
    let err = Verifier::from_config(&config).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}

#[test]
fn concurrent_first_use_agrees_on_one_secret() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let verifiers: Vec<Verifier> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| scope.spawn(|| Verifier::from_config(&config).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let token = verifiers[0]
        .issue("u", &[], Duration::from_secs(60))
        .unwrap();
    for verifier in &verifiers {
        assert_eq!(verifier.verify(&token).unwrap().user, "u");
    }
}

#[test]
fn settings_map_onto_the_config() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: crate::config::Settings,
    }
    let dir = tempfile::tempdir().unwrap();
    let public = keys_dir().join("es256-public.pem");
    let private = keys_dir().join("es256-private.pem");
    let cli = Cli::try_parse_from([
        "x".as_ref(),
        "--data-dir".as_ref(),
        dir.path().as_os_str(),
        "--jwt-public-key".as_ref(),
        public.as_os_str(),
        "--jwt-private-key".as_ref(),
        private.as_os_str(),
        "--jwt-issuer".as_ref(),
        "iss".as_ref(),
        "--jwt-audience".as_ref(),
        "aud".as_ref(),
    ] as [&std::ffi::OsStr; 11])
    .unwrap();
    let config = AuthConfig::from_settings(&cli.settings);
    assert_eq!(config.public_key.as_deref(), Some(public.as_path()));
    assert_eq!(config.issuer.as_deref(), Some("iss"));
    let verifier = Verifier::from_settings(&cli.settings).unwrap();
    assert_eq!(verifier.algorithms(), ["ES256"]);
    let token = verifier.issue("u", &[], Duration::from_secs(60)).unwrap();
    assert!(verifier.verify(&token).is_ok());

    // The secret never shows in Debug output.
    let cli = Cli::try_parse_from(["x", "--jwt-secret", "hunter2-hunter2"]).unwrap();
    assert!(!format!("{:?}", cli.settings).contains("hunter2"));
    assert!(!format!("{:?}", AuthConfig::from_settings(&cli.settings)).contains("hunter2"));
}

#[test]
fn base64url_decoding() {
    for data in [
        &b""[..],
        b"f",
        b"fo",
        b"foo",
        b"foob",
        b"fooba",
        b"foobar",
        &[0xff, 0xfe, 0xfd],
    ] {
        assert_eq!(base64url::decode(&base64url::encode(data)).unwrap(), data);
    }
    assert_eq!(base64url::encode(&[0xfb, 0xff]), "-_8");
    assert!(base64url::decode("a").is_none());
    assert!(base64url::decode("Zm9v=").is_none());
    assert!(base64url::decode("Zm+v").is_none());
    assert!(base64url::decode("Zh").is_none()); // non-zero trailing bits
    assert!(base64url::decode("é").is_none());
}

/// Reference glob: plain recursion, exponential but obviously right on short inputs.
fn reference_glob(pattern: &[char], room: &[char]) -> bool {
    match pattern.split_first() {
        None => room.is_empty(),
        Some(('*', rest)) => (0..=room.len()).any(|skip| reference_glob(rest, &room[skip..])),
        Some((c, rest)) => room.first() == Some(c) && reference_glob(rest, &room[1..]),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn glob_agrees_with_reference(pattern in "[ab*]{0,8}", room in "[ab]{0,10}") {
        let p: Vec<char> = pattern.chars().collect();
        let r: Vec<char> = room.chars().collect();
        prop_assert_eq!(
            RoomPatterns::new([&pattern]).allows(&room),
            reference_glob(&p, &r)
        );
    }

    #[test]
    fn glob_agrees_with_reference_unicode(pattern in "[a:é*日]{0,7}", room in "[a:é日]{0,9}") {
        let p: Vec<char> = pattern.chars().collect();
        let r: Vec<char> = room.chars().collect();
        prop_assert_eq!(
            RoomPatterns::new([&pattern]).allows(&room),
            reference_glob(&p, &r)
        );
    }

    #[test]
    fn verify_never_panics_on_strings(token in ".{0,300}") {
        let _ = hs256_cached().verify(&token);
        let _ = rs256_cached().verify(&token);
    }

    #[test]
    fn verify_never_panics_on_jwt_shaped_strings(
        token in "[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,60}\\.[A-Za-z0-9_-]{0,90}"
    ) {
        let _ = hs256_cached().verify(&token);
        let _ = es256_cached().verify(&token);
    }

    #[test]
    fn verify_never_panics_on_arbitrary_parts(
        header in proptest::collection::vec(any::<u8>(), 0..80),
        payload in proptest::collection::vec(any::<u8>(), 0..120),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
        alg in prop_oneof![Just("HS256"), Just("RS256"), Just("ES256"), Just("none")],
        claims in proptest::collection::vec(
            ("[a-z]{1,5}", prop_oneof![
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,10}".prop_map(Value::from),
                Just(Value::Null),
                Just(json!([1, "a", null])),
            ]),
            0..6,
        ),
    ) {
        let verifiers = [hs256_cached(), rs256_cached(), es256_cached()];
        let signature = base64url::encode(&signature);
        let raw = format!(
            "{}.{}.{signature}",
            base64url::encode(&header),
            base64url::encode(&payload)
        );
        let mut object = serde_json::Map::new();
        for (k, v) in claims {
            object.insert(k, v);
        }
        object.insert("sub".into(), "u".into());
        let structured = hand_made(&json!({ "alg": alg }), &Value::Object(object.clone()), &signature);
        for verifier in verifiers {
            let _ = verifier.verify(&raw);
            let _ = verifier.verify(&structured);
        }
        // Properly signed tokens with odd claims: whatever the result, no panic.
        let signed = sign_hs256(&Value::Object(object));
        let _ = hs256_cached().verify(&signed);
    }
}

fn hs256_cached() -> &'static Verifier {
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    V.get_or_init(hs256)
}

fn rs256_cached() -> &'static Verifier {
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    V.get_or_init(|| rs256(false))
}

fn es256_cached() -> &'static Verifier {
    static V: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    V.get_or_init(|| es256(false))
}
