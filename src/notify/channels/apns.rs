//! Apple Push Notification service through its provider API: HTTP/2 only (ALPN `h2`), one
//! `POST /3/device/{token}` per send, authenticated by an ES256 provider token.
//!
//! The provider token is signed with the team's `.p8` key, shared by all sends and replaced
//! after 50 minutes (Apple refuses tokens older than an hour and throttles new ones made more
//! often than every 20 minutes), or at once when APNs answers `ExpiredProviderToken`.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::RwLock;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::http::{read_body, transport_error, wrong_target, ProviderHttpSettings};
use super::{ConfigError, Message, Priority, SendError, Sent, Target};

const PROVIDER: &str = "APNs";
/// How long one provider token is used.
const TOKEN_REUSE: Duration = Duration::from_secs(50 * 60);
/// Device tokens are 32 bytes today; Apple says they may grow, so allow up to 100.
const MAX_DEVICE_TOKEN_HEX: usize = 200;

const KEY_FILE_SETTING: &str = "TRIPTRIP_APNS_KEY_FILE";
const ENDPOINT_SETTING: &str = "TRIPTRIP_APNS_ENDPOINT";

/// APNs settings; APNs is off unless a key file is given, and then the key id, team id and
/// topic are required.
#[derive(Debug, Clone, Args)]
pub struct ApnsSettings {
    /// The APNs authentication key (`AuthKey_XXXXXXXXXX.p8`, a PKCS#8 PEM EC P-256 key).
    #[arg(long, global = true, env = "TRIPTRIP_APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,

    /// The key's 10-character key id (the `kid` of the provider token).
    #[arg(long, global = true, env = "TRIPTRIP_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,

    /// The Apple developer team id (the `iss` of the provider token).
    #[arg(long, global = true, env = "TRIPTRIP_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,

    /// The app's bundle id, sent as `apns-topic`.
    #[arg(long, global = true, env = "TRIPTRIP_APNS_TOPIC")]
    pub apns_topic: Option<String>,

    /// Base URL of the APNs provider API (`https://api.sandbox.push.apple.com` for
    /// development builds).
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_APNS_ENDPOINT",
        default_value = "https://api.push.apple.com"
    )]
    pub apns_endpoint: String,
}

/// Sends notifications through APNs.
pub struct ApnsProvider {
    client: reqwest::Client,
    endpoint: String,
    topic: HeaderValue,
    key: EncodingKey,
    key_id: String,
    team_id: String,
    token: RwLock<Option<ProviderToken>>,
}

impl fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("endpoint", &self.endpoint)
            .field("topic", &self.topic)
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct ProviderToken {
    value: Arc<str>,
    made: Instant,
}

