//! Web Push (RFC 8030) to a browser's push subscription: the message is encrypted for the
//! subscription (RFC 8291, `aes128gcm`) and the request carries a VAPID token (RFC 8292).
//!
//! One send is one POST to the subscription's endpoint, which must be `https`. Every message
//! has its own one-time ECDH key and salt; the VAPID token for a push service is signed once and
//! reused for 11 hours. A subscription whose keys cannot be parsed, or whose
//! endpoint is not an https URL, can never receive anything and is reported as an invalid target.

mod ece;
mod vapid;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use clap::Args;
use p256::SecretKey;
use parking_lot::Mutex;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, LOCATION};
use serde_json::json;

use self::ece::Subscriber;
use self::vapid::VapidKey;
use super::egress;
use super::http::{describe, read_body, transport_error, wrong_target, ProviderHttpSettings};
use super::{ConfigError, Message, Priority, SendError, Sent, Target};

const PROVIDER: &str = "Web Push";
/// Push services keep a message for at most four weeks.
const MAX_TTL_SECS: u64 = 28 * 24 * 3600;
/// Push services are few (one per browser vendor); past this many origins the cache restarts.
const MAX_CACHED_ORIGINS: usize = 64;
/// How much of an error response to quote in the error.
const QUOTE_BYTES: usize = 200;

const KEY_SETTING: &str = "TRIPTRIP_VAPID_PRIVATE_KEY_FILE";
const SUBJECT_SETTING: &str = "TRIPTRIP_VAPID_SUBJECT";

/// Web Push settings; Web Push is off unless a VAPID key file is given, and then the subject is
/// required.
#[derive(Debug, Clone, Args)]
pub struct WebPushSettings {
    /// The VAPID private key: a P-256 key in PEM (PKCS#8 or SEC1). Its public key is the
    /// `applicationServerKey` browsers subscribe with.
    #[arg(long, global = true, env = "TRIPTRIP_VAPID_PRIVATE_KEY_FILE")]
    pub vapid_private_key_file: Option<PathBuf>,

    /// Who push services can contact about our traffic: a `mailto:` or `https:` URL.
    #[arg(long, global = true, env = "TRIPTRIP_VAPID_SUBJECT")]
    pub vapid_subject: Option<String>,

    /// Also post to subscription endpoints on loopback, private and other non-public addresses
    /// (a push service inside your own network, or a test stand-in). Off by default: endpoints
    /// come from clients, and may not make this server reach its own network.
    #[arg(
        long,
        global = true,
        env = "TRIPTRIP_WEBPUSH_ALLOW_PRIVATE",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub webpush_allow_private: bool,
}

/// Sends notifications to Web Push subscriptions.
pub struct WebPushProvider {
    client: reqwest::Client,
    /// Endpoints on non-public addresses are allowed (`TRIPTRIP_WEBPUSH_ALLOW_PRIVATE`).
    allow_private: bool,
    vapid: VapidKey,
    subject: String,
    /// Signed `Authorization` values per push-service origin, and until when to use them.
    headers: Mutex<HashMap<String, (Arc<str>, SystemTime)>>,
}

