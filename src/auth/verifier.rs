//! Token verification and issuing.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};

use super::{base64url, secret, AuthConfig, AuthError, RoomPatterns};
use crate::config::Settings;

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 30;
/// Longest accepted `sub`, in characters.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// Most patterns accepted in the `rooms` claim.
pub const MAX_ROOM_PATTERNS: usize = 200;
/// Longest accepted room pattern, in characters.
pub const MAX_ROOM_PATTERN_CHARS: usize = 200;

/// What a verified token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user (`sub`): non-empty, at most [`MAX_SUBJECT_CHARS`] characters.
    pub user: String,
    /// Rooms the token grants by pattern (`rooms`); empty when the claim is absent.
    pub rooms: RoomPatterns,
    /// When the token expires (`exp`), in Unix seconds.
    pub expires_at: i64,
}

/// Verifies client JWTs against the configured keys (and issues tokens when it holds a signing
/// key). Cheap to clone: the keys are shared.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// HS256 verification with the configured or generated secret.
    hs256: Option<Entry>,
    /// RS256 or ES256 verification with the configured public key.
    public: Option<Entry>,
    /// How `issue` signs: the private key if configured, else the HS256 secret.
    signer: Option<(Algorithm, EncodingKey)>,
    issuer: Option<String>,
    audience: Option<String>,
}

struct Entry {
    name: &'static str,
    key: DecodingKey,
    validation: Validation,
}

impl Verifier {
    /// Builds the verifier the server settings describe (see [`AuthConfig`]).
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Verifier> {
        Verifier::from_config(&AuthConfig::from_settings(settings))
    }