impl ApnsProvider {
    /// Reads the `.p8` key; `Ok(None)` when APNs is not configured.
    pub fn from_settings(
        settings: &ApnsSettings,
        http: &ProviderHttpSettings,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(path) = &settings.apns_key_file else {
            return Ok(None);
        };
        let pem = std::fs::read(path).map_err(|e| {
            ConfigError::new(
                KEY_FILE_SETTING,
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let key = EncodingKey::from_ec_pem(&pem).map_err(|e| {
            ConfigError::new(
                KEY_FILE_SETTING,
                format!("{} is not a PKCS#8 EC key: {e}", path.display()),
            )
        })?;
        let key_id = required(&settings.apns_key_id, "TRIPTRIP_APNS_KEY_ID")?;
        let team_id = required(&settings.apns_team_id, "TRIPTRIP_APNS_TEAM_ID")?;
        let topic = required(&settings.apns_topic, "TRIPTRIP_APNS_TOPIC")?;
        let topic = HeaderValue::from_str(&topic)
            .map_err(|_| ConfigError::new("TRIPTRIP_APNS_TOPIC", "not a valid header value"))?;
        let endpoint = reqwest::Url::parse(&settings.apns_endpoint)
            .ok()
            .filter(|url| matches!(url.scheme(), "https" | "http") && url.host().is_some())
            .ok_or_else(|| {
                ConfigError::new(
                    ENDPOINT_SETTING,
                    format!("{:?} is not an http(s) URL", settings.apns_endpoint),
                )
            })?;
        provider_token(&key, &key_id, &team_id, SystemTime::now()).map_err(|e| {
            ConfigError::new(
                KEY_FILE_SETTING,
                format!("{} cannot sign: {e}", path.display()),
            )
        })?;
        Ok(Some(Self {
            client: http.http2_client()?,
            endpoint: endpoint.as_str().trim_end_matches('/').to_owned(),
            topic,
            key,
            key_id,
            team_id,
            token: RwLock::new(None),
        }))
    }

    /// Sends `msg` as an alert to the device token in `target`. `Sent::provider_id` is the
    /// `apns-id` APNs answers with.
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let Target::Apns { token: device } = target else {
            return Err(wrong_target(PROVIDER, target));
        };
        check_device_token(device)?;
        let token = self.provider_token()?;
        let urgent = matches!(msg.priority, Priority::High | Priority::Critical);
        let expiration = msg
            .expires_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let response = self
            .client
            .post(format!("{}/3/device/{device}", self.endpoint))
            .header(AUTHORIZATION, format!("bearer {token}"))
            .header("apns-topic", self.topic.clone())
            .header("apns-push-type", "alert")
            .header("apns-priority", if urgent { "10" } else { "5" })
            .header("apns-expiration", expiration.to_string())
            .header(CONTENT_TYPE, "application/json")
            .body(Bytes::from(payload(msg).to_string()))
            .send()
            .await
            .map_err(|e| transport_error(PROVIDER, &e))?;
        let status = response.status().as_u16();
        let apns_id = response
            .headers()
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = read_body(PROVIDER, response).await?;
        match classify(status, &body, apns_id) {
            Reply::Done(result) => result,
            Reply::TokenExpired(reason) => {
                self.forget(&token);
                Err(SendError::Transient(reason))
            }
        }
    }

    /// The current provider token, or a new one when it is 50 minutes old.
    fn provider_token(&self) -> Result<Arc<str>, SendError> {
        let fresh = |token: &Option<ProviderToken>| {
            token
                .as_ref()
                .filter(|t| t.made.elapsed() < TOKEN_REUSE)
                .map(|t| t.value.clone())
        };
        if let Some(value) = fresh(&self.token.read()) {
            return Ok(value);
        }
        let mut current = self.token.write();
        if let Some(value) = fresh(&current) {
            return Ok(value);
        }
        let value: Arc<str> =
            provider_token(&self.key, &self.key_id, &self.team_id, SystemTime::now())
                .map_err(|e| SendError::Permanent(format!("{PROVIDER}: cannot sign: {e}")))?
                .into();
        *current = Some(ProviderToken {
            value: value.clone(),
            made: Instant::now(),
        });
        Ok(value)
    }

    fn forget(&self, used: &Arc<str>) {
        let mut current = self.token.write();
        if current
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.value, used))
        {
            *current = None;
        }
    }
}

fn required(value: &Option<String>, setting: &'static str) -> Result<String, ConfigError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
        _ => Err(ConfigError::new(
            setting,
            "required when TRIPTRIP_APNS_KEY_FILE is set",
        )),
    }
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    iss: &'a str,
    iat: u64,
}

fn provider_token(
    key: &EncodingKey,
    key_id: &str,
    team_id: &str,
    now: SystemTime,
) -> Result<String, jsonwebtoken::errors::Error> {
    let mut header = Header::new(Algorithm::ES256);
    header.typ = None;
    header.kid = Some(key_id.to_owned());
    let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    jsonwebtoken::encode(&header, &TokenClaims { iss: team_id, iat }, key)
}

fn check_device_token(token: &str) -> Result<(), SendError> {
    let hex = !token.is_empty()
        && token.len() <= MAX_DEVICE_TOKEN_HEX
        && token.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        Ok(())
    } else {
        Err(SendError::InvalidTarget(format!(
            "{PROVIDER}: a device token is 1 to {MAX_DEVICE_TOKEN_HEX} hex digits"
        )))
    }
}