impl fmt::Debug for WebPushProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebPushProvider")
            .field("application_server_key", &self.vapid.public_key())
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl WebPushProvider {
    /// Reads the VAPID key; `Ok(None)` when Web Push is not configured.
    pub fn from_settings(
        settings: &WebPushSettings,
        http: &ProviderHttpSettings,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(path) = &settings.vapid_private_key_file else {
            return Ok(None);
        };
        let pem = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(KEY_SETTING, format!("cannot read {}: {e}", path.display()))
        })?;
        let vapid = VapidKey::from_pem(&pem).map_err(|reason| {
            ConfigError::new(KEY_SETTING, format!("{}: {reason}", path.display()))
        })?;
        let subject = match settings.vapid_subject.as_deref().map(str::trim) {
            Some(s) if s.starts_with("mailto:") || s.starts_with("https://") => s.to_owned(),
            Some(s) => {
                return Err(ConfigError::new(
                    SUBJECT_SETTING,
                    format!("{s:?} is neither a mailto: nor an https: URL"),
                ))
            }
            None => {
                return Err(ConfigError::new(
                    SUBJECT_SETTING,
                    "required when TRIPTRIP_VAPID_PRIVATE_KEY_FILE is set",
                ))
            }
        };
        let allow_private = settings.webpush_allow_private;
        Ok(Some(Self {
            client: if allow_private {
                http.client()?
            } else {
                http.public_client()?
            },
            allow_private,
            vapid,
            subject,
            headers: Mutex::new(HashMap::new()),
        }))
    }

    /// The VAPID public key (uncompressed P-256 point, base64url): what a browser passes as
    /// `applicationServerKey` to `PushManager.subscribe`.
    pub fn application_server_key(&self) -> &str {
        self.vapid.public_key()
    }

    /// Encrypts `msg` for the subscription in `target` and posts it to its endpoint.
    /// `Sent::provider_id` is the push service's `Location` for the message, if it gave one.
    pub async fn send(&self, target: &Target, msg: &Message) -> Result<Sent, SendError> {
        let Target::WebPush {
            endpoint,
            p256dh,
            auth,
        } = target
        else {
            return Err(wrong_target(PROVIDER, target));
        };
        let url = push_endpoint(endpoint, self.allow_private)?;
        let subscriber = Subscriber::from_base64url(p256dh, auth)
            .map_err(|e| SendError::InvalidTarget(format!("{PROVIDER}: {e}")))?;

        let plaintext = json!({
            "title": msg.title,
            "body": msg.body,
            "type": msg.kind,
            "notification_id": msg.notification_id,
            "data": msg.payload,
        })
        .to_string();
        let body = ece::encrypt(
            plaintext.as_bytes(),
            &subscriber,
            &one_time_key(),
            &rand::random(),
        )
        .map_err(|e| SendError::Permanent(format!("{PROVIDER}: {e}")))?;
        let now = SystemTime::now();
        let authorization = self.authorization(&url.origin().ascii_serialization(), now)?;
        let ttl = msg
            .expires_at
            .duration_since(now)
            .map_or(0, |left| left.as_secs())
            .min(MAX_TTL_SECS);

        let response = self
            .client
            .post(url)
            .header(AUTHORIZATION, &*authorization)
            .header("TTL", ttl.to_string())
            .header("Urgency", urgency(msg.priority))
            .header(CONTENT_ENCODING, "aes128gcm")
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Bytes::from(body))
            .send()
            .await
            .map_err(|e| {
                if egress::is_refusal(&e) {
                    SendError::InvalidTarget(format!("{PROVIDER}: {}", describe(&e)))
                } else {
                    transport_error(PROVIDER, &e)
                }
            })?;
        let status = response.status().as_u16();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if (200..=202).contains(&status) {
            return Ok(Sent {
                provider_id: location,
            });
        }
        let body = read_body(PROVIDER, response).await?;
        Err(failure(status, &body))
    }
}

impl WebPushProvider {
    /// The VAPID header for a push service, signed at most once per 11 hours per origin.
    fn authorization(&self, origin: &str, now: SystemTime) -> Result<Arc<str>, SendError> {
        if let Some((header, _)) = self
            .headers
            .lock()
            .get(origin)
            .filter(|(_, renew_at)| now < *renew_at)
        {
            return Ok(Arc::clone(header));
        }
        let header: Arc<str> = self
            .vapid
            .authorization(origin, &self.subject, now)
            .map_err(|e| SendError::Permanent(format!("{PROVIDER}: cannot sign VAPID: {e}")))?
            .into();
        let mut headers = self.headers.lock();
        if headers.len() >= MAX_CACHED_ORIGINS {
            headers.clear();
        }
        headers.insert(origin.to_owned(), (Arc::clone(&header), now + vapid::REUSE));
        Ok(header)
    }
}

