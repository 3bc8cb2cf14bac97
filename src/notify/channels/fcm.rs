//! Firebase Cloud Messaging through the HTTP v1 API (`projects/{id}/messages:send`).
//!
//! One send is one HTTPS request, or two when FCM refuses the access token and a fresh one is
//! fetched. The OAuth 2.0 access token (JWT-bearer grant of a service account) is shared by all
//! sends, fetched by one send at a time and reused until a minute before it expires.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::RwLock;
use reqwest::header::CONTENT_TYPE;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http::{read_body, transport_error, wrong_target, ProviderHttpSettings};
use super::{ConfigError, Message, Priority, SendError, Sent, Target};

const PROVIDER: &str = "FCM";
const OAUTH: &str = "FCM OAuth";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, form-encoded.
const GRANT_TYPE: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// Lifetime of the signed assertion; Google accepts at most an hour.
const ASSERTION_LIFETIME_SECS: u64 = 3600;
/// Renew the access token this long before FCM would refuse it.
const RENEW_MARGIN_SECS: u64 = 60;
/// FCM keeps a message for at most four weeks.
const MAX_TTL_SECS: u64 = 28 * 24 * 3600;
/// Registration tokens are about 160 characters; anything far longer is not one.
const MAX_TOKEN_LEN: usize = 4096;
/// Data keys FCM reserves; a payload field with such a name is not passed on.
const RESERVED_KEYS: [&str; 4] = ["from", "message_type", "notification", "collapse_key"];
const RESERVED_PREFIXES: [&str; 2] = ["google", "gcm"];

const CREDENTIALS_SETTING: &str = "TRIPTRIP_FCM_CREDENTIALS_FILE";
const PROJECT_SETTING: &str = "TRIPTRIP_FCM_PROJECT_ID";
const ENDPOINT_SETTING: &str = "TRIPTRIP_FCM_ENDPOINT";

/// FCM settings; FCM is off unless a credentials file is given.
#[derive(Debug, Clone, Args)]
pub struct FcmSettings {
    /// The Firebase service account's JSON key (with `client_email`, `private_key`,
    /// `token_uri`, `project_id`).
    #[arg(long, global = true, env = "TRIPTRIP_FCM_CREDENTIALS_FILE")]
    pub fcm_credentials_file: Option<PathBuf>,

    /// The Firebase project to send through (default: the key file's `project_id`).
    #[arg(long, global = true, env = "TRIPTRIP_FCM_PROJECT_ID")]
    pub fcm_project_id: Option<String>,

    /// Base URL of the FCM HTTP v1 API.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_FCM_ENDPOINT",
        default_value = "https://fcm.googleapis.com"
    )]
    pub fcm_endpoint: String,
}

/// Sends notifications through FCM HTTP v1.
pub struct FcmProvider {
    client: reqwest::Client,
    send_url: String,
    project_id: String,
    account: ServiceAccount,
    token: TokenCache,
}

impl fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmProvider")
            .field("project_id", &self.project_id)
            .field("client_email", &self.account.email)
            .field("send_url", &self.send_url)
            .finish_non_exhaustive()
    }
}

/// The fields of a Google service-account key file that the JWT-bearer grant needs.
#[derive(Deserialize)]
struct ServiceAccountFile {
    client_email: String,
    private_key: String,
    token_uri: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
}

struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: EncodingKey,
    token_uri: String,
}