    /// Loads the keys: the HS256 secret if configured, the public key (RS256/ES256 by key type)
    /// if configured, and when neither is, the secret kept in `<data_dir>/jwt.secret` (generated
    /// on first use).
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Verifier> {
        if config.private_key.is_some() && config.public_key.is_none() {
            bail!("--jwt-private-key needs the matching --jwt-public-key");
        }
        let secret = match (&config.secret, &config.public_key) {
            (Some(secret), _) => {
                if secret.as_bytes().is_empty() {
                    bail!("the JWT secret (--jwt-secret / TRIPTRIP_JWT_SECRET) is empty");
                }
                if secret.as_bytes().len() < 32 {
                    tracing::warn!(
                        "the JWT secret is shorter than 32 bytes; use a long random secret"
                    );
                }
                Some(secret.clone())
            }
            (None, Some(_)) => None,
            (None, None) => Some(secret::load_or_create(&config.data_dir)?),
        };

        let validation = |alg: Algorithm| {
            let mut validation = Validation::new(alg);
            validation.leeway = LEEWAY_SECS;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            let mut required: HashSet<String> = HashSet::from(["exp".to_owned()]);
            if let Some(issuer) = &config.issuer {
                validation.set_issuer(&[issuer]);
                required.insert("iss".to_owned());
            }
            match &config.audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    required.insert("aud".to_owned());
                }
                None => validation.validate_aud = false,
            }
            validation.required_spec_claims = required;
            validation
        };

        let hs256 = secret.as_ref().map(|secret| Entry {
            name: "HS256",
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation: validation(Algorithm::HS256),
        });
        let mut signer = secret.as_ref().map(|secret| {
            (
                Algorithm::HS256,
                EncodingKey::from_secret(secret.as_bytes()),
            )
        });

        let public = match &config.public_key {
            None => None,
            Some(path) => {
                let (alg, key) = load_public_key(path)?;
                if let Some(private) = &config.private_key {
                    signer = Some((alg, load_private_key(private, alg)?));
                }
                Some(Entry {
                    name: algorithm_name(alg),
                    key,
                    validation: validation(alg),
                })
            }
        };

        let verifier = Verifier {
            inner: Arc::new(Inner {
                hs256,
                public,
                signer,
                issuer: config.issuer.clone(),
                audience: config.audience.clone(),
            }),
        };
        if config.private_key.is_some() {
            let probe = verifier.issue("key-check", &[], Duration::from_secs(60))?;
            if verifier.verify(&probe).is_err() {
                bail!("--jwt-private-key does not match --jwt-public-key");
            }
        }
        Ok(verifier)
    }

    /// The algorithms accepted in a token's header, e.g. `["HS256"]`.
    pub fn algorithms(&self) -> Vec<&'static str> {
        [&self.inner.hs256, &self.inner.public]
            .into_iter()
            .flatten()
            .map(|entry| entry.name)
            .collect()
    }

    /// Whether [`Verifier::issue`] can sign (an HS256 secret or a private key is configured).
    pub fn can_issue(&self) -> bool {
        self.inner.signer.is_some()
    }

    /// Checks a token: size, shape, algorithm (from configuration; the header only selects among
    /// the configured ones), signature, `exp` (required), `nbf` (if present), `iss` and `aud` (if
    /// configured), with [`LEEWAY_SECS`] of leeway; then `sub` and `rooms`. `token` is the bare
    /// compact JWT (strip any `Bearer ` prefix first); an empty string is [`AuthError::Missing`].
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(malformed("the token is larger than 8 KiB"));
        }
        let mut parts = token.split('.');
        let header = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(_), Some(_), None) => header,
            _ => return Err(malformed("a JWT has three dot-separated parts")),
        };
        let header =
            base64url::decode(header).ok_or_else(|| malformed("the header is not base64url"))?;
        let header: Map<String, Value> = serde_json::from_slice(&header)
            .map_err(|_| malformed("the header is not a JSON object"))?;
        let alg = match header.get("alg") {
            Some(Value::String(alg)) => alg.as_str(),
            _ => return Err(malformed("the header has no `alg`")),
        };
        let entry = self
            .entry_for(alg)
            .ok_or_else(|| AuthError::UnsupportedAlgorithm(truncate(alg, 32)))?;
        if header.contains_key("crit") {
            return Err(malformed("critical header extensions are not supported"));
        }

        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &entry.key, &entry.validation)
            .map_err(|e| map_error(e.kind(), alg))?;
        claims_from(data.claims)
    }

    /// Signs a token for `user` granting the room patterns `rooms`, valid for `ttl` (whole
    /// seconds, at least one). Uses the private key if configured, else the HS256 secret; fails
    /// when only a public key is configured.
    pub fn issue(&self, user: &str, rooms: &[String], ttl: Duration) -> anyhow::Result<String> {
        let Some((alg, key)) = &self.inner.signer else {
            bail!(
                "cannot sign tokens: only a public key is configured \
                 (pass --jwt-private-key, or use --jwt-secret)"
            );
        };
        if user.is_empty() {
            bail!("the user must not be empty");
        }
        if user.chars().count() > MAX_SUBJECT_CHARS {
            bail!("the user is longer than {MAX_SUBJECT_CHARS} characters");
        }
        if rooms.len() > MAX_ROOM_PATTERNS {
            bail!("at most {MAX_ROOM_PATTERNS} room patterns fit in a token");
        }
        if let Some(room) = rooms
            .iter()
            .find(|room| room.chars().count() > MAX_ROOM_PATTERN_CHARS)
        {
            bail!(
                "room pattern {:?} is longer than {MAX_ROOM_PATTERN_CHARS} characters",
                truncate(room, 40)
            );
        }
        let ttl = ttl.as_secs();
        if ttl == 0 {
            bail!("the token lifetime must be at least one second");
        }
        let now = unix_now()?;
        let exp = i64::try_from(ttl)
            .ok()
            .and_then(|ttl| now.checked_add(ttl))
            .ok_or_else(|| anyhow!("the token lifetime is too long"))?;

        let mut claims = Map::new();
        claims.insert("sub".into(), user.into());
        claims.insert("rooms".into(), rooms.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), exp.into());
        claims.insert(
            "jti".into(),
            uuid::Uuid::new_v4().simple().to_string().into(),
        );
        if let Some(issuer) = &self.inner.issuer {
            claims.insert("iss".into(), issuer.as_str().into());
        }
        if let Some(audience) = &self.inner.audience {
            claims.insert("aud".into(), audience.as_str().into());
        }
        let token = jsonwebtoken::encode(&Header::new(*alg), &claims, key)
            .context("cannot sign the token")?;
        if token.len() > MAX_TOKEN_BYTES {
            bail!("the token would be larger than 8 KiB; grant fewer or shorter room patterns");
        }
        Ok(token)
    }

    fn entry_for(&self, alg: &str) -> Option<&Entry> {
        [&self.inner.hs256, &self.inner.public]
            .into_iter()
            .flatten()
            .find(|entry| entry.name == alg)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.algorithms())
            .field("can_issue", &self.can_issue())
            .field("issuer", &self.inner.issuer)
            .field("audience", &self.inner.audience)
            .finish()
    }
}

fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::ES256 => "ES256",
        _ => "HS256",
    }
}