/// The subscription's endpoint, if it is an https URL (the Push API hands out nothing else)
/// and, unless `allow_private`, its host is not a non-public IP address. A name is checked
/// when it is resolved, by the client's [`egress::PublicOnly`] resolver.
fn push_endpoint(endpoint: &str, allow_private: bool) -> Result<reqwest::Url, SendError> {
    let url = reqwest::Url::parse(endpoint)
        .ok()
        .filter(|url| url.scheme() == "https" && url.host().is_some())
        .ok_or_else(|| {
            SendError::InvalidTarget(format!(
                "{PROVIDER}: the subscription endpoint is not an https URL"
            ))
        })?;
    // An IP host is never resolved, so the resolver cannot judge it: it is judged here.
    let ip = url.host_str().and_then(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
    });
    if let Some(ip) = ip.filter(|ip| !allow_private && !egress::is_public(*ip)) {
        return Err(SendError::InvalidTarget(format!(
            "{PROVIDER}: the subscription endpoint is the non-public address {ip}"
        )));
    }
    Ok(url)
}

/// A fresh P-256 key for one message's ECDH.
fn one_time_key() -> SecretKey {
    loop {
        // A random 32-byte string is a valid scalar except with probability about 2^-32.
        if let Ok(key) = SecretKey::from_slice(&rand::random::<[u8; 32]>()) {
            return key;
        }
    }
}

/// RFC 8030 §5.3: `high` may wake a device on low battery; `low` waits for power or Wi-Fi.
fn urgency(priority: Priority) -> &'static str {
    match priority {
        Priority::Low => "low",
        Priority::Medium => "normal",
        Priority::High | Priority::Critical => "high",
    }
}

/// What a push service's refusal means.
fn failure(status: u16, body: &[u8]) -> SendError {
    let quote = String::from_utf8_lossy(&body[..body.len().min(QUOTE_BYTES)]);
    let reason = format!("{PROVIDER}: HTTP {status} {}", quote.trim());
    match status {
        404 | 410 => SendError::InvalidTarget(reason),
        429 | 500..=599 => SendError::Transient(reason),
        _ => SendError::Permanent(reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_rfc8030_meanings() {
        assert!(matches!(failure(410, b""), SendError::InvalidTarget(_)));
        assert!(matches!(failure(404, b""), SendError::InvalidTarget(_)));
        assert!(matches!(failure(429, b""), SendError::Transient(_)));
        assert!(matches!(failure(502, b""), SendError::Transient(_)));
        for status in [400, 401, 403, 413] {
            assert!(matches!(failure(status, b"no"), SendError::Permanent(_)));
        }
    }

    #[test]
    fn only_https_endpoints_are_push_endpoints() {
        assert!(push_endpoint("https://fcm.googleapis.com/fcm/send/abc", false).is_ok());
        for bad in [
            "http://push.example/x",
            "not a url",
            "",
            "file:///etc/passwd",
        ] {
            assert!(matches!(
                push_endpoint(bad, true),
                Err(SendError::InvalidTarget(_))
            ));
        }
    }

    #[test]
    fn endpoints_on_non_public_addresses_are_refused_unless_allowed() {
        for private in [
            "https://127.0.0.1:8443/push",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/x",
            "https://[::1]/x",
            "https://[::ffff:192.168.0.1]/x",
        ] {
            match push_endpoint(private, false) {
                Err(SendError::InvalidTarget(reason)) => {
                    assert!(reason.contains("non-public"), "{reason}")
                }
                other => panic!("{private}: {other:?}"),
            }
            assert!(
                push_endpoint(private, true).is_ok(),
                "{private} when allowed"
            );
        }
        assert!(push_endpoint("https://8.8.8.8/x", false).is_ok());
    }

    #[test]
    fn one_time_keys_differ() {
        assert_ne!(one_time_key().to_bytes(), one_time_key().to_bytes());
    }
}