impl FcmProvider {
    /// Reads the service-account key; `Ok(None)` when FCM is not configured.
    pub fn from_settings(
        settings: &FcmSettings,
        http: &ProviderHttpSettings,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(path) = &settings.fcm_credentials_file else {
            return Ok(None);
        };
        let text = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                CREDENTIALS_SETTING,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let file: ServiceAccountFile = serde_json::from_slice(&text).map_err(|e| {
            ConfigError::new(
                CREDENTIALS_SETTING,
                format!("{} is not a service-account key: {e}", path.display()),
            )
        })?;
        let key = EncodingKey::from_rsa_pem(file.private_key.as_bytes()).map_err(|e| {
            ConfigError::new(
                CREDENTIALS_SETTING,
                format!("private_key is not an RSA key in PEM: {e}"),
            )
        })?;
        let token_uri = http_url(&file.token_uri).map_err(|reason| {
            ConfigError::new(CREDENTIALS_SETTING, format!("token_uri {reason}"))
        })?;
        let account = ServiceAccount {
            email: file.client_email,
            key_id: file.private_key_id,
            key,
            token_uri,
        };
        assertion(&account, SystemTime::now()).map_err(|e| {
            ConfigError::new(CREDENTIALS_SETTING, format!("private_key cannot sign: {e}"))
        })?;

        let project_id = settings
            .fcm_project_id
            .clone()
            .or(file.project_id)
            .ok_or_else(|| {
                ConfigError::new(
                    PROJECT_SETTING,
                    "not set, and the credentials file has no project_id",
                )
            })?;
        let valid_id = !project_id.is_empty()
            && project_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ':'));
        if !valid_id {
            return Err(ConfigError::new(
                PROJECT_SETTING,
                format!("{project_id:?} is not a Firebase project id"),
            ));
        }
        let endpoint = http_url(&settings.fcm_endpoint)
            .map_err(|reason| ConfigError::new(ENDPOINT_SETTING, reason))?;
        let send_url = format!(
            "{}/v1/projects/{project_id}/messages:send",
            endpoint.trim_end_matches('/')
        );

        Ok(Some(Self {
            client: http.client()?,
            send_url,
            project_id,
            account,
            token: TokenCache::default(),
        }))
    }

    /// Sends `msg` to the registration token in `target`. `Sent::provider_id` is the FCM
    /// message name (`projects/{id}/messages/{n}`).
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let Target::Fcm { token } = target else {
            return Err(wrong_target(PROVIDER, target));
        };
        check_token(token)?;
        let body = Bytes::from(message_body(token, msg, SystemTime::now()).to_string());

        let access = self.access_token().await?;
        match self.post(&access, body.clone()).await? {
            Reply::Done(result) => result,
            Reply::Unauthorized(_) => {
                self.token.forget(&access);
                let access = self.access_token().await?;
                match self.post(&access, body).await? {
                    Reply::Done(result) => result,
                    Reply::Unauthorized(reason) => Err(SendError::Permanent(reason)),
                }
            }
        }
    }

    async fn post(&self, access: &str, body: Bytes) -> Result<Reply, SendError> {
        let response = self
            .client
            .post(&self.send_url)
            .bearer_auth(access)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        let status = response.status().as_u16();
        let body = read_body(PROVIDER, response).await?;
        Ok(classify(status, &body))
    }

    /// The cached access token, or a new one; one task fetches while the others wait for it.
    async fn access_token(&self) -> Result<Arc<str>, SendError> {
        if let Some(token) = self.token.fresh() {
            return Ok(token);
        }
        let _fetching = self.token.fetch.lock().await;
        if let Some(token) = self.token.fresh() {
            return Ok(token);
        }
        let token = self.fetch_token().await?;
        let value = token.value.clone();
        *self.token.current.write() = Some(token);
        Ok(value)
    }

    async fn fetch_token(&self) -> Result<AccessToken, SendError> {
        let assertion = assertion(&self.account, SystemTime::now()).map_err(|e| {
            SendError::Permanent(format!("{OAUTH}: cannot sign the assertion: {e}"))
        })?;
        let response = self
            .client
            .post(&self.account.token_uri)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("grant_type={GRANT_TYPE}&assertion={assertion}"))
            .send()
            .await
            .map_err(|e| transport_error(OAUTH, &e))?;
        let status = response.status().as_u16();
        let body = read_body(OAUTH, response).await?;
        token_reply(status, &body, Instant::now())
    }
}

#[derive(Default)]
struct TokenCache {
    current: RwLock<Option<AccessToken>>,
    /// Held while a token is fetched, so concurrent sends make one token request.
    fetch: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct AccessToken {
    value: Arc<str>,
    renew_at: Instant,
}

impl TokenCache {
    fn fresh(&self) -> Option<Arc<str>> {
        let current = self.current.read();
        current
            .as_ref()
            .filter(|token| Instant::now() < token.renew_at)
            .map(|token| token.value.clone())
    }