fn load_public_key(path: &Path) -> anyhow::Result<(Algorithm, DecodingKey)> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the JWT public key {}", path.display()))?;
    if contains(&pem, b"PRIVATE KEY") {
        bail!(
            "{} holds a private key; --jwt-public-key takes the public key \
             (`openssl pkey -pubout`), --jwt-private-key the private one",
            path.display()
        );
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        // Building an ES256 verifier parses the point as P-256; any other curve fails here.
        if jsonwebtoken::crypto::verify("", b"", &key, Algorithm::ES256).is_err() {
            bail!(
                "{} is not an EC P-256 key; ES256 needs P-256 (prime256v1)",
                path.display()
            );
        }
        return Ok((Algorithm::ES256, key));
    }
    bail!(
        "{} is not an RSA or EC (P-256) public key in PEM format",
        path.display()
    )
}

fn load_private_key(path: &Path, alg: Algorithm) -> anyhow::Result<EncodingKey> {
    let pem = std::fs::read(path)
        .with_context(|| format!("cannot read the JWT private key {}", path.display()))?;
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        _ => EncodingKey::from_ec_pem(&pem),
    };
    key.map_err(|e| {
        anyhow!(
            "{} is not a PEM {} private key matching the public key ({e}); \
             PKCS#8 is expected, convert with `openssl pkcs8 -topk8 -nocrypt -in KEY`",
            path.display(),
            if alg == Algorithm::RS256 {
                "RSA"
            } else {
                "EC P-256"
            },
        )
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

fn unix_now() -> anyhow::Result<i64> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?;
    i64::try_from(now.as_secs()).context("the system clock is out of range")
}

fn malformed(reason: &str) -> AuthError {
    AuthError::Malformed(reason.to_owned())
}

/// At most `max` characters of attacker-controlled text, for error messages.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn map_error(kind: &ErrorKind, alg: &str) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            AuthError::UnsupportedAlgorithm(truncate(alg, 32))
        }
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => AuthError::WrongIssuer,
            "aud" => AuthError::WrongAudience,
            "sub" => AuthError::MissingSubject,
            other => AuthError::Malformed(format!("the `{other}` claim is required")),
        },
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Malformed(format!("the `{claim}` claim has the wrong type"))
        }
        ErrorKind::Base64(_) => malformed("a part is not base64url"),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            malformed("the header or payload is not a JSON object")
        }
        ErrorKind::InvalidToken => malformed("not a JWT"),
        // Key-format errors cannot come from the token (keys are checked at load); treat them
        // like any other verification failure.
        _ => AuthError::BadSignature,
    }
}

fn claims_from(claims: Map<String, Value>) -> Result<Claims, AuthError> {
    let user = match claims.get("sub") {
        None | Some(Value::Null) => return Err(AuthError::MissingSubject),
        Some(Value::String(sub)) if sub.is_empty() => return Err(AuthError::MissingSubject),
        Some(Value::String(sub)) => sub,
        Some(_) => return Err(malformed("`sub` must be a string")),
    };
    if user.chars().count() > MAX_SUBJECT_CHARS {
        return Err(AuthError::Malformed(format!(
            "`sub` is longer than {MAX_SUBJECT_CHARS} characters"
        )));
    }

    let rooms = match claims.get("rooms") {
        None | Some(Value::Null) => RoomPatterns::default(),
        Some(Value::Array(items)) => {
            if items.len() > MAX_ROOM_PATTERNS {
                return Err(AuthError::Malformed(format!(
                    "`rooms` has more than {MAX_ROOM_PATTERNS} patterns"
                )));
            }
            let mut patterns = Vec::with_capacity(items.len());
            for item in items {
                let Value::String(pattern) = item else {
                    return Err(malformed("`rooms` must be an array of strings"));
                };
                if pattern.chars().count() > MAX_ROOM_PATTERN_CHARS {
                    return Err(AuthError::Malformed(format!(
                        "a `rooms` pattern is longer than {MAX_ROOM_PATTERN_CHARS} characters"
                    )));
                }
                patterns.push(pattern.as_str());
            }
            RoomPatterns::new(patterns)
        }
        Some(_) => return Err(malformed("`rooms` must be an array of strings")),
    };

    // `exp` was checked by the validation: present, numeric and not negative.
    let expires_at = match claims.get("exp") {
        Some(Value::Number(exp)) => exp
            .as_i64()
            .or_else(|| exp.as_u64().map(|_| i64::MAX))
            .or_else(|| exp.as_f64().map(|exp| exp.round() as i64))
            .unwrap_or(0),
        _ => return Err(malformed("the `exp` claim is required")),
    };

    Ok(Claims {
        user: user.clone(),
        rooms,
        expires_at,
    })
}