/// The notification's JSON: the alert under `aps`, the payload's fields and the ids under
/// `data` (the ids win over payload fields of the same name).
fn payload(msg: &Message) -> Value {
    let mut data = match &msg.payload {
        Value::Object(fields) => fields.clone(),
        Value::Null => Map::new(),
        other => Map::from_iter([("payload".to_owned(), other.clone())]),
    };
    data.insert("notification_id".into(), msg.notification_id.into());
    data.insert("delivery_id".into(), msg.delivery_id.into());
    data.insert("type".into(), msg.kind.clone().into());
    json!({
        "aps": {
            "alert": { "title": msg.title, "body": msg.body },
            "sound": "default",
        },
        "data": data,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Done(Result<Sent, SendError>),
    /// 403 `ExpiredProviderToken`: make a new provider token, retry later.
    TokenExpired(String),
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
}

fn classify(status: u16, body: &[u8], apns_id: Option<String>) -> Reply {
    if status == 200 {
        return Reply::Done(Ok(Sent {
            provider_id: apns_id,
        }));
    }
    let reason = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .reason;
    let text = format!("{PROVIDER}: HTTP {status} {reason}");
    let error = match (status, reason.as_str()) {
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
            SendError::InvalidTarget(text)
        }
        (403, "ExpiredProviderToken") => return Reply::TokenExpired(text),
        (429, _) | (500..=599, _) => SendError::Transient(text),
        _ => SendError::Permanent(text),
    };
    Reply::Done(Err(error))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(priority: Priority) -> Message {
        Message {
            delivery_id: 11,
            notification_id: 5,
            user_id: "u".into(),
            kind: "trip_reminder".into(),
            priority,
            title: "Tomorrow".into(),
            body: "Your flight leaves at 9".into(),
            payload: json!({"trip": "t1", "delivery_id": "spoofed"}),
            expires_at: SystemTime::now() + Duration::from_secs(60),
        }
    }

    #[test]
    fn the_alert_is_under_aps_and_the_payload_under_data() {
        let body = payload(&message(Priority::Low));
        assert_eq!(
            body,
            json!({
                "aps": {"alert": {"title": "Tomorrow", "body": "Your flight leaves at 9"},
                        "sound": "default"},
                "data": {"trip": "t1", "delivery_id": 11, "notification_id": 5,
                         "type": "trip_reminder"},
            })
        );
    }

    #[test]
    fn responses_map_to_apples_documented_meanings() {
        let sent = classify(200, b"", Some("abc".into()));
        assert_eq!(
            sent,
            Reply::Done(Ok(Sent {
                provider_id: Some("abc".into())
            }))
        );
        let cases = [
            (410, "Unregistered", "invalid target"),
            (400, "BadDeviceToken", "invalid target"),
            (400, "DeviceTokenNotForTopic", "invalid target"),
            (429, "TooManyRequests", "transient"),
            (503, "ServiceUnavailable", "transient"),
            (403, "InvalidProviderToken", "permanent"),
            (413, "PayloadTooLarge", "permanent"),
        ];
        for (status, reason, expected) in cases {
            let body = json!({ "reason": reason }).to_string();
            match classify(status, body.as_bytes(), None) {
                Reply::Done(Err(e)) => {
                    assert!(
                        e.to_string().starts_with(expected),
                        "{status} {reason}: {e}"
                    )
                }
                other => panic!("{status} {reason}: {other:?}"),
            }
        }
        let expired = json!({"reason": "ExpiredProviderToken"}).to_string();
        assert!(matches!(
            classify(403, expired.as_bytes(), None),
            Reply::TokenExpired(_)
        ));
    }

    #[test]
    fn device_tokens_must_be_hex() {
        assert!(check_device_token(&"ab".repeat(32)).is_ok());
        for bad in ["", "zz", "../../x", &"a".repeat(201)] {
            assert!(matches!(
                check_device_token(bad),
                Err(SendError::InvalidTarget(_))
            ));
        }
    }
}