    /// Drops `used` if it is still the cached token (another send may have replaced it).
    fn forget(&self, used: &Arc<str>) {
        let mut current = self.current.write();
        if current
            .as_ref()
            .is_some_and(|token| Arc::ptr_eq(&token.value, used))
        {
            *current = None;
        }
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

/// The RS256 JWT the service account presents to `token_uri`.
fn assertion(
    account: &ServiceAccount,
    now: SystemTime,
) -> Result<String, jsonwebtoken::errors::Error> {
    let iat = unix_secs(now);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = account.key_id.clone();
    let claims = AssertionClaims {
        iss: &account.email,
        scope: SCOPE,
        aud: &account.token_uri,
        iat,
        exp: iat + ASSERTION_LIFETIME_SECS,
    };
    jsonwebtoken::encode(&header, &claims, &account.key)
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

#[derive(Deserialize, Default)]
struct OAuthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

/// The token endpoint's answer: a token to cache, or why there is none.
fn token_reply(status: u16, body: &[u8], now: Instant) -> Result<AccessToken, SendError> {
    if status == 200 {
        let reply: TokenResponse = serde_json::from_slice(body).map_err(|e| {
            SendError::Transient(format!("{OAUTH}: unreadable token response: {e}"))
        })?;
        let lifetime = if reply.expires_in > 2 * RENEW_MARGIN_SECS {
            reply.expires_in - RENEW_MARGIN_SECS
        } else {
            reply.expires_in / 2
        };
        return Ok(AccessToken {
            value: reply.access_token.into(),
            renew_at: now + Duration::from_secs(lifetime),
        });
    }
    let error: OAuthError = serde_json::from_slice(body).unwrap_or_default();
    let reason = format!(
        "{OAUTH}: HTTP {status} {} {}",
        error.error, error.error_description
    );
    let reason = reason.trim_end().to_owned();
    if status == 429 || status >= 500 {
        Err(SendError::Transient(reason))
    } else {
        Err(SendError::Permanent(reason))
    }
}

fn check_token(token: &str) -> Result<(), SendError> {
    let plausible = !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_graphic());
    if plausible {
        Ok(())
    } else {
        Err(SendError::InvalidTarget(
            "FCM registration token is empty, too long or holds spaces or control characters"
                .into(),
        ))
    }
}

/// The `messages:send` request body.
fn message_body(token: &str, msg: &Message, now: SystemTime) -> Value {
    let ttl = msg
        .expires_at
        .duration_since(now)
        .map_or(0, |left| left.as_secs())
        .min(MAX_TTL_SECS);
    let urgent = matches!(msg.priority, Priority::High | Priority::Critical);
    json!({
        "message": {
            "token": token,
            "notification": { "title": msg.title, "body": msg.body },
            "data": data_map(msg),
            "android": {
                "priority": if urgent { "HIGH" } else { "NORMAL" },
                "ttl": format!("{ttl}s"),
            },
            "apns": {
                "headers": {
                    "apns-priority": if urgent { "10" } else { "5" },
                    "apns-expiration": unix_secs(msg.expires_at).to_string(),
                },
            },
        }
    })
}

/// FCM data values are strings: the payload's top-level strings as they are, other values as
/// JSON text; `notification_id`, `delivery_id` and `type` win over payload fields of that name.
fn data_map(msg: &Message) -> Map<String, Value> {
    let mut data = Map::new();
    match &msg.payload {
        Value::Object(fields) => {
            for (key, value) in fields {
                if reserved(key) {
                    continue;
                }
                let text = match value {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                data.insert(key.clone(), Value::String(text));
            }
        }
        Value::Null => {}
        other => {
            data.insert("payload".into(), Value::String(other.to_string()));
        }
    }
    data.insert(
        "notification_id".into(),
        msg.notification_id.to_string().into(),
    );
    data.insert("delivery_id".into(), msg.delivery_id.to_string().into());
    data.insert("type".into(), msg.kind.clone().into());
    data
}

fn reserved(key: &str) -> bool {
    RESERVED_KEYS.contains(&key) || RESERVED_PREFIXES.iter().any(|p| key.starts_with(p))
}

/// What a `messages:send` answer means.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Done(Result<Sent, SendError>),
    /// 401/403: the access token was refused; worth one retry with a fresh token.
    Unauthorized(String),
}

#[derive(Deserialize)]
struct SendResponse {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorResponse {
    #[serde(default)]
    error: GoogleError,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Value>,
}

impl GoogleError {
    /// The FCM-specific code (`UNREGISTERED`, `INVALID_ARGUMENT`, …) from `details`.
    fn fcm_code(&self) -> Option<&str> {
        self.details
            .iter()
            .find_map(|detail| detail.get("errorCode")?.as_str())
    }

    /// Whether the error names the registration token as what is wrong.
    fn about_token(&self) -> bool {
        let field_is_token = self.details.iter().any(|detail| {
            detail
                .get("fieldViolations")
                .and_then(Value::as_array)
                .is_some_and(|violations| {
                    violations
                        .iter()
                        .any(|v| v.get("field").and_then(Value::as_str) == Some("message.token"))
                })
        });
        field_is_token
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }
}

fn classify(status: u16, body: &[u8]) -> Reply {
    if (200..300).contains(&status) {
        let name = serde_json::from_slice::<SendResponse>(body)
            .ok()
            .and_then(|reply| reply.name);
        return Reply::Done(Ok(Sent { provider_id: name }));
    }
    let error = serde_json::from_slice::<ErrorResponse>(body)
        .unwrap_or_default()
        .error;
    let code = error.fcm_code().unwrap_or(error.status.as_str());
    let reason = format!("{PROVIDER}: HTTP {status} {code}: {}", error.message);
    let invalid_argument = code == "INVALID_ARGUMENT" || error.status == "INVALID_ARGUMENT";
    let dead_token = status == 404
        || code == "UNREGISTERED"
        || code == "SENDER_ID_MISMATCH"
        || (status == 400 && invalid_argument && error.about_token());
    let result = if dead_token {
        SendError::InvalidTarget(reason)
    } else if status == 429 || status >= 500 {
        SendError::Transient(reason)
    } else if status == 401 || status == 403 {
        return Reply::Unauthorized(reason);
    } else {
        SendError::Permanent(reason)
    };
    Reply::Done(Err(result))
}

/// An `http(s)://` URL, or why it is not one.
fn http_url(text: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err(format!("{text:?} is not an http(s) URL"));
    }
    Ok(text.to_owned())
}

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
